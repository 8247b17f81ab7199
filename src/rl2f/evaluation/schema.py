"""The contract of ``reports/metrics.json``: a JSON Schema file plus the checks JSON Schema
cannot express (per-turn lists as long as the cell's turn count, accuracy that never falls).

The evaluate stage validates before it writes and the report stage validates what it reads, so
a malformed file (hand-edited, or merged from Kubeflow's per-model tasks) fails with the JSON
path of the first bad value instead of as a broken figure.
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from rl2f.errors import DataError

SCHEMA_FILE = "metrics.schema.json"


@cache
def metrics_schema() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text())


def _pointer(path: Any) -> str:
    return "/" + "/".join(str(part) for part in path) if path else "(top level)"


def validate_metrics(tree: Any, source: str = "metrics") -> None:
    """Raise :class:`DataError` naming ``source`` and the JSON path of the first problem."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(metrics_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(tree))
    if error is not None:
        raise DataError(f"{source}: {_pointer(error.absolute_path)}: {error.message}")
    for model, splits in tree.items():
        for split, modes in splits.items():
            for mode, cell in modes.items():
                where = f"{source}: /{model}/{split}/{mode}"
                turns = cell["max_turns"]
                for key in ("acc_by_turn", "ci95_by_turn"):
                    if len(cell[key]) != turns:
                        raise DataError(
                            f"{where}/{key}: {len(cell[key])} entries for max_turns={turns}"
                        )
                accuracy = cell["acc_by_turn"]
                if any(
                    later < earlier for earlier, later in zip(accuracy, accuracy[1:], strict=False)
                ):
                    raise DataError(f"{where}/acc_by_turn: cumulative accuracy decreases")


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: metrics file not found (run `rl2f evaluate` first)")
    try:
        tree = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    validate_metrics(tree, str(path))
    return tree
