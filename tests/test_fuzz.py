"""Bad input, fuzzed: params files, profiles, ``-S`` overrides, task source files and task files
that are malformed, truncated, wrongly typed, huge or not UTF-8.

The contract (the project's reliability issue): a bad input ends in one line naming the file,
row or field, exit code 2, no traceback, and nothing already written is lost. The bulk runs the
functions the CLI calls in process (fast enough for hypothesis); a few representative inputs
go through the real ``rl2f`` executable in a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rl2f.cli import main
from rl2f.config import Config, ConfigError, SourceConfig, load_config
from rl2f.errors import UserError
from rl2f.tasks.io import read_tasks, write_tasks
from rl2f.tasks.schema import COLUMNS, Task
from rl2f.tasks.sources import files

REPO = Path(__file__).resolve().parents[1]
PARAMS = (REPO / "params.yaml").read_bytes()
CI_PROFILE = (REPO / "profiles" / "ci.yaml").read_bytes()
RL2F = Path(sys.executable).parent / "rl2f"

# Modest counts: the whole file runs in seconds. Each test writes into one folder it reuses,
# so the function-scoped tmp_path is fine across examples. The same examples every run, so CI
# is reproducible (a random draw once found non-UTF-8 Parquet strings only some runs met);
# RL2F_FUZZ_EXPLORE=1 draws fresh ones to look for new failures.
FUZZ = settings(
    max_examples=60,
    derandomize=not os.environ.get("RL2F_FUZZ_EXPLORE"),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_one_line(message: str, *names: str) -> None:
    assert message and "\n" not in message and "\r" not in message, repr(message)
    assert "Traceback" not in message
    assert len(message) < 1200, len(message)
    for name in names:
        assert name in message, (name, message)


# ---------------------------------------------------------------- input generators
def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """A valid file, damaged the ways files get damaged: cut short, bytes overwritten with
    random (often non-UTF-8) ones, a chunk of random bytes spliced in, or a line duplicated."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["truncate", "overwrite", "splice", "repeat"]))
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            if kind == "truncate":
                del data[at:]
            elif kind == "overwrite":
                junk = draw(st.binary(min_size=1, max_size=4))
                data[at : at + len(junk)] = junk
            elif kind == "splice":
                data[at:at] = draw(st.binary(max_size=40))
            else:
                lines = bytes(data).splitlines(keepends=True) or [b""]
                line = lines[min(at, len(lines) - 1)]
                data[at:at] = line * draw(st.integers(1, 50))
        return bytes(data)

    return mutate()


