"""The config models document themselves, and a setting is stored once."""

from __future__ import annotations

import re
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


def test_every_params_yaml_knob_has_a_comment() -> None:
    """Each key below a section carries a trailing comment or follows a comment line, so that
    params.yaml reads without config.py open (the descriptions there are the full story)."""
    bare, depth, above = [], 0, ""
    for line in (REPO / "params.yaml").read_text().splitlines():
        # Lines that continue a {flow mapping} belong to the key that opened it.
        documented = " #" in line or above.lstrip().startswith("#")
        if depth == 0 and re.match(r"^ +[a-z_]+:", line) and not documented:
            bare.append(line.strip())
        depth += line.count("{") - line.count("}")
        above = line
    assert not bare, f"params.yaml keys with no comment: {bare}"
