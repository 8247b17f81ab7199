"""The validate stage on real task files, with real Great Expectations and the real verifiers.

The clean set comes from the real sources (reasoning-gym generators, the bundled HumanEval);
each planted defect is one bad row of the kind a buggy loader or a hand-edited file produces,
and must be reported by its own expectation with that row's id.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from rl2f.config import Config, DataConfig, SourceConfig, TrackingConfig
from rl2f.errors import DataError
from rl2f.stages import STAGES
from rl2f.stages.validate import HTML_NAME, JSON_NAME, run
from rl2f.tasks.io import tasks_frame, write_tasks
from rl2f.tasks.schema import SPLITS, Task
from rl2f.tasks.sources import load_source
from rl2f.validation import answer_leaks, validate_task_files

Layout = dict[str, list[Task]]


def _source(kind: str, name: str, size: int, seed: int, **config: object) -> list[Task]:
    return load_source(SourceConfig(kind=kind, name=name, size=size, seed=seed, config=config))


@pytest.fixture(scope="module")
def clean() -> Layout:
    arithmetic = _source(
        "reasoning_gym", "basic_arithmetic", 16, 1, min_terms=2, max_terms=2, max_digits=2
    )
    ood = (
        _source("reasoning_gym", "mini_sudoku", 1, 3)
        + _source("reasoning_gym", "shortest_path", 1, 5)
        + _source("humaneval", "openai_humaneval", 2, 6)
    )
    layout = {"train": arithmetic[:12], "eval_id": arithmetic[12:], "eval_ood": ood}
    return {
        split: [dataclasses.replace(t, split=split) for t in tasks]
        for split, tasks in layout.items()
    }


def write_layout(data_dir: Path, layout: Layout) -> None:
    for split in SPLITS:
        write_tasks(data_dir / f"{split}.parquet", layout[split])


def config_for(tmp_path: Path, tracking: bool = False) -> Config:
    return Config(
        data=DataConfig(
            out_dir=str(tmp_path / "data"),
            validation_dir=str(tmp_path / "reports"),
            sources=[SourceConfig(kind="reasoning_gym", name="basic_arithmetic")],
        ),
        tracking=TrackingConfig(
            enabled=tracking, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"
        ),
    )


def test_clean_set_passes_and_writes_both_reports(tmp_path: Path, clean: Layout) -> None:
    write_layout(tmp_path / "data", clean)

    result = run(config_for(tmp_path))

    assert result["success"], result["failed"]
    assert result["rows"] == sum(len(tasks) for tasks in clean.values())
    assert result["rows_by_file"] == {f"{s}.parquet": len(clean[s]) for s in SPLITS}
    on_disk = json.loads((tmp_path / "reports" / JSON_NAME).read_text())
    assert on_disk["success"] and on_disk["failed"] == []
    names = {e["name"] for e in on_disk["expectations"]}
    assert len(names) == result["expectations"]
    assert {"ids_unique", "splits_disjoint", "answer_passes_verifier"} <= names
    page = (tmp_path / "reports" / HTML_NAME).read_text()
    assert "<table>" in page and page.count('class="pass-row"') == len(names)
    assert "http" not in page  # self-contained: nothing fetched


@pytest.mark.slow
def test_failed_validation_leaves_reports_on_the_mlflow_run(
    tmp_path: Path, clean: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    for env in ("MLFLOW_TRACKING_URI", "RL2F_PARENT_RUN_ID"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("RL2F_PIPELINE_RUN_KEY", f"validate-test-{tmp_path.name}")
    _, bad_id = plant_stale_id(tmp_path / "data", clean)
    cfg = config_for(tmp_path, tracking=True)

    with pytest.raises(DataError, match=bad_id):
        STAGES["validate"].run(cfg)

    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    (stage_run,) = mlflow.search_runs(
        experiment_names=[cfg.tracking.experiment],
        filter_string="tags.`rl2f.stage` = 'validate'",
        output_format="list",
    )
    assert stage_run.info.status == "FAILED"
    logged = mlflow.artifacts.download_artifacts(
        run_id=stage_run.info.run_id, artifact_path="validation", dst_path=str(tmp_path / "dl")
    )
    report = json.loads((Path(logged) / JSON_NAME).read_text())
    assert report["failed"] == ["id_matches_content_hash"]
    assert (Path(logged) / HTML_NAME).exists()


# ---------------------------------------------------------------- planted defects
# Each returns (expectation expected to fail, id of the bad row) after writing the files.
Plant = Callable[[Path, Layout], tuple[str, str]]


def _frames(layout: Layout) -> dict[str, pd.DataFrame]:
    return {split: tasks_frame(tasks) for split, tasks in layout.items()}


def _write_frames(data_dir: Path, frames: dict[str, pd.DataFrame]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, frame in frames.items():
        frame.to_parquet(data_dir / f"{split}.parquet", index=False)


def _set_cell(data_dir: Path, layout: Layout, column: str, value: object) -> str:
    frames = _frames(layout)
    frames["train"][column] = frames["train"][column].astype(object)
    frames["train"].at[3, column] = value
    _write_frames(data_dir, frames)
    return layout["train"][3].id


def _replace_task(data_dir: Path, layout: Layout, split: str, bad: Task) -> str:
    layout = {**layout, split: [*layout[split][1:], bad]}
    write_layout(data_dir, layout)
    return bad.id


def _with(task: Task, **changes: object) -> Task:
    """A changed copy with its id re-derived from the new content, as a loader would."""
    return dataclasses.replace(task, id="", **changes)


def plant_null_prompt(d: Path, lay: Layout) -> tuple[str, str]:
    return "prompt_not_null", _set_cell(d, lay, "prompt", None)


def plant_null_answer(d: Path, lay: Layout) -> tuple[str, str]:
    return "answer_not_null", _set_cell(d, lay, "answer", None)


def plant_blank_prompt(d: Path, lay: Layout) -> tuple[str, str]:
    return "prompt_not_empty", _replace_task(d, lay, "train", _with(lay["train"][0], prompt=" \n "))


def plant_blank_answer(d: Path, lay: Layout) -> tuple[str, str]:
    return "answer_not_empty", _replace_task(d, lay, "train", _with(lay["train"][0], answer=""))


def plant_duplicate_id(d: Path, lay: Layout) -> tuple[str, str]:
    twin = lay["train"][2]
    write_layout(d, {**lay, "train": [*lay["train"], twin]})
    return "ids_unique", twin.id


def plant_stale_id(d: Path, lay: Layout) -> tuple[str, str]:
    task = dataclasses.replace(lay["train"][0], id="0123456789abcdef")
    return "id_matches_content_hash", _replace_task(d, lay, "train", task)


def plant_unknown_domain(d: Path, lay: Layout) -> tuple[str, str]:
    return "domain_known", _replace_task(d, lay, "train", _with(lay["train"][0], domain="biology"))


def plant_split_in_wrong_file(d: Path, lay: Layout) -> tuple[str, str]:
    task = dataclasses.replace(lay["train"][0], split="eval_id")
    return "split_matches_file", _replace_task(d, lay, "train", task)


def plant_prompt_in_two_splits(d: Path, lay: Layout) -> tuple[str, str]:
    # Same problem, spelled with other case and spacing, answered differently: a different id,
    # so only the split check can catch it.
    seen = lay["train"][0]
    copy = _with(
        seen, prompt="  " + seen.prompt.upper().replace(" ", "   "), answer="0", split="eval_id"
    )
    return "splits_disjoint", _replace_task(d, lay, "eval_id", copy)


def plant_wrong_code_solution(d: Path, lay: Layout) -> tuple[str, str]:
    code = next(t for t in lay["eval_ood"] if t.domain == "code")
    body = "    return None\n"
    program = code.answer[: len(code.answer) - len(code.solution or "")] + body
    broken = _with(code, answer=program, solution=body)
    return "answer_passes_verifier", _replace_task(d, lay, "eval_ood", broken)


def plant_swapped_puzzle_answer(d: Path, lay: Layout) -> tuple[str, str]:
    # The answer of another sudoku next to this puzzle's verifier config: the scorer says no.
    sudoku = next(t for t in lay["eval_ood"] if t.source == "reasoning_gym:mini_sudoku")
    other = _source("reasoning_gym", "mini_sudoku", 1, 99)[0]
    broken = _with(sudoku, answer=other.answer)
    return "answer_passes_verifier", _replace_task(d, lay, "eval_ood", broken)


def plant_unknown_verifier(d: Path, lay: Layout) -> tuple[str, str]:
    task = _with(lay["train"][0], verifier="no_such_verifier")
    return "answer_passes_verifier", _replace_task(d, lay, "train", task)


def plant_answer_cue_in_prompt(d: Path, lay: Layout) -> tuple[str, str]:
    task = lay["train"][0]
    leaky = _with(task, prompt=f"{task.prompt}\nHint: the answer is {task.answer}.")
    return "answer_not_in_prompt", _replace_task(d, lay, "train", leaky)


def plant_solved_grid_in_prompt(d: Path, lay: Layout) -> tuple[str, str]:
    sudoku = next(t for t in lay["eval_ood"] if t.source == "reasoning_gym:mini_sudoku")
    leaky = _with(sudoku, prompt=f"{sudoku.prompt}\nFor reference:\n{sudoku.answer}\n")
    return "answer_not_in_prompt", _replace_task(d, lay, "eval_ood", leaky)


def plant_bad_json(d: Path, lay: Layout) -> tuple[str, str]:
    return "verifier_config_is_json", _set_cell(d, lay, "verifier_config", '{"dataset": ')


def plant_json_list_metadata(d: Path, lay: Layout) -> tuple[str, str]:
    return "metadata_is_object", _set_cell(d, lay, "metadata", "[1, 2]")


def plant_integer_source(d: Path, lay: Layout) -> tuple[str, str]:
    # One file whose source column came out as integers (e.g. a CSV import gone wrong).
    frames = _frames({**lay, "eval_ood": lay["eval_ood"][:1]})
    frames["eval_ood"]["source"] = 7
    _write_frames(d, frames)
    return "source_is_string", lay["eval_ood"][0].id


PLANTS: list[Plant] = [
    plant_null_prompt,
    plant_null_answer,
    plant_blank_prompt,
    plant_blank_answer,
    plant_duplicate_id,
    plant_stale_id,
    plant_unknown_domain,
    plant_split_in_wrong_file,
    plant_prompt_in_two_splits,
    plant_wrong_code_solution,
    plant_swapped_puzzle_answer,
    plant_unknown_verifier,
    plant_answer_cue_in_prompt,
    plant_solved_grid_in_prompt,
    plant_bad_json,
    plant_json_list_metadata,
    plant_integer_source,
]


@pytest.mark.parametrize("plant", PLANTS, ids=lambda p: p.__name__.removeprefix("plant_"))
def test_planted_bad_row_fails_its_expectation(tmp_path: Path, clean: Layout, plant: Plant) -> None:
    expectation, bad_id = plant(tmp_path / "data", clean)

    with pytest.raises(DataError) as raised:
        run(config_for(tmp_path))

    message = str(raised.value)
    assert "\n" not in message
    assert expectation in message and bad_id in message
    report = json.loads((tmp_path / "reports" / JSON_NAME).read_text())
    outcome = next(e for e in report["expectations"] if e["name"] == expectation)
    assert not outcome["success"]
    assert bad_id in outcome["example_ids"]
    assert not report["success"] and expectation in report["failed"]
    page = (tmp_path / "reports" / HTML_NAME).read_text()
    assert 'class="fail-row"' in page and expectation in page


def test_verifier_failure_says_why(tmp_path: Path, clean: Layout) -> None:
    _, bad_id = plant_unknown_verifier(tmp_path / "data", clean)

    report = validate_task_files(tmp_path / "data")

    outcome = next(e for e in report.expectations if e.name == "answer_passes_verifier")
    assert "unknown verifier 'no_such_verifier'" in outcome.notes[bad_id]


def test_extra_column_fails_the_schema(tmp_path: Path, clean: Layout) -> None:
    frames = _frames(clean)
    frames["train"]["hint"] = "look closely"
    _write_frames(tmp_path / "data", frames)

    with pytest.raises(DataError, match=r"columns_match_schema .*hint"):
        run(config_for(tmp_path))


def test_empty_files_fail(tmp_path: Path) -> None:
    write_layout(tmp_path / "data", {split: [] for split in SPLITS})

    with pytest.raises(DataError, match=r"has_tasks"):
        run(config_for(tmp_path))


def test_missing_file_is_one_line_naming_it(tmp_path: Path, clean: Layout) -> None:
    write_layout(tmp_path / "data", clean)
    (tmp_path / "data" / "eval_ood.parquet").unlink()

    with pytest.raises(DataError, match=r"eval_ood\.parquet: task file not found"):
        run(config_for(tmp_path))


# ---------------------------------------------------------------- the leak rule
@pytest.mark.parametrize(
    ("prompt", "answer", "solution"),
    [
        ("Calculate 2 + 2.", "2", None),  # one character: coincidence, not a leak
        ("Calculate -( -( 0 + -3 ) ).", "-3", None),  # an operand equal to the answer
        ("Calculate 12 + 0.\nGive your final answer after 'Answer:'.", "12", None),
        ('If there is no path, simply write "infeasible".', "infeasible", None),
        ("Move up, down, left and right, e.g. right right down down", "right right down", None),
        ("Answer: the number of apples.", "12", None),
        ("```python\ndef f(x):\n    return x + 1\n```", "def f(x):\n    return x + 2", None),
    ],
)
def test_not_a_leak(prompt: str, answer: str, solution: str | None) -> None:
    assert not answer_leaks(prompt, answer, solution)


@pytest.mark.parametrize(
    ("prompt", "answer", "solution"),
    [
        ("Calculate 2 + 5.\nThe answer is 7.", "7", None),  # cue: leaks whatever the length
        ("Calculate 2 + 5. (solution: 7)", "7", None),
        ("Calculate 20 + 22.\n42", "42", None),  # a whole line
        ("Solve it:\n_ 2\n2 _\n\n1 2\n2 1\n", "1 2\n2 1", None),  # a solved grid
        ("Find a path.\n  RIGHT   down\n", "right down", None),
        (
            "Complete:\n```python\ndef f(x):\n    y = x * 2\n    return y + 1\n```",
            "def f(x):\n    y = x * 2\n    return y + 1\n",
            "    y = x * 2\n    return y + 1\n",
        ),
    ],
)
def test_leak(prompt: str, answer: str, solution: str | None) -> None:
    assert answer_leaks(prompt, answer, solution)


def test_real_sources_have_no_leaks(clean: Layout) -> None:
    tasks = [t for split in clean.values() for t in split]
    tasks += _source("humaneval", "openai_humaneval", 164, 0)
    tasks += _source("reasoning_gym", "countdown", 20, 4)
    assert [t.id for t in tasks if answer_leaks(t.prompt, t.answer, t.solution)] == []


# ---------------------------------------------------------------- CLI and speed
@pytest.mark.slow
def test_cli_exits_non_zero_with_one_line(tmp_path: Path, clean: Layout) -> None:
    plant_stale_id(tmp_path / "data", clean)
    params = {
        "data": {
            "out_dir": "data",
            "validation_dir": "reports",
            "sources": [{"kind": "reasoning_gym", "name": "basic_arithmetic"}],
        },
        "tracking": {"enabled": False},  # MLflow has its own tests; stderr must hold one line
    }
    (tmp_path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML

    done = subprocess.run(
        [sys.executable, "-m", "rl2f.cli", "validate"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("rl2f validate: error:") and "id_matches_content_hash" in lines[0]
    assert (tmp_path / "reports" / JSON_NAME).exists()
    assert (tmp_path / "reports" / HTML_NAME).exists()


@pytest.mark.slow
def test_a_few_hundred_tasks_validate_quickly(tmp_path: Path) -> None:
    tasks = _source("reasoning_gym", "basic_arithmetic", 300, 1, max_digits=2)
    unique = list({t.id: t for t in tasks}.values())
    layout = {
        "train": [dataclasses.replace(t, split="train") for t in unique[:240]],
        "eval_id": [dataclasses.replace(t, split="eval_id") for t in unique[240:]],
        "eval_ood": _source("humaneval", "openai_humaneval", 8, 6),
    }
    layout["eval_ood"] = [dataclasses.replace(t, split="eval_ood") for t in layout["eval_ood"]]
    # A prompt can repeat across the arithmetic splits; keep the set clean so timing is the test.
    train_prompts = {t.prompt for t in layout["train"]}
    layout["eval_id"] = [t for t in layout["eval_id"] if t.prompt not in train_prompts]
    write_layout(tmp_path / "data", layout)
    validate_task_files(tmp_path / "data")  # warm: GX import and first-use costs

    started = time.perf_counter()
    report = validate_task_files(tmp_path / "data")
    elapsed = time.perf_counter() - started

    assert report.success, report.summary_line()
    assert report.rows >= 280
    assert elapsed < 20, f"validating {report.rows} tasks took {elapsed:.1f} s"
