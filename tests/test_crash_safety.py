"""kill -9 in the middle of a stage, then rerun: the rerun reuses the finished work (rollout
shards, evaluation cells), redoes none of it, and the outputs are byte for byte those of a run
that was never interrupted. Every stage runs for real, as ``rl2f <stage>`` in a subprocess, in a
tiny workspace; the training stages' own kill tests are in test_training and test_distill.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from training_helpers import (
    cli_command,
    kill_when,
    make_workspace,
    run_cli,
    shared_coin_policy,
    sum_tasks,
    workspace_overrides,
)

from rl2f.stages.rollout import SHARD_TASKS
from rl2f.tasks.io import partial_dir, write_tasks


@pytest.fixture(scope="session")
def coin_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return shared_coin_policy(tmp_path_factory.getbasetemp(), tiny_model_dir)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def numbers_in(log: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, log))


# ---------------------------------------------------------------- rollout
ROLLOUT_TASKS = 2 * SHARD_TASKS + SHARD_TASKS // 2  # three shards, the last one short


def rollout_workspace(root: Path, coin_model_dir: Path) -> list[str]:
    """Tasks and the coin policy as the RL2F policy in ``root``; the stage's overrides."""
    root.mkdir()
    overrides = [
        *workspace_overrides(root, coin_model_dir),
        "rollout.num_generations=2",
        "train.max_turns=2",
        f"rollout.max_tasks={ROLLOUT_TASKS}",
    ]
    cfg = make_workspace(root, coin_model_dir, sum_tasks(ROLLOUT_TASKS), overrides)
    shutil.copytree(coin_model_dir, cfg.train.rl2f_dir)
    return overrides


