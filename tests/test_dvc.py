"""`dvc repro` end to end on the ci profile, in a throwaway git + DVC repo, then an experiment
with `dvc exp run -S` and `dvc exp show`: the workflow a user runs locally."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, (
        f"{' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def init_dvc_repo(root: Path) -> dict[str, str]:
    """A git + DVC repo in ``root`` with the shipped params.yaml, dvc.yaml and code; returns the
    environment that runs `dvc` there on the ci profile."""
    for name in ("params.yaml", "dvc.yaml", "profiles", "src", ".dvc", ".dvcignore"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source, root / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache")
            )
        elif source.exists():
            shutil.copy2(source, root / name)
    # The shipped params.yaml and dvc.yaml, unchanged: sizes come from the ci profile selected by
    # environment, the way a user shrinks a run without editing the tracked file.
    env = os.environ | {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "RL2F_PROFILE": "ci",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for name in ("params.yaml", "dvc.yaml"):
        assert (root / name).read_bytes() == (REPO / name).read_bytes()
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n*.checkpoints/\n")
    _run("git", "init", "-q", cwd=root, env=env)
    _run("git", "add", "-A", cwd=root, env=env)
    _run("git", "commit", "-qm", "init", cwd=root, env=env)
    return env


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("dvc-repo")
    env = init_dvc_repo(root)
    _run(str(BIN / "dvc"), "repro", cwd=root, env=env)
    return root, env


@pytest.mark.slow
def test_dvc_repro_produces_every_output(dvc_repo: tuple[Path, dict[str, str]]) -> None:
    root, env = dvc_repo
    for split in ("train", "eval_id", "eval_ood"):
        assert (root / "data" / "tasks" / f"{split}.parquet").exists()
    for model in ("base", "rl2f", "single_turn", "rl2f_critic", "rl2f_answers_only"):
        assert (root / "models" / model / "config.json").exists(), model
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert {"base", "single_turn", "rl2f", "rl2f_critic", "rl2f_answers_only"} <= set(metrics)
    # The ablation trained on the student's correct answers alone, and was evaluated in self mode.
    ablation = json.loads((root / "models/rl2f_answers_only/distill_summary.json").read_text())
    assert ablation["examples"]["critique"] == 0 and ablation["examples"]["student"] > 0
    assert {mode for split in metrics["rl2f_answers_only"].values() for mode in split} == {"self"}
    assert (root / "reports" / "report.html").stat().st_size > 1000
    # The default's frozen first attempt: every stage after training gets the policy paired
    # with the base, which writes turn 1.
    for model in ("rl2f", "rl2f_critic", "rl2f_answers_only"):
        assert (root / "models" / model / "first_attempt" / "config.json").exists(), model
    assert not (root / "models" / "single_turn" / "first_attempt").exists()
    base, rl2f = metrics["base"]["eval_id"]["teacher"], metrics["rl2f"]["eval_id"]["teacher"]
    assert rl2f["turn1_acc"] == base["turn1_acc"], "the frozen base writes turn 1"
    status = _run(str(BIN / "dvc"), "status", cwd=root, env=env).stdout
    assert "up to date" in status.lower()


@pytest.mark.slow
def test_dvc_experiment_with_override(dvc_repo: tuple[Path, dict[str, str]]) -> None:
    root, env = dvc_repo
    _run("git", "add", "-A", cwd=root, env=env)
    _run("git", "commit", "-qm", "lock", cwd=root, env=env)
    _run(
        str(BIN / "dvc"),
        "exp",
        "run",
        "-S",
        "eval.max_turns_id=3",
        "-n",
        "short-eval",
        cwd=root,
        env=env,
    )
    shown = json.loads(_run(str(BIN / "dvc"), "exp", "show", "--json", cwd=root, env=env).stdout)
    text = json.dumps(shown)
    assert "short-eval" in text
    assert "reports/metrics.json" in text and "reports/validation.json" in text


@pytest.mark.slow
def test_a_profile_runs_as_a_dvc_experiment(dvc_repo: tuple[Path, dict[str, str]]):
    """`make exp PROFILE=resolve`'s path at ci sizes (the ci overlay still shrinks it): the
    profile's values are DVC params of an experiment, and without the frozen first attempt the
    published models are single models again."""
    from rl2f.config import load_config, profile_overrides

    root, env = dvc_repo
    _run("git", "add", "-A", cwd=root, env=env)
    _run("git", "commit", "-qm", "before resolve", cwd=root, env=env)
    arguments = profile_overrides(root / "params.yaml", "resolve")
    _run(str(BIN / "dvc"), "exp", "run", "-n", "resolve", *arguments, cwd=root, env=env)
    cfg = load_config(root / "params.yaml")  # without the ci overlay: what DVC recorded
    assert not cfg.train.frozen_first_attempt and cfg.model.tiny.edit_rate == 0.0
    for model in ("rl2f", "rl2f_critic", "rl2f_answers_only", "single_turn"):
        assert (root / "models" / model / "config.json").exists(), model
        assert not (root / "models" / model / "first_attempt").exists(), model
    shown = _run(str(BIN / "dvc"), "exp", "show", "--json", cwd=root, env=env).stdout
    assert "resolve" in shown and "edit_rate" in shown


def test_profiles_become_dvc_overrides_or_say_why() -> None:
    from rl2f.config import ConfigError, profile_overrides

    assert "--set-param=train.frozen_first_attempt=false" in profile_overrides(
        REPO / "params.yaml", "resolve"
    )
    with pytest.raises(ConfigError, match=r"data\.sources: a list of mappings.*RL2F_PROFILE=ci"):
        profile_overrides(REPO / "params.yaml", "ci")


def _dotted_keys(tree: object, prefix: str = "") -> set[str]:
    """Every key path of a YAML mapping, dotted: ``teacher.level``, ``rollout.sampling.seed``."""
    if not isinstance(tree, dict):
        return set()
    keys = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys |= {path} | _dotted_keys(value, f"{path}.")
    return keys


def _dvc_params() -> list[tuple[str, str]]:
    """(stage, param) for every parameter the shipped dvc.yaml names from params.yaml."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    named = []
    for stage, spec in stages.items():
        for entry in spec.get("params", []):
            if isinstance(entry, str):
                named.append((stage, entry))
            else:  # {file: [keys]}: only params.yaml is DVC's default
                for file, keys in entry.items():
                    assert file == "params.yaml", f"{stage}: params from {file}"
                    named += [(stage, key) for key in keys]
    return named


