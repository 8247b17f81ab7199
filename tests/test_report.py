"""The report stage on hand-made evaluation outputs, checked as text and as a page rendered by a
real headless Chromium."""

from __future__ import annotations

import dataclasses
import html
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_metrics import episode, feedback, metrics_tree, probe_of, student

from rl2f.config import load_config
from rl2f.episodes import Episode
from rl2f.evaluation.comparisons import comparison_rows, excludes_zero, feedback_use_rows
from rl2f.evaluation.episode_files import read_model_cells, write_cell
from rl2f.evaluation.examples import Example, choose_examples
from rl2f.evaluation.metrics import cell_metrics
from rl2f.evaluation.schema import validate_metrics
from rl2f.report import build_report, html_episode, md_episode, plasticity_table
from rl2f.stages import report as report_stage

REPO = Path(__file__).resolve().parents[1]
MODELS = {"base": 0.25, "single_turn": 0.35, "rl2f": 0.5, "rl2f_critic": 0.55}
SPLITS = {"eval_id": 3, "ood_maze": 2}
MODES = ("teacher", "self", "retry")
FIX_TASK = "task-fix"


def _episodes(model: str, split: str, mode: str, turns: int) -> list[Episode]:
    """Eight tasks whose outcomes depend on the model's skill; plus the headline pair (base
    repeats 5 on FIX_TASK, rl2f answers 7 after the critique) and a critique the leak guard
    rejected."""
    rng = random.Random(f"{model}/{split}/{mode}")
    skill = MODELS[model] + (0.1 if mode == "teacher" else 0.0)
    episodes = []
    for index in range(8):
        attempts = []
        for turn in range(turns):
            correct = rng.random() < skill * (1 + turn * 0.4)
            error = 0 if correct else turn + 1  # wrong answers drift away from 10 + index
            attempts.append(student(str(10 + index + error), correct))
            attempts[-1].diagnostics = {"numeric_error": float(error)}
            if correct:
                break
        critiques = [feedback() for _ in attempts[1:]]
        episodes.append(
            episode(
                f"{split}-{index}",
                attempts,
                policy=model,
                critiques=critiques,
                teacher={"teacher": "oracle"}.get(mode, mode),
            )
        )
    if split == "eval_id" and mode == "teacher" and model == "rl2f":
        leaked = feedback("Your answer is incorrect. It is off by less than ten.", leaked=1)
        attempts = [student("12", False), student("13", True)]
        episodes.append(episode("task-leak", attempts, policy=model, critiques=[leaked]))
    if split == "eval_id" and mode == "teacher" and model in ("base", "rl2f"):
        if model == "base":
            attempts = [student("5", False) for _ in range(turns)]
        else:
            attempts = [student("5", False), student("7", True)]
        episodes.append(
            episode(
                FIX_TASK,
                attempts,
                policy=model,
                prompt="Calculate 3 + 4.\nGive your final answer after 'Answer:'.",
            )
        )
    return episodes