NON_UTF8 = st.sampled_from([b"\xff", b"\xfe\xff", b"\xc3", b"\xe9", b"\xed\xa0\x80", b"\x80"])
YAML_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=30),
)
YAML_TREES = st.recursive(
    YAML_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
# Deep nesting and huge values: what blows the stack or the terminal, not the parser.
HUGE = st.sampled_from(
    [
        b"[" * 20000 + b"]" * 20000,
        b"a: " + b"{b: " * 5000 + b"1" + b"}" * 5000,
        b"a: &x [*x]\ndata: &d {sources: [*d]}\n",
        b"data:\n  out_dir: " + b"x" * 2_000_000 + b"\n",
        b"data: {sources: [{kind: file, name: " + b"n" * 100_000 + b"}]}\n",
    ]
)
PARAMS_BYTES = st.one_of(
    mutations(PARAMS),
    st.binary(max_size=200),
    st.builds(
        lambda head, bad, tail: head + bad + tail,
        st.just(PARAMS[:400]),
        NON_UTF8,
        st.just(PARAMS[400:]),
    ),
    YAML_TREES.map(lambda tree: yaml.safe_dump(tree, allow_unicode=True).encode()),
    HUGE,
)


# ---------------------------------------------------------------- params, profiles, overrides
def test_params_not_utf8_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    """The known bug: a Latin-1 params file gave a UnicodeDecodeError traceback."""
    params = tmp_path / "params.yaml"
    params.write_bytes(PARAMS.replace(b"data/tasks", "données".encode("latin-1"), 1))
    with pytest.raises(ConfigError) as info:
        load_config(params)
    line = PARAMS[: PARAMS.index(b"data/tasks")].count(b"\n") + 1
    assert str(info.value) == f"{params} line {line}: not UTF-8 text (byte 0xe9)"


@FUZZ
@given(data=PARAMS_BYTES)
def test_fuzzed_params_file_loads_or_fails_in_one_line(tmp_path: Path, data: bytes) -> None:
    params = tmp_path / "params.yaml"
    params.write_bytes(data)
    try:
        cfg = load_config(params)
    except ConfigError as exc:
        assert_one_line(str(exc), str(params))
    else:
        assert isinstance(cfg, Config)


@FUZZ
@given(
    data=st.one_of(
        mutations(CI_PROFILE),
        YAML_TREES.map(lambda t: yaml.safe_dump(t).encode()),
        st.binary(max_size=100),
        HUGE,
    )
)
def test_fuzzed_profile_is_blamed_by_name(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "profiles").mkdir(exist_ok=True)
    (tmp_path / "params.yaml").write_bytes(PARAMS)
    profile = tmp_path / "profiles" / "ci.yaml"
    profile.write_bytes(data)
    try:
        load_config(tmp_path / "params.yaml", profile="ci")
    except ConfigError as exc:
        # The params file is valid on its own, so whatever is wrong came from the profile.
        assert_one_line(str(exc), str(profile))


@FUZZ
@given(name=st.text(min_size=1, max_size=40))
def test_fuzzed_profile_name_never_escapes_profiles_dir(tmp_path: Path, name: str) -> None:
    (tmp_path / "params.yaml").write_bytes(PARAMS)
    try:
        load_config(tmp_path / "params.yaml", profile=name)
    except ConfigError as exc:
        assert_one_line(str(exc), "profile")


@FUZZ
@given(
    overrides=st.lists(
        st.one_of(
            st.text(max_size=40),
            st.builds(
                lambda key, value: f"{key}={value}",
                st.sampled_from(
                    [
                        "train.steps",
                        "data.sources.0.size",
                        "data.sources.9",
                        "data.sources",
                        "eval.max_tasks",
                        "tracking",
                        "model.tiny.vocab_size",
                        "nope.x",
                        "data..x",
                        "data.sources.x.kind",
                        "train.steps.x",
                    ]
                ),
                st.one_of(st.text(max_size=20), st.just("[" * 3000), st.just("x" * 100_000)),
            ),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_fuzzed_overrides_load_or_fail_in_one_line(tmp_path: Path, overrides: list[str]) -> None:
    (tmp_path / "params.yaml").write_bytes(PARAMS)
    try:
        load_config(tmp_path / "params.yaml", overrides)
    except ConfigError as exc:
        assert_one_line(str(exc))


def test_errors_name_the_layer_that_introduced_them(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    params = tmp_path / "params.yaml"
    params.write_bytes(PARAMS)
    profile = tmp_path / "profiles" / "bad.yaml"
    # The profile's list replaces the params' list whole: its source lacks a name.
    profile.write_text("data: {sources: [{kind: file}]}\n")
    with pytest.raises(ConfigError, match=rf"^{profile}: data\.sources\.0\.name: Field required"):
        load_config(params, profile="bad")
    with pytest.raises(ConfigError, match=r"^override 'train.steps=x': train\.steps: "):
        load_config(params, ["train.steps=x"])
    params.write_bytes(PARAMS + b"\nbogus: 1\n")
    with pytest.raises(ConfigError, match=rf"^{params}: unknown key 'bogus'"):
        load_config(params, ["train.steps=3"], profile=None)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b"data: \x07\n"), "line 1: not valid YAML"),
        (lambda p: p.write_bytes(b"- a\n- b\n"), "top level must be a mapping"),
    ],
)
def test_unusable_params_paths(tmp_path: Path, setup, expected: str) -> None:  # noqa: ANN001
    params = tmp_path / "params.yaml"
    setup(params)
    with pytest.raises(ConfigError) as info:
        load_config(params)
    assert_one_line(str(info.value), str(params), expected)


# ---------------------------------------------------------------- task source files
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
RECORDS = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            field: JSON_VALUES
            for field in (
                "prompt",
                "answer",
                "solution",
                "id",
                "domain",
                "metadata",
                "verifier_config",
                "verifier",
            )
        },
    ),
    min_size=1,
    max_size=5,
)
GOOD_JSONL = b"".join(
    json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}).encode() + b"\n"
    for i in range(8)
)


def load_file(path: Path, **extra: object) -> list[Task]:
    return files.load(SourceConfig(kind="file", name=str(path), **extra))


def check_loaded_or_one_line(path: Path, **extra: object) -> None:
    try:
        tasks = load_file(path, **extra)
    except UserError as exc:
        assert_one_line(str(exc), str(path))
    else:
        # What loads must also survive the rest of the pipeline: ids, a Parquet round trip.
        out = path.parent / "out.parquet"
        write_tasks(out, tasks)
        assert [t.id for t in read_tasks(out)] == [t.id for t in tasks]