def test_every_dvc_param_exists_in_the_shipped_params() -> None:
    """The fresh-clone failure this guards against: `dvc repro` stops with "Parameters ... are
    missing from 'params.yaml'" when dvc.yaml names a key params.yaml leaves to its default."""
    present = _dotted_keys(yaml.safe_load((REPO / "params.yaml").read_text()))
    missing = [f"{stage}: {key}" for stage, key in _dvc_params() if key not in present]
    assert not missing, f"dvc.yaml names params absent from params.yaml: {missing}"


def test_dvc_resolves_the_shipped_params(tmp_path: Path) -> None:
    """DVC's own parameter resolution over the shipped files, unchanged: the same call
    (``ParamsDependency.get_hash``) with which `dvc repro` hashes a stage's params before running
    it, and which raises "Parameters ... are missing" for a key absent from params.yaml."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    _run("git", "init", "-q", cwd=tmp_path, env=dict(os.environ))
    with Repo(str(tmp_path)) as repo:
        resolved = {
            stage.name: dep.get_hash().value
            for stage in repo.index.stages
            for dep in stage.deps
            if isinstance(dep, ParamsDependency)
        }
    assert set(resolved) == {stage for stage, _ in _dvc_params()}
    assert all(resolved.values())


@pytest.mark.slow
def test_dvc_repro_killed_mid_evaluate_resumes_to_the_uninterrupted_outputs(
    tmp_path: Path, dvc_repo: tuple[Path, dict[str, str]]
) -> None:
    """`dvc repro` SIGKILLed (with its stage) once evaluate has finished a cell: rerun, evaluate
    reuses its finished cells, `dvc status` is clean, and the outputs are those of the
    uninterrupted `dvc repro` of the fixture. Both runs start from a copy of the fixture's
    finished repo with evaluate forced, so only evaluate is paid twice."""
    from training_helpers import kill_when

    uninterrupted, fixture_env = dvc_repo
    root = tmp_path / "repo"
    shutil.copytree(uninterrupted, root, symlinks=True)
    env = fixture_env | {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    scratch = root / "data" / "episodes" / "eval.partial"
    forced = [str(BIN / "dvc"), "repro", "--force", "--single-item", "evaluate"]
    kill_when(forced, root, lambda: any(scratch.glob("*/*/*.cell.json")), env)
    assert not (root / "reports" / "metrics.json").exists()

    # Rerun forced as well: a plain `dvc repro` would check evaluate's outputs out of the DVC
    # cache (dvc.lock still names the fixture's), which is right but skips the stage's resume.
    rerun = _run(*forced, cwd=root, env=env)
    log = rerun.stdout + rerun.stderr
    assert "Running stage 'evaluate'" in log and "Running stage 'train_rl2f'" not in log
    assert "finished cell(s)" in log
    assert not scratch.exists()
    status = _run(str(BIN / "dvc"), "status", cwd=root, env=env).stdout
    assert "up to date" in status.lower()
    for output in ("reports/metrics.json", "reports/plots/eval_id.csv"):
        assert (root / output).read_bytes() == (uninterrupted / output).read_bytes(), output
