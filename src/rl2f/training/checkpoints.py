"""Resuming training after a crash or ``kill -9``, and publishing a finished model atomically.

A training stage checkpoints into a work folder (``<out_dir>.checkpoints``) that records the
settings it was started with; a rerun resumes only under the same settings, since continuing a
checkpoint under other ones would silently mix two runs. The transformers Trainer writes a
checkpoint folder file by file and ``trainer_state.json`` last, so a run killed while saving
leaves a folder that looks like a checkpoint but is not one. Resuming from it would fail (or
worse, load half a model); only folders with the state file count, and the others are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rl2f.tasks.io import atomic_write_text

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


def replace_dir(staging: str | Path, target: str | Path) -> None:
    """Move a fully written ``staging`` folder to ``target``, replacing what was there.

    Readers see the old folder or the new one, never a mixture; the old one is deleted only
    after the new one is in place.
    """
    staging, target = Path(staging), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    retired = target.with_name(f".{target.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


RESUME_KEY = "resume_key.txt"


def resumable_checkpoint(output_dir: str | Path, settings: object) -> Path | None:
    """The checkpoint to resume from, only if it was written by a run with the same ``settings``.

    ``settings`` is anything JSON-serialisable that decides the result of training (params, the
    training data, the base model). A rerun after a crash continues; a rerun with other settings
    (a changed learning rate, new tasks) starts over instead of silently continuing an old run.
    The folder is claimed for ``settings`` before training starts.
    """
    output_dir = Path(output_dir)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    marker = output_dir / RESUME_KEY
    recorded = marker.read_text().strip() if marker.is_file() else None
    if output_dir.exists() and recorded != key:
        log.warning("discarding checkpoints in %s: written with other settings", output_dir)
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if recorded != key:
        atomic_write_text(marker, key + "\n")
    return last_complete_checkpoint(output_dir)