@pytest.mark.slow
def test_rollout_killed_after_a_shard_resumes_to_the_uninterrupted_output(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    overrides = rollout_workspace(interrupted, coin_model_dir)
    out = interrupted / "data" / "episodes" / "train"
    scratch = partial_dir(out)
    command = cli_command("rollout", overrides)
    kill_when(command, interrupted, lambda: any(scratch.glob("shard-*.parquet")))
    assert not out.exists(), "an output is visible before the stage finished"
    finished = {path.name: path.stat().st_mtime_ns for path in scratch.glob("shard-*.parquet")}
    assert 0 < len(finished) < 3, "killed too late: no shard was left to do"

    log = run_cli(command, interrupted).stderr
    assert f"reusing {len(finished)} finished shard(s) of 3" in log
    redone = {f"shard-{int(n) - 1:05d}.parquet" for n in numbers_in(log, r"shard (\d+) of 3 done")}
    assert redone == {f"shard-{i:05d}.parquet" for i in range(3)} - set(finished)
    assert not scratch.exists(), "the shards are removed once the output is published"

    run_cli(cli_command("rollout", rollout_workspace(straight, coin_model_dir)), straight)
    expected = straight / "data" / "episodes" / "train"
    got, want = tree(out), tree(expected)
    assert got.keys() == want.keys() == {"episodes.parquet", "episodes.jsonl", "summary.json"}
    assert got["episodes.parquet"] == want["episodes.parquet"]
    assert got["episodes.jsonl"] == want["episodes.jsonl"]
    summary, reference = (json.loads(files["summary.json"]) for files in (got, want))
    assert summary.pop("model_dir") != reference.pop("model_dir")  # each workspace's own path
    assert summary == reference and summary["episodes"] == ROLLOUT_TASKS * 2


# ---------------------------------------------------------------- evaluate
EVAL_MODELS = ("base", "rl2f")
EVAL_MODES = ("teacher", "self", "retry")


def evaluate_workspace(root: Path, coin_model_dir: Path) -> list[str]:
    """Eval tasks, and the coin policy as both ``base`` (the named student) and ``rl2f``; the
    stage's overrides: 2 models x 1 split x 3 modes = 6 cells."""
    root.mkdir()
    overrides = [
        *workspace_overrides(root, coin_model_dir),
        f"eval.models=[{','.join(EVAL_MODELS)}]",
        "eval.extra_models={}",
        f"eval.feedback_modes=[{','.join(EVAL_MODES)}]",
        "eval.max_tasks=6",
        "eval.num_generations=2",
        f"eval.episodes_dir={root / 'data' / 'episodes' / 'eval'}",
        f"eval.metrics_path={root / 'reports' / 'metrics.json'}",
        f"eval.plots_dir={root / 'reports' / 'plots'}",
    ]
    cfg = make_workspace(root, coin_model_dir, [], overrides)
    tasks = [replace(task, split="eval_id") for task in sum_tasks(6)]
    write_tasks(Path(cfg.data.out_dir) / "eval_id.parquet", tasks)
    write_tasks(Path(cfg.data.out_dir) / "eval_ood.parquet", [])
    shutil.copytree(coin_model_dir, cfg.train.rl2f_dir)
    return overrides


@pytest.mark.slow
def test_evaluate_killed_after_a_cell_resumes_to_the_uninterrupted_output(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    overrides = evaluate_workspace(interrupted, coin_model_dir)
    out = interrupted / "data" / "episodes" / "eval"
    scratch = partial_dir(out)
    command = cli_command("evaluate", overrides)
    kill_when(command, interrupted, lambda: any(scratch.glob("*/*/*.cell.json")))
    assert not out.exists() and not (interrupted / "reports").exists()
    finished = {
        f"{p.parent.parent.name} eval_id {p.name.removesuffix('.cell.json')}"
        for p in scratch.glob("*/*/*.cell.json")
    }
    assert 0 < len(finished) < 6, "killed too late: no cell was left to do"

    log = run_cli(command, interrupted).stderr
    redone = numbers_in(log, r"(\w+ eval_id \w+): cell finished")
    assert redone == {f"{m} eval_id {mode}" for m in EVAL_MODELS for mode in EVAL_MODES} - finished
    assert not scratch.exists(), "the cells are removed once everything is published"

    run_cli(cli_command("evaluate", evaluate_workspace(straight, coin_model_dir)), straight)
    got, want = tree(out), tree(straight / "data" / "episodes" / "eval")
    assert got.keys() == want.keys()
    assert {path for path in got if not path.endswith(".probe.parquet")} == {
        f"{m}/eval_id/{mode}.parquet" for m in EVAL_MODELS for mode in EVAL_MODES
    }
    assert got == want
    assert tree(interrupted / "reports") == tree(straight / "reports")


# ---------------------------------------------------------------- what counts as finished
def test_a_cell_is_reused_only_when_finished_under_the_same_settings(tmp_path: Path) -> None:
    from rl2f.evaluation.episode_files import (
        StoredCell,
        load_finished_cell,
        record_path,
        save_finished_cell,
    )

    save_finished_cell(tmp_path, StoredCell("m", "eval_id", "self", [], []), {"key": "a"})
    assert load_finished_cell(tmp_path, "m", "eval_id", "self", "a") is not None
    assert load_finished_cell(tmp_path, "m", "eval_id", "self", "b") is None  # other settings
    record_path(tmp_path, "m", "eval_id", "self").unlink()  # killed before the record
    assert load_finished_cell(tmp_path, "m", "eval_id", "self", "a") is None


def test_a_republished_model_is_another_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Finished work is keyed by the model folder's files: retraining publishes new files (same
    names and sizes, new contents), which must not pass for the old model."""
    from rl2f.tasks.io import folder_identity, replace_dir

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = folder_identity(model)
    assert folder_identity(model) == before
    staging = tmp_path / "staging"
    shutil.copytree(tiny_model_dir, staging, copy_function=shutil.copy)  # new files, like a save
    replace_dir(staging, model)
    assert folder_identity(model) != before
    assert folder_identity("org/name") == {"hub_id": "org/name"}
