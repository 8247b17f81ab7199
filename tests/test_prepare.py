"""Split assignment (de-duplication, disjointness, stability) and the ``prepare`` stage, both
in-process and as the real ``rl2f prepare`` command."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rl2f.config import Config, DataConfig, SourceConfig, load_config
from rl2f.errors import DataError, UserError
from rl2f.stages import prepare
from rl2f.tasks.io import read_tasks
from rl2f.tasks.schema import SPLITS, Task, normalize_prompt
from rl2f.tasks.sources import load_source
from rl2f.tasks.splits import assign_splits, eval_bucket

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_DIST = ["train", "eval_id"]


def make_task(prompt: str, answer: str = "1", source: str = "test") -> Task:
    return Task(domain="math", source=source, prompt=prompt, answer=answer, verifier="math")


def src(name: str, splits: list[str]) -> SourceConfig:
    return SourceConfig(kind="file", name=name, splits=splits)


def split_of(result, prompt: str) -> list[str]:
    key = normalize_prompt(prompt)
    return [
        s for s, tasks in result.splits.items() for t in tasks if normalize_prompt(t.prompt) == key
    ]


# ---------------------------------------------------------------- splits
def test_duplicates_by_normalised_prompt_are_dropped_and_counted(caplog):
    tasks = [make_task("What is 2+2?"), make_task("  what IS   2+2? "), make_task("What is 3+3?")]
    with caplog.at_level("INFO", logger="rl2f.tasks.splits"):
        result = assign_splits([(src("a", ["train"]), tasks)], eval_fraction=0.2, seed=0)
    assert [t.prompt for t in result.splits["train"]] == ["What is 2+2?", "What is 3+3?"]
    assert result.duplicates_dropped == 1 and result.cross_split_dropped == 0
    assert "dropped 1 duplicate prompt(s)" in caplog.text


def test_an_eval_prompt_is_removed_from_train_whatever_the_order():
    shared = "Solve the maze."
    for order in (
        [("train", ["train"]), ("ood", ["eval_ood"])],
        [("ood", ["eval_ood"]), ("train", ["train"])],
    ):
        loaded = [(src(name, splits), [make_task(shared, source=name)]) for name, splits in order]
        result = assign_splits(loaded, eval_fraction=0.5, seed=0)
        assert split_of(result, shared) == ["eval_ood"]
        assert result.splits["eval_ood"][0].source == "ood"
        assert result.cross_split_dropped == 1


def test_eval_fraction_is_respected_and_the_bucket_is_stable():
    prompts = [f"Compute {i} * 7." for i in range(3000)]
    result = assign_splits([(src("a", IN_DIST), [make_task(p) for p in prompts])], 0.2, seed=0)
    share = len(result.splits["eval_id"]) / len(prompts)
    assert 0.17 < share < 0.23
    # A pure function of the text: pinned so a change that would reshuffle splits shows up.
    assert eval_bucket("compute 1 * 7.", 0) == pytest.approx(0.8585933680673837, abs=1e-15)
    assert eval_bucket("compute 1 * 7.", 0) != eval_bucket("compute 1 * 7.", 1)
    # The salt reshuffles which prompts are held out.
    other = assign_splits([(src("a", IN_DIST), [make_task(p) for p in prompts])], 0.2, seed=1)
    assert {t.id for t in other.splits["eval_id"]} != {t.id for t in result.splits["eval_id"]}


@pytest.mark.parametrize("seed", range(40))
def test_splits_are_disjoint_complete_and_order_independent(seed: int):
    """Property check over random sources with heavy overlap and surface variants."""
    rng = random.Random(seed)
    pool = [f"Problem {i}: what is {i} + {i}?" for i in range(60)]

    def variant(prompt: str) -> str:
        return rng.choice([prompt, prompt.upper(), f"  {prompt}\n", prompt.replace(" ", "  ")])

    split_sets = [["train"], ["eval_id"], ["eval_ood"], IN_DIST]
    loaded = [
        (
            src(f"s{i}", rng.choice(split_sets)),
            [make_task(variant(rng.choice(pool))) for _ in range(40)],
        )
        for i in range(rng.randint(1, 5))
    ]
    fraction = rng.choice([0.0, 0.2, 0.5, 0.9])
    result = assign_splits(loaded, fraction, seed=seed)

    seen: dict[str, str] = {}
    for split, tasks in result.splits.items():
        for task in tasks:
            key = normalize_prompt(task.prompt)
            assert key not in seen, f"{key!r} in {seen[key]} and {split}"
            seen[key] = split
            assert task.split == split
    wanted = {normalize_prompt(t.prompt) for _, tasks in loaded for t in tasks}
    assert set(seen) == wanted
    total = sum(len(tasks) for _, tasks in loaded)
    assert len(seen) + result.duplicates_dropped + result.cross_split_dropped == total

    shuffled = [(s, rng.sample(list(tasks), len(tasks))) for s, tasks in loaded]
    rng.shuffle(shuffled)
    again = assign_splits(shuffled, fraction, seed=seed)
    assert {normalize_prompt(t.prompt): s for s, ts in again.splits.items() for t in ts} == seen


def test_invalid_split_sets_and_colliding_file_ids_are_rejected():
    with pytest.raises(UserError, match=r"source file:x: splits \['eval_id', 'eval_ood'\]"):
        assign_splits([(src("x", ["eval_id", "eval_ood"]), [make_task("a")])], 0.2, 0)
    twins = [
        Task(id="q1", domain="math", source="f", prompt="a?", answer="1", verifier="math"),
        Task(id="q1", domain="math", source="f", prompt="b?", answer="2", verifier="math"),
    ]
    with pytest.raises(DataError, match="task id 'q1' names two different prompts"):
        assign_splits([(src("f", ["train"]), twins)], 0.2, 0)


def test_ids_are_stable_across_two_loads_of_every_generated_source():
    sources = [
        SourceConfig(kind="reasoning_gym", name="basic_arithmetic", size=20, seed=1),
        SourceConfig(kind="reasoning_gym", name="shortest_path", size=3, seed=5),
        SourceConfig(kind="humaneval", name="openai_humaneval", size=3, seed=6),
    ]
    for source in sources:
        first, second = load_source(source), load_source(source)
        assert [t.id for t in first] == [t.id for t in second]
        assert all(len(t.id) == 16 for t in first)


# ---------------------------------------------------------------- the stage
def write_rows(path: Path, prompts: list[str]) -> Path:
    rows = [{"q": p, "a": str(i)} for i, p in enumerate(prompts)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def file_config(tmp_path: Path, out: str) -> Config:
    train = write_rows(
        tmp_path / "train.jsonl", [f"Add {i} and 3." for i in range(30)] + ["Shared?"]
    )
    ood = write_rows(tmp_path / "ood.jsonl", ["Shared?", "Reverse 'ab'.", "REVERSE 'ab'."])
    columns = {"prompt": "q", "answer": "a"}
    return Config(
        data=DataConfig(
            out_dir=str(tmp_path / out),
            sources=[
                SourceConfig(kind="file", name=str(train), columns=columns, splits=IN_DIST),
                SourceConfig(
                    kind="file",
                    name=str(ood),
                    columns=columns,
                    domain="puzzle",
                    splits=["eval_ood"],
                ),
            ],
        )
    )


def test_prepare_writes_splits_and_summary_and_is_reproducible(tmp_path: Path, capsys):
    summary = prepare.run(file_config(tmp_path, "out1"))
    table = capsys.readouterr().out
    out = tmp_path / "out1"

    tasks = {split: read_tasks(out / f"{split}.parquet") for split in SPLITS}
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["totals"] == {split: len(tasks[split]) for split in SPLITS}
    assert summary["totals"]["eval_ood"] == 2  # the repeat "REVERSE 'ab'." is dropped
    assert summary["duplicates_dropped"] == 1 and summary["cross_split_dropped"] == 1
    assert summary["counts"]["eval_ood"] == {"math": 0, "puzzle": 2}
    assert summary["counts"]["train"]["math"] + summary["counts"]["eval_id"]["math"] == 30
    assert "Shared?" not in {t.prompt for t in tasks["train"] + tasks["eval_id"]}
    assert "domain" in table and "eval_ood" in table and "total" in table

    prepare.run(file_config(tmp_path, "out2"))
    for split in SPLITS:
        first = pd.read_parquet(out / f"{split}.parquet")
        second = pd.read_parquet(tmp_path / "out2" / f"{split}.parquet")
        pd.testing.assert_frame_equal(first, second)


def run_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rl2f.cli", "prepare", *args]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO_ROOT / "profiles", tmp_path / "profiles")
    return tmp_path


def test_rl2f_prepare_ci_profile_writes_three_task_files(project_dir: Path):
    out = project_dir / "tasks"
    done = run_cli(project_dir, "--profile", "ci", "-S", f"data.out_dir={out}")
    assert done.returncode == 0, done.stderr

    frames = {split: pd.read_parquet(out / f"{split}.parquet") for split in SPLITS}
    assert set(frames["train"]["domain"]) == {"math"}
    assert set(frames["eval_id"]["domain"]) == {"math"}
    assert set(frames["eval_ood"]["domain"]) == {"puzzle", "maze", "code"}
    assert all((frames[s]["split"] == s).all() for s in SPLITS)
    prompts = [set(frames[s]["prompt"].map(normalize_prompt)) for s in SPLITS]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"] == {s: len(frames[s]) for s in SPLITS}
    assert "eval_ood" in done.stdout and "maze" in done.stdout

    # Ids are content hashes: this process computes the same ones as the CLI did.
    cfg = load_config(project_dir / "params.yaml", profile="ci")
    ood = frames["eval_ood"]
    for source in cfg.data.sources:
        if source.kind == "humaneval" or source.name == "shortest_path":
            expected = {task.id for task in load_source(source)}
            assert set(ood.loc[ood["source"].str.endswith(source.name), "id"]) == expected


def test_rl2f_prepare_bad_file_is_a_one_line_error(project_dir: Path):
    bad = project_dir / "bad.csv"
    pd.DataFrame({"prompt": ["1 + 1?", "2 + 2?"], "answer": ["2", ""]}).to_csv(bad, index=False)
    (project_dir / "params.yaml").write_text(
        f"data:\n  out_dir: out\n  sources:\n    - {{kind: file, name: {bad}}}\n"
    )
    done = run_cli(project_dir)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"rl2f prepare: error: {bad}: row 2: field 'answer' (column 'answer') is empty"
    )
    assert not (project_dir / "out").exists()
