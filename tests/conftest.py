"""Shared fixtures. Everything here is real: a real tokenizer and model saved to disk, real
task records built from the real generators."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny Qwen2 model and its trained tokenizer, saved like a hub model.
    Untrained: tests that need behaviour (not just plumbing) train it themselves."""
    import torch

    from rl2f.config import TinyModelConfig
    from rl2f.training.tiny_model import build_model, train_tokenizer

    torch.manual_seed(0)
    corpus = [f"Calculate {a} + {b}. Answer: {a + b}" for a in range(20) for b in range(20)]
    cfg = TinyModelConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    tokenizer = train_tokenizer(corpus, cfg.vocab_size)
    model = build_model(cfg, tokenizer)
    out = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
