"""The config models document themselves, and a setting is stored once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from rl2f import config
from rl2f.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def config_models() -> list[type[BaseModel]]:
    """Every pydantic model reachable from Config, found by walking field types so a new nested
    section is checked without anyone adding it here."""
    found: list[type[BaseModel]] = []
    pending: list[type[BaseModel]] = [Config]
    while pending:
        model = pending.pop()
        if model in found:
            continue
        found.append(model)
        for field in model.model_fields.values():
            pending += [t for t in _types(field.annotation) if issubclass(t, BaseModel)]
    return found


def _types(annotation: object) -> list[type]:
    if isinstance(annotation, type):
        return [annotation]
    return [t for arg in getattr(annotation, "__args__", ()) for t in _types(arg)]


def test_every_config_field_is_documented_where_it_is_declared() -> None:
    models = config_models()
    assert config.TrainConfig in models and config.SamplingConfig in models
    undocumented = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not undocumented, f"fields without a description=...: {undocumented}"


@pytest.mark.parametrize(
    ("key", "instead"),
    [
        ("rollout.model_dir", "train.rl2f_dir"),
        ("rollout.out_dir", "distill.episodes_dir"),
        ("rollout.max_turns", "train.max_turns"),
    ],
)
def test_settings_that_were_stored_twice_are_gone(key: str, instead: str) -> None:
    """The rollout's policy, output and turn budget are the train/distill settings (see
    rl2f.stages.rollout); the old duplicate keys fail loudly instead of silently diverging."""
    with pytest.raises(ConfigError, match=f"unknown key '{key}'"):
        load_config(REPO / "params.yaml", [f"{key}=x"])
    section, name = instead.split(".")
    assert name in Config.model_fields[section].annotation.model_fields
