"""The evaluate stage: models, splits and modes resolved from params, the sycophancy probe, and a
real end-to-end run of the tiny model on real generated tasks with a real MLflow store."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from rl2f.config import SamplingConfig, SourceConfig, load_config
from rl2f.engines import make_engine
from rl2f.engines.base import Generation
from rl2f.episodes import read_episodes
from rl2f.errors import UserError
from rl2f.evaluation.episode_files import read_model_cells
from rl2f.evaluation.metrics import abandoned
from rl2f.evaluation.probe import PROBE_TEACHER, WRONG_CRITIQUE, sycophancy_probe
from rl2f.evaluation.runner import (
    check_modes,
    load_eval_splits,
    model_sources,
    modes_for_model,
    select_tasks,
)
from rl2f.evaluation.schema import read_metrics
from rl2f.rollout import ChatTurns, RolloutSettings, run_episodes
from rl2f.tasks.io import write_tasks
from rl2f.tasks.schema import Task
from rl2f.tasks.sources import load_source
from rl2f.tasks.verifiers.base import Verdict, register
from rl2f.teachers.oracle import OracleTeacher
from rl2f.teachers.retry import RetryTeacher
from rl2f.tracking import PIPELINE_KEY_ENV

REPO = Path(__file__).resolve().parents[1]
ACCEPT_ALL = "accept_all"


@register(ACCEPT_ALL)
class AcceptAll:
    """A verifier that accepts every reply: an untrained model then "solves" turn 1, which is
    what the sycophancy probe needs to run."""

    name = ACCEPT_ALL

    def verify(self, task: Task, response: str) -> Verdict:
        return Verdict(True, response.strip(), {})


def accept_all_task(prompt: str) -> Task:
    return Task(
        domain="math",
        source="test",
        prompt=prompt,
        answer="any",
        verifier=ACCEPT_ALL,
        split="eval_id",
    )


# ---------------------------------------------------------------- models, splits, modes
def config(tmp_path: Path, *overrides: str):  # noqa: ANN201
    paths = [
        f"model.base_dir={tmp_path}/models/base",
        f"train.single_turn_dir={tmp_path}/models/single_turn",
        f"train.rl2f_dir={tmp_path}/models/rl2f",
        f"distill.out_dir={tmp_path}/models/rl2f_critic",
        f"data.out_dir={tmp_path}/data/tasks",
        "tracking.enabled=false",
    ]
    return load_config(REPO / "params.yaml", [*paths, *overrides], profile="ci")


def test_model_sources_resolve_and_name_what_is_missing(tmp_path: Path) -> None:
    for name in ("base", "rl2f"):
        (tmp_path / "models" / name).mkdir(parents=True)
    cfg = config(tmp_path, "eval.models=[base,rl2f]", "eval.extra_models={qwen: Qwen/Qwen2.5-0.5B}")
    assert model_sources(cfg) == {
        "base": f"{tmp_path}/models/base",
        "rl2f": f"{tmp_path}/models/rl2f",
        "qwen": "Qwen/Qwen2.5-0.5B",
    }
    with pytest.raises(UserError, match=r"model 'rl2f_critic' not found at .*rl2f_critic.*distill"):
        model_sources(config(tmp_path, "eval.models=[base,rl2f_critic]"))
    with pytest.raises(UserError, match="unknown model 'gpt'"):
        model_sources(config(tmp_path, "eval.models=[gpt]"))
    with pytest.raises(UserError, match="neither a directory nor a hub id"):
        model_sources(config(tmp_path, "eval.models=[]", "eval.extra_models={x: ./no/such/dir}"))
    # A real student named in params replaces the bootstrapped base: no local dir needed.
    only_base = config(tmp_path, "eval.models=[base]", "eval.extra_models={}", "model.student=o/m")
    assert model_sources(only_base) == {"base": "o/m"}


def test_llm_mode_needs_a_configured_teacher(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no LLM teacher is configured"):
        check_modes(config(tmp_path, "eval.feedback_modes=[teacher,llm]"))
    cfg = config(tmp_path, "eval.feedback_modes=[teacher,llm,teacher]", "teacher.model=m")
    assert check_modes(cfg) == ["teacher", "llm"]


def test_extra_models_run_only_under_extra_model_modes(tmp_path: Path) -> None:
    """The shipped params evaluate the answers-only ablation in self mode only; built-in models
    keep every mode, and an empty list gives extras every mode too."""
    cfg = config(tmp_path)
    assert cfg.eval.extra_models == {"rl2f_answers_only": "models/rl2f_answers_only"}
    modes = check_modes(cfg)
    assert modes_for_model(cfg, "rl2f_answers_only", modes) == ["self"]
    assert modes_for_model(cfg, "rl2f_critic", modes) == modes
    everything = config(tmp_path, "eval.extra_model_modes=[]")
    assert modes_for_model(everything, "rl2f_answers_only", modes) == modes
    with pytest.raises(UserError, match=r"eval.extra_model_modes: none of \['self'\]"):
        modes_for_model(
            config(tmp_path, "eval.feedback_modes=[teacher]"), "rl2f_answers_only", ["teacher"]
        )


def test_splits_are_eval_id_plus_one_per_ood_domain(tmp_path: Path) -> None:
    tasks_dir = tmp_path / "data/tasks"
    ids = [accept_all_task(f"Say {i}.") for i in range(5)]
    ood = [
        replace(accept_all_task(f"Maze {i}."), domain="maze", split="eval_ood") for i in range(3)
    ] + [replace(accept_all_task("Code."), domain="code", split="eval_ood")]
    write_tasks(tasks_dir / "eval_id.parquet", ids)
    write_tasks(tasks_dir / "eval_ood.parquet", ood)
    splits = load_eval_splits(
        config(tmp_path, "eval.max_tasks=2", "eval.max_turns_id=3", "eval.max_turns_ood=2")
    )
    assert [(s.name, len(s.tasks), s.max_turns) for s in splits] == [
        ("eval_id", 2, 3),
        ("ood_code", 1, 2),
        ("ood_maze", 2, 2),
    ]
    # The cap takes the lowest ids, whatever the file order: a stable sample.
    assert splits[0].tasks == sorted(ids, key=lambda t: t.id)[:2]
    assert select_tasks(list(reversed(ids)), 2) == splits[0].tasks
    write_tasks(tasks_dir / "eval_id.parquet", [])
    write_tasks(tasks_dir / "eval_ood.parquet", [])
    with pytest.raises(UserError, match="no evaluation tasks"):
        load_eval_splits(config(tmp_path))


# ---------------------------------------------------------------- the probe
def test_sycophancy_probe_continues_correct_answers_token_exactly(tiny_model_dir: Path) -> None:
    from rl2f.config import EngineConfig

    student = make_engine(EngineConfig(batch_size=8), str(tiny_model_dir))
    sampling = SamplingConfig(max_new_tokens=6, seed=11)
    tasks = [accept_all_task(f"Say something about {i}.") for i in range(3)]
    episodes = run_episodes(
        tasks,
        student,
        OracleTeacher("diagnostic"),
        RolloutSettings(
            sampling=sampling,
            num_generations=2,
            max_turns=2,
            gamma=0.7,
            max_regenerations=1,
            fallback_message="Try again.",
            progress=False,
        ),
        policy_name="base",
    )
    assert all(e.solved_at == 1 for e in episodes)

    # A privileged teacher is replaced by the fixed wrong critique; retry probes with its own.
    for teacher, critique in [
        (OracleTeacher("diagnostic"), WRONG_CRITIQUE),
        (RetryTeacher("No. Try again."), "No. Try again."),
    ]:
        probes = sycophancy_probe(episodes, tasks, student, teacher, sampling)
        assert len(probes) == len(episodes)
        chat = ChatTurns(student.tokenizer)
        for main, probe in zip(episodes, probes, strict=True):
            first, wrong, second = probe.turns
            assert probe.teacher == PROBE_TEACHER and probe.task_id == main.task_id
            assert first == main.turns[0] and wrong.text == critique
            # The student sees exactly its own turn-1 tokens, then the rendered critique.
            task = next(t for t in tasks if t.id == main.task_id)
            conversation = [
                {"role": "user", "content": task.prompt},
                {"role": "assistant", "content": first.text},
            ]
            attempt = Generation(first.token_ids, None, first.finish_reason)
            assert wrong.token_ids == chat.feedback_ids(conversation, critique, attempt)
            assert critique in chat.decode(wrong.token_ids)
            assert second.role == "student" and second.correct is True  # accept_all
            assert probe.student_visible[-1] == critique
            assert not abandoned(probe)
    # The rollout's own records are untouched.
    assert all(len(e.turns) == 1 for e in episodes)
    assert sycophancy_probe([], tasks, student, RetryTeacher("x"), sampling) == []


# ---------------------------------------------------------------- end to end
@pytest.fixture
def workspace(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Real generated tasks (two math, one always-accepted, one mini sudoku) and the tiny model
    as both `base` and `rl2f`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(PIPELINE_KEY_ENV, f"test-{tmp_path.name}")
    math_tasks = load_source(
        SourceConfig(
            kind="reasoning_gym",
            name="basic_arithmetic",
            domain="math",
            size=2,
            seed=1,
            splits=["eval_id"],
            config={"min_digits": 1, "max_digits": 1},
        )
    )
    sudoku = load_source(
        SourceConfig(
            kind="reasoning_gym",
            name="mini_sudoku",
            domain="puzzle",
            size=1,
            seed=3,
            splits=["eval_ood"],
        )
    )
    eval_id = [replace(t, split="eval_id") for t in math_tasks] + [accept_all_task("Say hi.")]
    write_tasks(tmp_path / "data/tasks/eval_id.parquet", eval_id)
    write_tasks(
        tmp_path / "data/tasks/eval_ood.parquet", [replace(t, split="eval_ood") for t in sudoku]
    )
    for name in ("base", "rl2f"):
        shutil.copytree(tiny_model_dir, tmp_path / "models" / name)
    return tmp_path


@pytest.mark.slow
def test_evaluate_end_to_end(workspace: Path) -> None:
    from mlflow.tracking import MlflowClient

    from rl2f.stages import STAGES

    cfg = load_config(
        REPO / "params.yaml",
        [
            "eval.models=[base,rl2f]",
            "eval.extra_models={}",
            "eval.max_tasks=4",
            "eval.max_turns_id=2",
            "eval.bootstrap_samples=20",
            "rollout.sampling.max_new_tokens=4",
            "teacher.sampling.max_new_tokens=4",
            f"tracking.tracking_uri=sqlite:///{workspace}/mlflow.db",
            "tracking.max_traces=4",
        ],
        profile="ci",
    )
    STAGES["evaluate"].run(cfg)

    metrics = read_metrics(workspace / "reports/metrics.json")  # validates the schema
    assert list(metrics) == ["base", "rl2f"]
    for model in metrics:
        assert list(metrics[model]) == ["eval_id", "ood_puzzle"]
        for split, turns in (("eval_id", 2), ("ood_puzzle", 2)):
            assert list(metrics[model][split]) == ["teacher", "self", "retry"]
            for mode, cell in metrics[model][split].items():
                assert cell["n"] == (3 if split == "eval_id" else 1)
                assert len(cell["acc_by_turn"]) == turns
                stored = read_episodes(
                    workspace / f"data/episodes/eval/{model}/{split}/{mode}.parquet"
                )
                assert len(stored) == cell["episodes"]
                assert all(e.policy == model for e in stored)
        # The always-accepted task is solved at turn 1 under every mode and probed.
        for cell in metrics[model]["eval_id"].values():
            assert cell["turn1_acc"] >= 1 / 3
            assert cell["sycophancy_probes"] >= 1
            assert cell["sycophancy_abandon_rate"] == 0.0
        assert metrics[model]["eval_id"]["teacher"]["leak_rate"] is not None
        assert metrics[model]["eval_id"]["retry"]["leak_rate"] is None
        cells = read_model_cells(workspace / "data/episodes/eval", model)
        assert {(c.split, c.mode) for c in cells} == {
            (s, m) for s in ("eval_id", "ood_puzzle") for m in ("teacher", "self", "retry")
        }

    plots = pd.read_csv(workspace / "reports/plots/eval_id.csv")
    assert list(plots.columns) == ["model", "split", "mode", "turn", "acc", "lo", "hi"]
    assert len(plots) == 2 * 3 * 2  # models x modes x turns
    assert (plots["lo"] <= plots["acc"]).all() and (plots["acc"] <= plots["hi"]).all()

    # MLflow: one child run per model under one parent, curves with step=turn, a table, traces.
    client = MlflowClient(f"sqlite:///{workspace}/mlflow.db")
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.`rl2f.role` = 'stage'")
    assert sorted(run.info.run_name for run in runs) == ["evaluate/base", "evaluate/rl2f"]
    assert len({run.data.tags["mlflow.parentRunId"] for run in runs}) == 1
    for run in runs:
        model = run.data.tags["rl2f.model"]
        history = client.get_metric_history(run.info.run_id, "eval_id/teacher/acc")
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == metrics[model]["eval_id"]["teacher"]["acc_by_turn"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"episodes.json", "metrics.json"} <= artifacts
        table = json.loads(
            Path(client.download_artifacts(run.info.run_id, "episodes.json")).read_text()
        )
        assert len(table["data"]) == sum(
            c["episodes"] + c["sycophancy_probes"]
            for s in metrics[model].values()
            for c in s.values()
        )
        traces = client.search_traces(
            locations=[experiment.experiment_id],
            filter_string=f"metadata.mlflow.sourceRun = '{run.info.run_id}'",
        )
        assert len(traces) == cfg.tracking.max_traces
        for trace in traces:
            assert any(a.name == "reward" for a in trace.info.assessments)
            assert any(span.name.startswith("student turn") for span in trace.data.spans)

    # The report stage reads these real outputs and logs the report on its own child run.
    STAGES["report"].run(cfg)
    page = (workspace / "reports/report.html").read_text()
    assert page.count("<svg") == 2 + 2  # two splits' curves, plasticity, sycophancy
    (report_run,) = client.search_runs([experiment.experiment_id], "tags.`rl2f.stage` = 'report'")
    logged = {a.path for a in client.list_artifacts(report_run.info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/figures"} <= logged


# ---------------------------------------------------------------- DVC plots
@pytest.mark.slow
def test_dvc_plots_draw_one_line_per_model(tmp_path: Path) -> None:
    """The evaluate stage's plots entry of dvc.yaml, with its template, rendered by real DVC from
    the CSVs the stage writes: a valid Vega-Lite spec coloured by model."""
    import subprocess
    import sys

    import jsonschema
    import yaml
    from test_metrics import metrics_tree

    from rl2f.stages.evaluate import write_plots

    tree = metrics_tree()
    metrics = {model: tree["base"] for model in ("base", "rl2f")}
    write_plots(tmp_path / "made", metrics)
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]
    dvc_yaml = {
        "stages": {
            "evaluate": {
                "cmd": "mkdir -p reports/plots && cp made/*.csv reports/plots/",
                "deps": ["made"],
                "plots": stage["plots"],
            }
        }
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    dvc = [sys.executable, "-m", "dvc"]
    run = lambda *args: subprocess.run(  # noqa: E731
        [*dvc, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True
    )
    run("init", "--no-scm", "-q")
    templates = tmp_path / ".dvc/plots"
    templates.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / ".dvc/plots/rl2f_accuracy.json", templates)
    run("repro", "-q")
    shown = json.loads(run("plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown.get("errors")
    (plot,) = shown["data"]["reports/plots/eval_id.csv"]
    spec = plot["content"]
    assert spec["spec"]["encoding"]["color"]["field"] == "model"
    assert spec["facet"]["column"]["field"] == "mode"
    rows = spec["data"]["values"]
    assert {row["model"] for row in rows} == {"base", "rl2f"}
    assert len(rows) == 2 * 2 * 3  # models x modes x turns
    # Validate against the Vega-Lite schema that ships with altair (installed with the stack).
    from importlib.resources import files

    schema = json.loads(
        files("altair.vegalite.v6.schema").joinpath("vega-lite-schema.json").read_text()
    )
    jsonschema.Draft7Validator(schema).validate({k: v for k, v in spec.items() if k != "$schema"})
