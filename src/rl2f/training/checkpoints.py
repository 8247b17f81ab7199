"""Resuming training after a crash or ``kill -9``, and publishing a finished model atomically.

A training stage checkpoints into a work folder (``<out_dir>.checkpoints``) that records the
settings it was started with; a rerun resumes only under the same settings, since continuing a
checkpoint under other ones would silently mix two runs. The transformers Trainer writes a
checkpoint folder file by file and ``trainer_state.json`` last, so a run killed while saving
leaves a folder that looks like a checkpoint but is not one. Resuming from it would fail (or
worse, load half a model); only folders with the state file count, and the others are removed.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rl2f.tasks.io import RESUME_KEY, claim_work_dir, replace_dir

__all__ = [
    "RESUME_KEY",
    "TRAINER_STATE",
    "checkpoint_dir",
    "last_complete_checkpoint",
    "replace_dir",
    "resumable_checkpoint",
]

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"


def checkpoint_dir(out_dir: str) -> Path:
    """Checkpoints live beside the model, outside the DVC output DVC deletes before a rerun."""
    out = Path(out_dir)
    return out.with_name(f"{out.name}.checkpoints")


def _step(path: Path) -> int | None:
    prefix = f"{PREFIX_CHECKPOINT_DIR}-"
    suffix = path.name.removeprefix(prefix)
    return int(suffix) if path.name.startswith(prefix) and suffix.isdigit() else None


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint in ``output_dir`` that was saved to the end, or None.

    Incomplete checkpoint folders are deleted so the Trainer's own rotation never counts them.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    complete: list[tuple[int, Path]] = []
    for path in output_dir.iterdir():
        step = _step(path)
        if step is None or not path.is_dir():
            continue
        if (path / TRAINER_STATE).is_file():
            complete.append((step, path))
        else:
            log.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path)
    return max(complete)[1] if complete else None


def resumable_checkpoint(output_dir: str | Path, settings: object) -> Path | None:
    """The checkpoint to resume from, only if it was written by a run with the same ``settings``.

    ``settings`` is anything JSON-serialisable that decides the result of training (params, the
    training data, the base model). A rerun after a crash continues; a rerun with other settings
    (a changed learning rate, new tasks) starts over instead of silently continuing an old run.
    The folder is claimed for ``settings`` before training starts.
    """
    return last_complete_checkpoint(claim_work_dir(output_dir, settings))
