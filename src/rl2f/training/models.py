"""Loading a model for training and publishing the trained one, shared by every trainer.

GRPO and critique distillation start from the same kind of checkpoint and must publish in the
same form (a folder that loads with plain ``from_pretrained``), so both take these from here
rather than one trainer borrowing from the other.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from rl2f.config import Config
from rl2f.engines.revision import FIRST_ATTEMPT_DIR, first_attempt_dir
from rl2f.errors import UserError
from rl2f.training.checkpoints import replace_dir


def world_size() -> int:
    """Processes taking part in training (``accelerate launch`` sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def distributed_state():  # noqa: ANN201
    """accelerate's view of the launch (rank, main process, barriers). On a machine without
    CUDA it must be asked for CPU explicitly: a plain ``PartialState()`` under torchrun there
    reports one process, so every rank would act as the main one."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


# ---------------------------------------------------------------- loading
def load_tokenizer_with_template(source: str):  # noqa: ANN201
    """The student's tokenizer; multi-turn rollouts and chat SFT both need its chat template."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UserError(f"{source}: cannot load a tokenizer ({_first_line(exc)})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{source}: the tokenizer has no chat template; the student must be a chat model "
            "(set tokenizer.chat_template and save it, or pick a chat/instruct checkpoint)"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(source: str, dtype: str):  # noqa: ANN201
    from transformers import AutoModelForCausalLM

    torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise UserError(f"{source}: cannot load a causal LM ({_first_line(exc)})") from None


def load_student(cfg: Config):  # noqa: ANN201
    source = cfg.model.base_path
    if cfg.model.student is None and not Path(source).exists():
        raise UserError(f"{source}: base model not found (run `rl2f bootstrap` first)")
    tokenizer = load_tokenizer_with_template(source)
    return load_causal_lm(source, cfg.model.dtype), tokenizer


def lora_config(cfg: Config):  # noqa: ANN201
    """LoRA adapters on every linear layer (``train.lora``); TRL wraps the model with them."""
    if not cfg.train.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.train.lora_r,
        lora_alpha=cfg.train.lora_alpha,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def model_identity(source: str) -> dict[str, Any]:
    """Enough to tell one base model from another without hashing gigabytes: a local folder's
    file names and sizes plus its config, or the hub id. No modification times (unlike
    :func:`rl2f.tasks.io.folder_identity`): a retried cluster step downloads the same base
    anew, and its training checkpoints must still resume."""
    path = Path(source)
    if not path.is_dir():
        return {"hub_id": source}
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
    config = path / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None
    return {"files": files, "config_sha256": digest}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# ---------------------------------------------------------------- publishing
def publish(
    trainer: Any,
    tokenizer: Any,
    out_dir: str,
    merge_lora: bool = False,
    first_attempt: str | Path | None = None,
) -> None:
    """Save the trained model and tokenizer to ``out_dir`` atomically (a LoRA adapter is merged
    first, so every published model loads with plain ``from_pretrained``). ``first_attempt``
    (a model folder or hub id) is saved beside it, in ``first_attempt/``: the frozen model that
    writes the first attempts of a revision-trained policy (:mod:`rl2f.engines.revision`)."""
    staging = Path(out_dir).with_name(f".{Path(out_dir).name}.staging")
    shutil.rmtree(staging, ignore_errors=True)  # left over by a run killed while publishing
    model = trainer.accelerator.unwrap_model(trainer.model)
    if merge_lora:
        model = model.merge_and_unload()
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if first_attempt is not None:
        _save_first_attempt(str(first_attempt), staging / FIRST_ATTEMPT_DIR, tokenizer)
    replace_dir(staging, out_dir)


def _save_first_attempt(source: str, dest: Path, tokenizer: Any) -> None:
    """A local model's own files as they are (no nested first_attempt/: a policy trained from
    a revision-trained model pairs with that model's own first-attempt model); a hub model
    downloaded and saved."""
    nested = first_attempt_dir(source)
    if nested is not None:
        source = str(nested)
    if Path(source).is_dir():
        dest.mkdir(parents=True)
        for path in Path(source).iterdir():
            if path.is_file():
                shutil.copy2(path, dest / path.name)
        return
    load_causal_lm(source, "auto").save_pretrained(dest)
    tokenizer.save_pretrained(dest)