def write_evaluation(root: Path, models: dict[str, float] = MODELS) -> dict:
    """Episodes and metrics.json as `rl2f evaluate` lays them out, from hand-made episodes."""
    metrics: dict = {}
    for model in models:
        for split, turns in SPLITS.items():
            for mode in MODES:
                episodes = _episodes(model, split, mode, turns)
                probes = [
                    probe_of(e, "99", correct=(model.startswith("rl2f") and i % 2 == 0))
                    for i, e in enumerate(x for x in episodes if x.solved_at == 1)
                ]
                write_cell(root / "data/episodes/eval", model, split, mode, episodes, probes)
                metrics.setdefault(model, {}).setdefault(split, {})[mode] = cell_metrics(
                    episodes,
                    max_turns=turns,
                    bootstrap_samples=200,
                    seed=0,
                    probes=probes,
                    leak_checked=mode == "teacher",
                )
    validate_metrics(metrics)
    (root / "reports").mkdir(parents=True, exist_ok=True)
    (root / "reports/metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


# What the red_team stage writes: an oracle that held, and an LLM teacher that tried.
ATTACKS = {
    "eval_id": {
        "teacher": {
            "tasks": 3, "critiques": 12.0, "attempted": 0.0, "delivered": 0.0,
            "leak_rate_by_check": {"answer_string": 0.0, "written_number": 0.0},
        },
        "llm": {
            "tasks": 3, "critiques": 12.0, "attempted": 0.75, "delivered": 0.0,
            "leak_rate_by_check": {"answer_string": 0.25, "written_number": 0.5},
        },
    }
}  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One evaluation, reported once by the real stage; the tests read its outputs."""
    root = tmp_path_factory.mktemp("report")
    write_evaluation(root)
    (root / "reports/leak_under_attack.json").write_text(json.dumps(ATTACKS))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        cfg = load_config(REPO / "params.yaml", ["tracking.enabled=false"])
        summary = report_stage.run(cfg)
    (root / "summary.json").write_text(json.dumps(summary))
    return root


# ---------------------------------------------------------------- content
def test_report_stage_writes_html_markdown_and_figures(workspace: Path) -> None:
    summary = json.loads((workspace / "summary.json").read_text())
    assert summary["fix_example_found"] is True
    page = (workspace / "reports/report.html").read_text()
    markdown = (workspace / "reports/report.md").read_text()
    figures = sorted(p.name for p in (workspace / "reports/figures").iterdir())
    assert figures == [
        "accuracy_eval_id.png",
        "accuracy_ood_maze.png",
        "plasticity.png",
        "sycophancy.png",
    ]
    for name in figures:
        assert (workspace / "reports/figures" / name).read_bytes()[:4] == b"\x89PNG"
        assert f"(figures/{name})" in markdown

    # Self-contained: inline SVG figures, no script, nothing fetched from anywhere.
    assert page.count("<svg") == len(figures)
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "@import" not in page and "url(" not in page.replace("url(#", "")

    # The headline example: base repeats, RL2F fixes, on the same task.
    assert "RL2F fixes what the base model repeated" in page
    assert "repeats the previous wrong answer" in page
    assert "Calculate 3 + 4." in page and "solved at turn 2" in page
    assert "leak guard: rejected 1 critique(s)" in page
    assert "Probe: a wrong critique of a correct answer" in page


def test_report_shows_the_leak_rates_under_attack(workspace: Path) -> None:
    page = (workspace / "reports/report.html").read_text()
    markdown = (workspace / "reports/report.md").read_text()
    llm_row = "| eval_id | llm | 3 | 12 | 0.75 | 0.00 | answer string 25.0%, written number 50.0% |"
    assert llm_row in markdown
    assert "| eval_id | teacher | 3 | 12 | 0.00 | 0.00 | - |" in markdown
    rows = re.findall(r"<tr>(.*?)</tr>", page.split('id="attacks"', 1)[1].split("</table>")[0])
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows[1:]]  # after the headers
    assert cells == [
        ["eval_id", "teacher", "3", "12", "0.00", "0.00", "-"],
        ["eval_id", "llm", "3", "12", "0.75", "0.00", "answer string 25.0%, written number 50.0%"],
    ]


def test_report_stage_writes_paired_differences_and_shows_them(workspace: Path) -> None:
    """comparisons.json holds the paired differences recomputed from the stored episodes, and
    both reports show each pair at turn 1 and at the last turn, bold when resolved."""
    rows = json.loads((workspace / "reports/comparisons.json").read_text())
    summary = json.loads((workspace / "summary.json").read_text())
    assert summary["comparisons"] == len(rows) > 0
    cells = {
        (cell.model, cell.split, cell.mode): cell.episodes
        for model in MODELS
        for cell in read_model_cells(workspace / "data/episodes/eval", model)
    }
    cfg = load_config(REPO / "params.yaml")
    assert rows == comparison_rows(
        cells, samples=cfg.eval.bootstrap_samples, seed=cfg.eval.seed, max_turns=SPLITS
    )
    pairs = {
        (r["split"], r["a"]["model"], r["a"]["mode"], r["b"]["model"], r["b"]["mode"]) for r in rows
    }
    for split in SPLITS:
        for b in (("base", "teacher"), ("single_turn", "teacher"), ("rl2f", "retry")):
            assert (split, "rl2f", "teacher", *b) in pairs
        assert {r["turn"] for r in rows if r["split"] == split} == set(range(1, SPLITS[split] + 1))

    page = (workspace / "reports/report.html").read_text()
    markdown = (workspace / "reports/report.md").read_text()
    assert '<section id="differences"><h2>Paired differences</h2>' in page
    table = page.split('<table id="differences-eval_id"', 1)[1].split("</table>", 1)[0]
    assert "<th>turn 1</th><th>turn 3</th>" in table
    section = markdown.split("## Paired differences", 1)[1].split("## Accuracy by turn", 1)[0]
    assert "### eval_id" in section and "### ood_maze" in section
    for row in rows:
        if row["split"] != "eval_id" or row["turn"] not in (1, 3):
            continue
        value = f"{row['diff']:+.3f}".replace("-0.000", "+0.000")
        resolved = excludes_zero(row["ci95"])
        shown = f"<strong>{value}</strong>" if resolved else value
        label = f"{row['a']['model']} · {row['a']['mode']}"
        assert label in table and shown in table
        assert (f"**{value}**" if resolved else value) in section
    assert "Bold: the interval excludes 0." in section


def test_report_stage_shows_and_summarises_how_models_follow_the_critique(
    workspace: Path,
) -> None:
    summary = json.loads((workspace / "summary.json").read_text())
    cells = {
        (cell.model, cell.split, cell.mode): cell.episodes
        for model in MODELS
        for cell in read_model_cells(workspace / "data/episodes/eval", model)
    }
    rows = feedback_use_rows(cells, samples=200, seed=1234)
    assert {(row["split"], row["model"]) for row in rows} == {
        (split, model) for split in SPLITS for model in MODELS
    }
    for row in rows:
        entry = summary["feedback_use"][row["split"]][row["model"]]
        assert entry["critique_minus_retry"] == pytest.approx(row["diff"])
        assert ("minus_base" in entry) == (row["model"] != "base")
    markdown = (workspace / "reports/report.md").read_text()
    section = markdown.split("### Following the critique's direction", 1)[1].split("\n## ", 1)[0]
    assert len([line for line in section.splitlines() if line.startswith("| ")]) == len(rows) + 1


def test_results_table_bolds_the_best_model_per_column(workspace: Path) -> None:
    metrics = json.loads((workspace / "reports/metrics.json").read_text())
    markdown = (workspace / "reports/report.md").read_text()
    table = markdown.split("## Results", 1)[1].split("###", 1)[0]
    header, _, *rows = [line for line in table.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    assert columns[0] == "eval_id · teacher (T=3)"
    cells = {
        row.split("|")[1].strip(): [c.strip() for c in row.strip("|").split("|")[1:]]
        for row in rows
    }
    best = max(metrics, key=lambda m: metrics[m]["eval_id"]["teacher"]["final_acc"])
    value = metrics[best]["eval_id"]["teacher"]["final_acc"]
    low, high = metrics[best]["eval_id"]["teacher"]["ci95_by_turn"][-1]
    assert cells[best][0] == f"**{value:.3f}** [{low:.2f}, {high:.2f}]"
    for model in metrics:
        if metrics[model]["eval_id"]["teacher"]["final_acc"] < value:
            assert not cells[model][0].startswith("**")


def test_plasticity_table_shows_the_newer_rates_and_tolerates_older_metrics_files() -> None:
    metrics = metrics_tree()
    metrics["base"]["eval_id"]["teacher"].update(
        closer_rate=0.4, toward_rate=0.6, on_question_rate=0.05
    )
    for key in ("closer_rate", "toward_rate", "on_question_rate"):  # before they were measured
        metrics["base"]["eval_id"]["retry"].pop(key, None)
    validate_metrics(metrics)
    table = plasticity_table(metrics)
    columns = [table.headers.index(name) for name in ("on the question", "closer", "toward")]
    rates = {row[2]: tuple(row[column] for column in columns) for row in table.rows}
    assert rates == {"teacher": (0.05, 0.4, 0.6), "retry": (None, None, None)}


def test_report_shows_how_often_each_model_follows_the_critique() -> None:
    rows = [
        {
            "split": "eval_id", "model": "base", "critique": 0.42, "retry": 0.29, "diff": 0.13,
            "ci95": [0.1, 0.16], "minus_base": None, "n": 296,
        },
        {
            "split": "eval_id", "model": "rl2f", "critique": 0.401, "retry": 0.286,
            "diff": 0.115, "ci95": [0.085, 0.145],
            "minus_base": {"diff": -0.015, "ci95": [-0.05, 0.02]}, "n": 296,
        },
    ]  # fmt: skip
    markdown = build_report(metrics_tree(), {}, feedback_use=rows).markdown
    section = markdown.split("### Following the critique's direction", 1)[1].split("##", 1)[0]
    assert "| rl2f | eval_id | 0.40 | 0.29 | +0.115 \\[+0.085, +0.145\\] | -0.015" in section
    assert "| base | eval_id | 0.42 | 0.29 | +0.130 \\[+0.100, +0.160\\] | n/a |" in section
    without = build_report(metrics_tree(), {}).markdown
    assert "Following the critique's direction" not in without


def test_report_says_so_when_no_fix_example_exists(tmp_path: Path) -> None:
    write_evaluation(tmp_path, {"base": 0.25, "single_turn": 0.35})
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    cells = {m: read_model_cells(tmp_path / "data/episodes/eval", m) for m in metrics}
    examples = choose_examples(cells)
    assert examples.fix is None and "'rl2f'" in examples.fix_missing_reason
    report = build_report(metrics, cells)
    assert not report.fix_example
    assert 'id="no-fix-example"' in report.html and "Not found:" in report.markdown
    # Without the red_team stage's file the report says the attack was not measured.
    assert 'id="no-attacks"' in report.html
    assert "Not measured: the red_team stage did not run" in report.markdown


def test_untrusted_text_is_escaped() -> None:
    hostile = "<script>alert(1)</script> | **bold**\n~~~~\nafter the fence"
    attempts = [student("<b>5</b>", False, text=hostile), student("7", True)]
    example = Example("t", "why", "rl2f", "eval_id", "teacher", episode("x", attempts))
    page = html_episode(example)
    assert "<script>" not in page and "<b>5</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;5&lt;/b&gt;" in page
    markdown = md_episode(example)
    fence = re.search(r"^(~{5,})text$", markdown, re.M)
    assert fence, "the fence must be longer than the ~~~~ inside the text"
    block = markdown.split(fence.group(0), 1)[1]
    assert block.index("after the fence") < block.index(fence.group(1))
    assert "\\<b\\>5\\</b\\>" in markdown  # the extracted answer, escaped in a note


def html_headings(page: str) -> list[tuple[int, str]]:
    return [
        (int(level), html.unescape(re.sub(r"<[^>]+>", "", text)))
        for level, text in re.findall(r"<h([1-6])[^>]*>(.*?)</h\1>", page, re.S)
    ]


def markdown_headings(markdown: str) -> list[tuple[int, str]]:
    """Headings outside the fenced conversations (a '# ' line in a student's code is none)."""
    found, fence = [], None
    for line in markdown.splitlines():
        if fence:
            fence = None if line == fence else fence
        elif opened := re.fullmatch(r"(~{4,})text", line):
            fence = opened.group(1)
        elif heading := re.fullmatch(r"(#{1,6}) (.*)", line):
            found.append((len(heading.group(1)), re.sub(r"\\(.)", r"\1", heading.group(2))))
    return found


def test_html_and_markdown_show_the_same_sections(workspace: Path) -> None:
    """Both reports come from one set of data and section texts: the same headings, at the same
    levels, in the same order; the HTML nav links every section, in that order."""
    page = (workspace / "reports/report.html").read_text()
    markdown = (workspace / "reports/report.md").read_text()
    headings = html_headings(page)
    assert headings == markdown_headings(markdown)
    sections = [text for level, text in headings if level == 2]
    assert sections == [
        "Results",
        "Paired differences",
        "Accuracy by turn",
        "Plasticity",
        "Sycophancy",
        "Leaks",
        "Example episodes",
    ]
    assert (3, "Turn-1 accuracy") in headings and (3, "ood_maze") in headings
    assert sum(level == 4 for level, _ in headings) >= 3  # the example conversations
    nav = re.search(r"<nav>(.*?)</nav>", page, re.S).group(1)
    assert [html.unescape(t) for t in re.findall(r">([^<]+)</a>", nav)] == sections
    assert re.findall(r'href="#([^"]+)"', nav) == re.findall(r'<section id="([^"]+)"', page)


HOSTILE_MODEL = "<script>alert(1)</script>|rl2f"


def test_a_hostile_model_name_is_escaped(workspace: Path) -> None:
    """A model name is data (a directory under data/episodes/eval): in the HTML it is text,
    never markup; in the Markdown its pipe cannot split a table row."""

    def rename(model: str) -> str:
        return HOSTILE_MODEL if model == "rl2f_critic" else model

    metrics = json.loads((workspace / "reports/metrics.json").read_text())
    cells = {
        rename(model): [
            dataclasses.replace(cell, model=rename(cell.model))
            for cell in read_model_cells(workspace / "data/episodes/eval", model)
        ]
        for model in metrics
    }
    metrics = {rename(model): splits for model, splits in metrics.items()}
    rows = json.loads((workspace / "reports/comparisons.json").read_text())
    for row in rows:
        for side in (row["a"], row["b"]):
            side["model"] = rename(side["model"])
    report = build_report(metrics, cells, rows)

    assert "<script" not in report.html
    escaped = html.escape(HOSTILE_MODEL)
    results = report.html.split('id="results-table"', 1)[1].split("</table>", 1)[0]
    assert f'<td class="name">{escaped}</td>' in results
    differences = report.html.split('id="differences-eval_id"', 1)[1].split("</table>", 1)[0]
    assert f'<td class="name">{escaped} · self</td>' in differences
    assert f"Models: base, single_turn, rl2f, {escaped}." in report.html

    shown = r"\<script\>alert(1)\</script\>\|rl2f"
    table = report.markdown.split("## Results", 1)[1].split("###", 1)[0]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert any(line.startswith(f"| {shown} |") for line in lines)
    cells_per_line = {len(re.split(r"(?<!\\)\|", line)) for line in lines}
    assert len(cells_per_line) == 1, "a pipe in the name split a row"


# ---------------------------------------------------------------- rendered in a browser
def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Chromium is not installed (`make chromium` installs the Debian package)")
    return binary


def run_chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


# Added to a COPY of the report (the report itself has no script): after layout, write the
# rendered size of the results table and of every figure into the DOM that --dump-dom prints.
MEASURE = """
<script>
const box = (el) => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
const out = document.createElement("pre");
out.id = "measured";
out.textContent = JSON.stringify({
  table: box(document.getElementById("results-table")),
  rows: document.querySelectorAll("#results-table tbody tr").length,
  figures: [...document.querySelectorAll("figure svg")].map(box),
  episodes: document.querySelectorAll("article.episode").length,
  student: getComputedStyle(document.querySelector(".msg.student")).backgroundColor,
  teacher: getComputedStyle(document.querySelector(".msg.teacher")).backgroundColor,
});
document.body.appendChild(out);
</script>
"""


def test_report_renders_in_chromium(workspace: Path, tmp_path_factory) -> None:  # noqa: ANN001
    page = workspace / "reports/report.html"
    probe_page = workspace / "measure.html"
    probe_page.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    profile = tmp_path_factory.mktemp("chromium-profile")

    dom = run_chromium(profile, "--dump-dom", probe_page.as_uri()).stdout
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, "the page did not render (no measurement in the dumped DOM)"
    measured = json.loads(found.group(1).replace("&quot;", '"'))
    assert measured["rows"] == len(MODELS)
    assert measured["table"][0] > 300 and measured["table"][1] > 50
    assert len(measured["figures"]) == 4
    for width, height in measured["figures"]:
        assert width > 200 and height > 100
    assert measured["episodes"] >= 3
    assert measured["student"] != measured["teacher"]  # student and teacher styled apart

    # The untouched report, as a person sees it: the first screen is mostly content.
    from PIL import Image

    shot = workspace / "report.png"
    run_chromium(profile, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    image = Image.open(shot).convert("L")
    inked = int((np.asarray(image) < 200).sum())
    assert image.size == (1280, 2400)
    assert inked > 0.02 * 1280 * 2400, f"only {inked} dark pixels: the page looks blank"