@FUZZ
@given(
    data=st.one_of(
        mutations(GOOD_JSONL),
        st.binary(max_size=200),
        RECORDS.map(lambda rs: b"\n".join(json.dumps(r).encode() for r in rs)),
        st.sampled_from(
            [
                b"[" * 100_000 + b"]" * 100_000 + b"\n",
                b'{"prompt": "x", "answer": "1", "metadata": "' + b"[" * 100_000 + b'"}\n',
                b'{"prompt": "x\\ud800", "answer": "1"}\n',
                b'{"prompt": "' + b"p" * 3_000_000 + b'", "answer": "1"}\n',
            ]
        ),
    )
)
def test_fuzzed_jsonl_loads_or_fails_in_one_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(data)
    check_loaded_or_one_line(path)


@FUZZ
@given(
    data=st.one_of(
        mutations(b"prompt,answer\n" + b"".join(b"%d + %d,%d\n" % (i, i, 2 * i) for i in range(8))),
        st.binary(max_size=200),
    )
)
def test_fuzzed_csv_loads_or_fails_in_one_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "tasks.csv"
    path.write_bytes(data)
    check_loaded_or_one_line(path)


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


GOOD_PARQUET = parquet_bytes(
    pd.DataFrame({"prompt": [f"{i} + {i}" for i in range(8)], "answer": [2 * i for i in range(8)]})
)
CELLS = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=6),
    st.lists(st.integers(), max_size=2),
)


@FUZZ
@given(
    data=st.one_of(
        mutations(GOOD_PARQUET),
        # Rows of (prompt, answer, metadata) cells of random types.
        st.lists(st.tuples(CELLS, CELLS, CELLS), min_size=1, max_size=4),
    )
)
def test_fuzzed_parquet_source_loads_or_fails_in_one_line(tmp_path: Path, data: object) -> None:
    path = tmp_path / "tasks.parquet"
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        columns = dict(zip(("prompt", "answer", "metadata"), zip(*data, strict=True), strict=True))
        try:
            path.write_bytes(parquet_bytes(pd.DataFrame({k: list(v) for k, v in columns.items()})))
        except Exception:  # noqa: BLE001  pyarrow cannot store this mix of types: nothing to read
            return
    check_loaded_or_one_line(path)


def test_source_file_errors_name_row_and_field(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(GOOD_JSONL + b'{"prompt": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(UserError, match=rf"^{path}: row 9: not UTF-8 text \(byte 0xe9"):
        load_file(path)
    path.write_bytes(b'{"prompt": {"nested": 1}, "answer": "1"}\n')
    with pytest.raises(UserError, match=r"row 1: field 'prompt' must be text \(got dict\)"):
        load_file(path)
    path.write_bytes(b'{"prompt": "x\\udc00", "answer": "1"}\n')
    with pytest.raises(UserError, match=r"row 1: field 'prompt' is not valid Unicode"):
        load_file(path)
    csv = tmp_path / "t.csv"
    csv.write_bytes(b"prompt,answer\n1+1,2\nna\xefve,3\n")
    with pytest.raises(UserError, match=rf"^{csv} line 3: not UTF-8 text \(byte 0xef\)"):
        load_file(csv)
    parquet = tmp_path / "t.parquet"
    parquet.write_bytes(parquet_bytes(pd.DataFrame({"prompt": [b"\xff"], "answer": ["1"]})))
    with pytest.raises(UserError, match=r"row 1: field 'prompt' is not UTF-8 text"):
        load_file(parquet)


# ---------------------------------------------------------------- task files (stage inputs)
def task_file_bytes() -> bytes:
    tasks = [
        Task(domain="math", source="t", prompt=f"{i} + 1", answer=str(i + 1), verifier="math")
        for i in range(4)
    ]
    buffer = io.BytesIO()
    pd.DataFrame([t.to_row() for t in tasks], columns=list(COLUMNS)).to_parquet(buffer)
    return buffer.getvalue()


TASK_FILE = task_file_bytes()


@FUZZ
@given(
    data=st.one_of(mutations(TASK_FILE), st.binary(max_size=100)),
    column=st.sampled_from(COLUMNS),
    value=CELLS,
)
def test_fuzzed_task_file_reads_or_fails_in_one_line(
    tmp_path: Path, data: bytes, column: str, value: object
) -> None:
    path = tmp_path / "train.parquet"
    path.write_bytes(data)
    try:
        read_tasks(path)
    except UserError as exc:
        assert_one_line(str(exc), str(path))
    # The same valid file with one column given a wrong type.
    frame = pd.read_parquet(io.BytesIO(TASK_FILE))
    frame[column] = [value] * len(frame)
    try:
        frame.to_parquet(path)
    except Exception:  # noqa: BLE001  not storable: nothing to read
        return
    try:
        read_tasks(path)
    except UserError as exc:
        assert_one_line(str(exc), str(path), "row 0")


# ---------------------------------------------------------------- the CLI, in process
def fuzz_workspace(root: Path) -> Path:
    """A workspace whose prepare reads one small JSONL file (fast; no generators)."""
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "profiles").mkdir(exist_ok=True)
    (root / "profiles" / "fuzz.yaml").write_text(
        "data:\n  sources:\n"
        "    - {kind: file, name: tasks.jsonl, size: 8, splits: [train, eval_id]}\n"
        "    - {kind: file, name: ood.jsonl, size: 2, splits: [eval_ood]}\n"
        "tracking: {enabled: false}\n"
    )
    (root / "tasks.jsonl").write_bytes(GOOD_JSONL)
    (root / "ood.jsonl").write_bytes(b'{"prompt": "1 + 2 + 3", "answer": "6"}\n' * 1)
    return root


def run_main(argv: list[str]) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, stderr.getvalue()


def error_line(stderr: str, stage: str) -> str:
    """The error from a failed run's stderr. Progress bars and log lines may come first; the
    error is the last line, whole: a message with a line break would not start the last line."""
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"rl2f {stage}: error: "), repr(stderr[-2000:])
    return last


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = fuzz_workspace(tmp_path)
    monkeypatch.chdir(root)
    monkeypatch.delenv("RL2F_PROFILE", raising=False)
    code, err = run_main(["prepare", "--profile", "fuzz"])
    assert code == 0, err
    assert (root / "data/tasks/train.parquet").exists()
    return root


