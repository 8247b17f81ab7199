"""The spread over seeds: read back from each run's metrics.json and comparisons.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl2f.cli import main
from rl2f.evaluation.seeds import markdown, summarise


def _run(folder: Path, base: float, rl2f: float, lo: float) -> Path:
    folder.mkdir(parents=True)
    cell = {"turn1_acc": base, "final_acc": base + 0.1}
    metrics = {
        "base": {"eval_id": {"teacher": cell}},
        "rl2f": {"eval_id": {"teacher": {"turn1_acc": base, "final_acc": rl2f}}},
    }
    row = {
        "split": "eval_id",
        "a": {"model": "rl2f", "mode": "teacher"},
        "b": {"model": "base", "mode": "teacher"},
    }
    comparisons = [
        {**row, "turn": 1, "diff": 0.0, "ci95": [-0.1, 0.1]},
        {**row, "turn": 6, "diff": rl2f - base - 0.1, "ci95": [lo, lo + 0.2]},
    ]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "comparisons.json").write_text(json.dumps(comparisons))
    return folder


def test_spread_over_seeds_of_accuracy_and_last_turn_differences(tmp_path: Path) -> None:
    runs = [
        _run(tmp_path / "0", 0.3, 0.6, 0.05),
        _run(tmp_path / "1", 0.3, 0.5, -0.02),
        _run(tmp_path / "2", 0.3, 0.7, 0.1),
    ]
    summary = summarise(runs)
    final = {(r["model"], r["mode"]): r["final"] for r in summary["accuracy"]}
    assert final[("rl2f", "teacher")]["mean"] == pytest.approx(0.6)
    assert final[("rl2f", "teacher")]["std"] == pytest.approx(0.1)
    assert (final[("rl2f", "teacher")]["min"], final[("rl2f", "teacher")]["max"]) == (0.5, 0.7)
    (difference,) = summary["differences"]
    assert difference["turn"] == 6, "the last turn's row, not turn 1's"
    assert difference["diff"]["mean"] == pytest.approx(0.2)
    assert difference["ci_above_zero"] == 2


def test_seeds_command_writes_the_summary_and_names_a_missing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = _run(tmp_path / "0", 0.3, 0.6, 0.05)
    assert main(["seeds", str(run), "--out", str(tmp_path)]) == 0
    assert "rl2f/teacher | base/teacher" in (tmp_path / "seeds.md").read_text()
    assert json.loads((tmp_path / "seeds.json").read_text())["runs"] == [str(run)]
    assert main(["seeds", str(run), str(tmp_path / "9"), "--out", str(tmp_path)]) == 2
    assert "9/metrics.json: not found" in capsys.readouterr().err


def test_a_corrupt_metrics_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = _run(tmp_path / "0", 0.3, 0.6, 0.05)
    metrics = next(run.rglob("metrics.json"))
    metrics.write_bytes(b'{"base": \xe9}')
    assert main(["seeds", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("metrics.json: not UTF-8 text (byte 0xe9)")
    assert "Traceback" not in "\n".join(err)


def test_spread_over_seeds_of_how_models_follow_the_critique(tmp_path: Path) -> None:
    """rl2f's toward rate gains 0.10 / 0.04 from a critique in the two runs, the base's 0.02 /
    0.02; a model without a retry cell, and files from before the toward rate, give no row."""

    def run(folder: Path, rl2f_critique: float) -> Path:
        folder.mkdir(parents=True)
        cell = {"turn1_acc": 0.3, "final_acc": 0.4}
        metrics = {
            "base": {"eval_id": {"teacher": {**cell, "toward_rate": 0.58},
                                 "retry": {**cell, "toward_rate": 0.56}}},
            "rl2f": {"eval_id": {"teacher": {**cell, "toward_rate": rl2f_critique},
                                 "retry": {**cell, "toward_rate": 0.55}}},
            "rl2f_critic": {"eval_id": {"self": {**cell, "toward_rate": 0.6}}},
            "old": {"eval_id": {"teacher": cell, "retry": cell}},
        }  # fmt: skip
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "comparisons.json").write_text("[]")
        return folder

    summary = summarise([run(tmp_path / "0", 0.65), run(tmp_path / "1", 0.59)])
    rows = {row["model"]: row for row in summary["feedback_use"]}
    assert set(rows) == {"base", "rl2f"}
    assert rows["base"]["gap"]["mean"] == pytest.approx(0.02)
    assert rows["base"]["minus_base"] is None
    assert rows["rl2f"]["gap"]["mean"] == pytest.approx(0.07)
    assert (rows["rl2f"]["gap"]["min"], rows["rl2f"]["gap"]["max"]) == pytest.approx((0.04, 0.1))
    assert rows["rl2f"]["minus_base"]["mean"] == pytest.approx(0.05)
    assert "| rl2f | eval_id | 0.070 ± 0.042 [0.040, 0.100] | 0.050 ± 0.042" in markdown(summary)
