"""Training stages launched on several processes (torchrun, CPU, gloo), checked against one
process: the same stage, the same params, the same global batch. See docs/scale-out.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import (
    cli_command,
    make_workspace,
    shared_coin_policy,
    subprocess_env,
    sum_tasks,
    workspace_overrides,
)

from rl2f.tracking import TAG_ROLE, TAG_STAGE

torch.set_num_threads(1)

STEPS = 3
TASKS_PER_STEP = 2
GENERATIONS = 4


@pytest.fixture(scope="session")
def coin_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return shared_coin_policy(tmp_path_factory.getbasetemp(), tiny_model_dir)


def torchrun(processes: int, command: list[str]) -> list[str]:
    """``command`` (``python -m rl2f.cli ...``) under torchrun on ``processes`` CPU processes."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, f"--nproc_per_node={processes}", *command[1:]]


def train_rl2f(root: Path, model_dir: Path, processes: int, *extra: str):  # noqa: ANN201
    """``rl2f train_rl2f`` in a fresh workspace under ``root``, tracked in its own SQLite
    MLflow; returns the finished process."""
    root.mkdir(parents=True, exist_ok=True)
    overrides = [
        *workspace_overrides(root, model_dir),
        f"train.steps={STEPS}",
        f"train.tasks_per_step={TASKS_PER_STEP}",
        f"train.num_generations={GENERATIONS}",
        "train.per_turn_credit=true",  # the shipped recipe
        "train.learning_rate=0.001",
        "tracking.enabled=true",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        "tracking.experiment=scale-out",
        *extra,
    ]
    make_workspace(root, model_dir, sum_tasks(), overrides)
    command = cli_command("train_rl2f", overrides)
    if processes > 1:
        command = torchrun(processes, command)
    env = {k: v for k, v in subprocess_env().items() if k not in {"RANK", "WORLD_SIZE"}}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)


def failure(run: subprocess.CompletedProcess) -> str:
    """The lines of a failed launch that say why (torchrun's own report is mostly noise)."""
    lines = [line for line in run.stderr.splitlines() if "rror" in line or "rl2f " in line]
    return "\n".join(lines[-40:]) or run.stderr[-4000:]


def weight_shift(model_dir: Path, base_dir: Path) -> float:
    """L2 norm of (trained - base) over every parameter."""
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    base = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()
    return sum(((trained[k] - base[k]).float() ** 2).sum().item() for k in base) ** 0.5


def stage_runs(root: Path) -> tuple[list, list, object]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("scale-out")
    runs = client.search_runs([experiment.experiment_id])
    stages = [r for r in runs if r.data.tags.get(TAG_STAGE) == "train_rl2f"]
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "parent"]
    return stages, parents, client


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path: Path, coin_model_dir: Path) -> None:
    """Two torchrun processes (gloo) against one process on the same global batch.

    Exact equality is not expected and not asserted: each process rolls out its own half of the
    step's conversations with its own sampling seed (``process_index`` is folded into it, so the
    halves do not draw the same numbers), and the transformers engine samples a batch at a time,
    so the conversations, rewards and losses differ from the one-process run's. What must match:
    TRL's sampler gives both runs the same global batch (same seed, same tasks_per_step x G
    conversations per step, checked through the gathered ``rollout/episodes`` metric), both run
    the same steps, and both move the weights by a similar amount: Adam's normalised steps make
    the size of an update depend on the learning rate and step count far more than on the
    sampled rewards, so a run whose gradients were lost (or averaged over the wrong count) would
    show up as a shift far outside the band. Per-turn credit is on (the shipped recipe): each
    process holds whole groups (tasks_per_step is a multiple of the process count)."""
    one = train_rl2f(tmp_path / "one", coin_model_dir, 1)
    assert one.returncode == 0, failure(one)
    two = train_rl2f(tmp_path / "two", coin_model_dir, 2)
    assert two.returncode == 0, failure(two)

    shifts = {}
    for name in ("one", "two"):
        root = tmp_path / name
        out = root / "models" / "rl2f"
        assert (out / "config.json").exists()
        assert sorted(p.name for p in (root / "models").iterdir()) == ["rl2f"]  # no staging left
        assert not (root / "models" / "rl2f.checkpoints").exists()
        summary = json.loads((out / "training_summary.json").read_text())
        assert summary["steps"] == STEPS
        shifts[name] = weight_shift(out, coin_model_dir)

        stages, parents, client = stage_runs(root)
        assert len(stages) == 1, f"{name}: {len(stages)} MLflow runs for one stage"
        assert len(parents) == 1
        run = stages[0]
        assert run.info.status == "FINISHED"
        episodes = client.get_metric_history(run.info.run_id, "rollout/episodes")
        # Every logged step saw the whole global batch, gathered from both processes.
        assert [m.value for m in episodes] == [TASKS_PER_STEP * GENERATIONS] * STEPS, name
        assert summary["student_tokens"] > 0

    assert shifts["one"] > 0 and shifts["two"] > 0
    assert 0.5 < shifts["two"] / shifts["one"] < 2.0, shifts


@pytest.mark.slow
def test_per_turn_credit_refuses_groups_split_over_processes(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    """One task per step on two processes: each process would hold half a group."""
    run = train_rl2f(tmp_path, coin_model_dir, 2, "train.tasks_per_step=1", "train.steps=1")
    assert run.returncode != 0
    assert "set train.tasks_per_step to a multiple of 2" in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / "models" / "rl2f").exists()


@pytest.mark.slow
def test_distill_on_two_processes(tmp_path: Path, coin_model_dir: Path) -> None:
    """The distill stage under torchrun: one published critic, one summary, one MLflow run."""
    from test_distill import rolled_out_workspace

    rolled_out_workspace(tmp_path, coin_model_dir)
    overrides = [
        *workspace_overrides(tmp_path, coin_model_dir),
        "tracking.enabled=true",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.experiment=scale-out",
    ]
    run = subprocess.run(
        torchrun(2, cli_command("distill", overrides)),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, failure(run)
    out = tmp_path / "models" / "rl2f_critic"
    assert (out / "config.json").exists()
    assert json.loads((out / "distill_summary.json").read_text())["steps"] == 2
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("scale-out")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{TAG_STAGE}` = 'distill'")
    assert len(runs) == 1
