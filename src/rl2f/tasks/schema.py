"""The Task record: one single-turn verifiable problem, with the public prompt kept apart from
the privileged ground truth (answer, solution, verifier config) that only teachers may see."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

DOMAINS = ("math", "puzzle", "maze", "code")
SPLITS = ("train", "eval_id", "eval_ood")
# Splits that only measure: no training stage may learn from them (the per-domain OOD report
# splits, ood_<domain>, are views of eval_ood).
EVAL_SPLITS = ("eval_id", "eval_ood")


def is_eval_split(split: str) -> bool:
    return split in EVAL_SPLITS or split.startswith("ood_")


# Column order of the Parquet files; JSON-valued fields are stored as strings so every
# engine (pandas, GX, DuckDB, Spark) reads them without a nested schema.
COLUMNS = (
    "id",
    "domain",
    "source",
    "split",
    "prompt",
    "answer",
    "solution",
    "verifier",
    "verifier_config",
    "metadata",
)


def normalize_prompt(text: str) -> str:
    """Canonical form used for de-duplication and split disjointness: case, unicode form and
    whitespace do not make two prompts different."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def content_id(domain: str, prompt: str, answer: str) -> str:
    """Stable id: the same problem gets the same id on every machine and every run."""
    digest = hashlib.sha256(f"{domain}\x1f{normalize_prompt(prompt)}\x1f{answer}".encode())
    return digest.hexdigest()[:16]


# Task metadata key naming the out-of-distribution evaluation split a task is reported under
# (set by `prepare` from a source's ``eval_split``); without it the split is ood_<domain>.
EVAL_SPLIT_KEY = "eval_split"


def ood_split_of(task: Task) -> str:
    return f"ood_{task.metadata.get(EVAL_SPLIT_KEY) or task.domain}"


@dataclass(frozen=True)
class Task:
    domain: str
    source: str
    prompt: str
    answer: str
    verifier: str
    verifier_config: dict[str, Any] = field(default_factory=dict)
    solution: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    split: str = "train"
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", content_id(self.domain, self.prompt, self.answer))

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["verifier_config"] = json.dumps(self.verifier_config, sort_keys=True, default=str)
        row["metadata"] = json.dumps(self.metadata, sort_keys=True, default=str)
        return {key: row[key] for key in COLUMNS}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Task:
        def _json(value: Any) -> dict[str, Any]:
            if isinstance(value, dict):
                return value
            return json.loads(value) if value else {}

        solution = row.get("solution")
        return cls(
            id=str(row["id"]),
            domain=str(row["domain"]),
            source=str(row["source"]),
            split=str(row["split"]),
            prompt=str(row["prompt"]),
            answer=str(row["answer"]),
            solution=None if solution is None or solution != solution else str(solution),
            verifier=str(row["verifier"]),
            verifier_config=_json(row.get("verifier_config")),
            metadata=_json(row.get("metadata")),
        )
