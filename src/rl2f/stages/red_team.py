"""``rl2f red_team``: the privileged teachers against scripted hostile students.

Plays :class:`~rl2f.evaluation.red_team.HostileStudent` (ask for the answer, inject, paste the
teacher's words back) against every privileged feedback mode the evaluation uses, on every
evaluation split, and writes ``eval.red_team_path``: per split and mode, how often the teacher
tried to reveal the answer and how often it reached the student. The report shows it beside the
evaluation's own leak rates. Only the base model's tokenizer is read (the attacker writes text,
and the rollout needs token ids); no weights are loaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rl2f.config import Config
from rl2f.cpu_threads import fix_cpu_threads
from rl2f.engines.transformers_engine import load_tokenizer
from rl2f.evaluation.red_team import red_team
from rl2f.evaluation.runner import load_eval_splits
from rl2f.tasks.io import atomic_write_text

log = logging.getLogger(__name__)


def run(cfg: Config) -> dict[str, Any]:
    fix_cpu_threads(cfg.model.cpu_threads)  # an LLM teacher may run on the CPU
    splits = load_eval_splits(cfg)
    results = red_team(cfg, splits, load_tokenizer(cfg.model.base_path))
    if not results:
        log.warning("eval.feedback_modes has no privileged mode (teacher, llm): nothing attacked")
    path = Path(cfg.eval.red_team_path)
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    for split, modes in results.items():
        for mode, rates in modes.items():
            log.info(
                "%s/%s under attack: %d critiques, attempted %s, delivered %s",
                split,
                mode,
                rates["critiques"],
                rates["attempted"],
                rates["delivered"],
            )
    log.info("wrote %s", path)
    return results
