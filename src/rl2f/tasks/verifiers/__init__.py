"""Built-in verifiers, registered by name (the Task's ``verifier`` field):

- ``math``: final answer extracted from ``\\boxed{}`` / ``Answer:``, compared with math-verify;
- ``reasoning_gym``: the generator's own scorer, run on the extracted answer only (exact);
- ``maze``: simulates a move sequence on the grid (first invalid move, shortest or not);
- ``code``: runs the program with the unit tests in :mod:`rl2f.tasks.sandbox`.
"""

from rl2f.tasks.verifiers import code, math, maze, reasoning_gym  # noqa: F401  (registration)
from rl2f.tasks.verifiers.base import Verdict, Verifier, get_verifier, verify

__all__ = ["Verdict", "Verifier", "get_verifier", "verify"]