@FUZZ
@given(data=st.one_of(mutations(GOOD_JSONL), st.binary(max_size=100)))
def test_failed_prepare_keeps_earlier_outputs(prepared: Path, data: bytes) -> None:
    before = snapshot(prepared / "data")
    (prepared / "tasks.jsonl").write_bytes(data)
    code, err = run_main(["prepare", "--profile", "fuzz"])
    if code != 0:
        assert code == 2
        assert_one_line(error_line(err, "prepare"), "tasks.jsonl")
        assert snapshot(prepared / "data") == before


@FUZZ
@given(data=PARAMS_BYTES)
def test_cli_on_fuzzed_params_exits_2_and_writes_nothing(prepared: Path, data: bytes) -> None:
    before = snapshot(prepared / "data")
    (prepared / "bad.yaml").write_bytes(data)
    # A config is loaded before any stage starts, so a bad one must leave every output as is.
    code, err = run_main(["validate", "--params", "bad.yaml", "-S", "tracking.enabled=false"])
    if code != 0:
        assert code == 2
        assert_one_line(error_line(err, "validate"))
    assert snapshot(prepared / "data") == before


def test_cli_reports_unwritable_output_path_in_one_line(prepared: Path) -> None:
    (prepared / "blocker").write_text("a file where a folder should be")
    code, err = run_main(["prepare", "--profile", "fuzz", "-S", "data.out_dir=blocker/tasks"])
    assert code == 2
    assert_one_line(error_line(err, "prepare"), "blocker")


# ---------------------------------------------------------------- the real executable
@pytest.mark.parametrize(
    ("name", "content", "args", "expected"),
    [
        ("params.yaml", PARAMS.replace(b"data/tasks", b"donn\xe9es", 1), [], "not UTF-8 text"),
        # Cut inside a flow list: `splits: [tr`
        ("params.yaml", PARAMS[: PARAMS.index(b"splits: [train") + 11], [], "params.yaml line"),
        ("tasks.jsonl", GOOD_JSONL + b'{"prompt": "x", "answer":', [], "tasks.jsonl: row 9"),
        ("tasks.jsonl", GOOD_JSONL, ["--profile", "../params"], "not a profile name"),
        ("tasks.jsonl", GOOD_JSONL, ["-S", "data.sources=\x01"], "override"),
    ],
)
def test_rl2f_executable_exits_2_with_one_line(
    tmp_path: Path, name: str, content: bytes, args: list[str], expected: str
) -> None:
    root = fuzz_workspace(tmp_path)
    outputs = root / "data" / "tasks"
    outputs.mkdir(parents=True)
    (outputs / "train.parquet").write_bytes(TASK_FILE)  # an earlier run's output
    (root / name).write_bytes(content)
    env = {k: v for k, v in os.environ.items() if k != "RL2F_PROFILE"}
    env["PYTHONPATH"] = str(REPO / "src")
    result = subprocess.run(
        [str(RL2F), "prepare", *(args or ["--profile", "fuzz"])],
        cwd=root,
        env=env,
        capture_output=True,
        timeout=300,
    )
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, stderr
    assert_one_line(error_line(stderr, "prepare"), expected)
    assert (outputs / "train.parquet").read_bytes() == TASK_FILE
