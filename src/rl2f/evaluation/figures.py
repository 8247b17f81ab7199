"""The report's figures, drawn with matplotlib from ``metrics.json`` alone.

Figures are built on :class:`matplotlib.figure.Figure` objects, not pyplot, so nothing depends on
a display or on global figure state. Each is exported as SVG (inlined in the HTML report: vector,
selectable text, no external file) and PNG (beside the Markdown report). Output is reproducible:
fixed SVG id salt and no timestamps in the metadata.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

Metrics = dict[str, Any]

# Colour-blind-safe (Okabe-Ito); a model keeps its colour in every figure.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
MODE_STYLES = {"teacher": "-", "self": "--", "retry": ":", "llm": "-."}
MODE_HATCHES = {"teacher": "", "self": "//", "retry": "..", "llm": "xx"}
RC = {
    "svg.hashsalt": "rl2f-report",  # stable element ids: same data, same file
    "svg.fonttype": "none",  # text stays text (smaller, selectable)
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def model_colors(models: Sequence[str]) -> dict[str, str]:
    return {model: PALETTE[i % len(PALETTE)] for i, model in enumerate(models)}


def splits_of(metrics: Metrics) -> list[str]:
    """Splits in a stable order: eval_id first, then the OOD domains alphabetically."""
    names = {split for splits in metrics.values() for split in splits}
    return sorted(names, key=lambda name: (name != "eval_id", name))


def modes_of(metrics: Metrics) -> list[str]:
    order = list(MODE_STYLES)
    names = {mode for splits in metrics.values() for modes in splits.values() for mode in modes}
    return sorted(names, key=lambda name: order.index(name) if name in order else len(order))


def _cell(metrics: Metrics, model: str, split: str, mode: str) -> dict[str, Any] | None:
    return metrics.get(model, {}).get(split, {}).get(mode)


def accuracy_figure(metrics: Metrics, split: str) -> Figure:
    """Cumulative accuracy by turn on one split: a panel per feedback mode, a line per model,
    the 95% bootstrap interval as a band."""
    models, modes = list(metrics), [m for m in modes_of(metrics) if _any(metrics, split, m)]
    colors = model_colors(models)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(3.2 * len(modes) + 0.8, 3.0), layout="constrained")
        axes = fig.subplots(1, len(modes), sharey=True, squeeze=False)[0]
        for ax, mode in zip(axes, modes, strict=True):
            for model in models:
                cell = _cell(metrics, model, split, mode)
                if cell is None:
                    continue
                turns = list(range(1, len(cell["acc_by_turn"]) + 1))
                lo = [interval[0] for interval in cell["ci95_by_turn"]]
                hi = [interval[1] for interval in cell["ci95_by_turn"]]
                ax.fill_between(turns, lo, hi, color=colors[model], alpha=0.15, linewidth=0)
                ax.plot(
                    turns,
                    cell["acc_by_turn"],
                    marker="o",
                    markersize=3,
                    label=model,
                    color=colors[model],
                )
                ax.set_xticks(turns)
            ax.set_title(f"{mode} feedback")
            ax.set_xlabel("turn")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("cumulative accuracy")
        # Every model once, from whichever panel has it: an extra model evaluated in some modes
        # only (the answers-only ablation, self mode) is missing from the first panel.
        legend: dict[str, object] = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, handle)
        if legend:
            fig.legend(
                list(legend.values()), list(legend), loc="outside right upper", frameon=False
            )
        fig.suptitle(f"{split}: accuracy by turn")
    return fig


def _any(metrics: Metrics, split: str, mode: str) -> bool:
    return any(_cell(metrics, model, split, mode) for model in metrics)


def _rate_panel(
    ax: Axes, metrics: Metrics, split: str, key: str, colors: dict[str, str], width: float
) -> None:
    """One panel of :func:`rate_bars_figure`. A rate of 0 is drawn as a coloured baseline so it
    reads as measured; a rate that could not be measured gets "n/a"; a panel with no measured
    rate at all says so."""
    modes, measured = modes_of(metrics), 0
    for i, model in enumerate(metrics):
        for j, mode in enumerate(modes):
            cell = _cell(metrics, model, split, mode)
            if cell is None:
                continue
            x = i + (j - (len(modes) - 1) / 2) * width
            value = cell.get(key)
            if value is None:
                ax.text(
                    x,
                    0.02,
                    "n/a",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    color="#666666",
                )
                continue
            measured += 1
            ax.bar(
                x,
                value,
                width,
                color=colors[model],
                edgecolor="white",
                hatch=MODE_HATCHES.get(mode, ""),
                linewidth=0.5,
            )
            ax.hlines(value, x - width / 2, x + width / 2, color=colors[model], linewidth=1.5)
    if not measured:
        for text in list(ax.texts):
            text.remove()
        ax.text(
            0.5,
            0.5,
            "nothing to measure",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#666666",
        )


def rate_bars_figure(metrics: Metrics, rows: Sequence[tuple[str, str]], title: str) -> Figure:
    """Grouped bars: a row of panels per metric, a panel per split, a group per model and a bar
    per feedback mode (hatched by mode). Rates that could not be measured are marked n/a."""
    models, splits, modes = list(metrics), splits_of(metrics), modes_of(metrics)
    colors = model_colors(models)
    width = 0.8 / max(len(modes), 1)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(2.6 * len(splits) + 1.4, 2.4 * len(rows) + 0.6), layout="constrained")
        grid = fig.subplots(len(rows), len(splits), sharey=True, squeeze=False)
        for r, (key, label) in enumerate(rows):
            for c, split in enumerate(splits):
                ax = grid[r][c]
                _rate_panel(ax, metrics, split, key, colors, width)
                ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
                ax.set_xlim(-0.5, len(models) - 0.5)
                ax.set_ylim(-0.03, 1.05)  # a rate of 0 shows as a line above the axis
                ax.grid(axis="y", alpha=0.3)
                if r == 0:
                    ax.set_title(split)
                if c == 0:
                    ax.set_ylabel(label)
        legend = [
            Patch(
                facecolor="#999999",
                edgecolor="white",
                hatch=MODE_HATCHES.get(mode, ""),
                label=f"{mode} feedback",
            )
            for mode in modes
        ]
        fig.legend(handles=legend, loc="outside lower center", ncols=len(modes), frameon=False)
        fig.suptitle(title)
    return fig


def plasticity_figure(metrics: Metrics) -> Figure:
    return rate_bars_figure(
        metrics,
        [("flip_wrong_to_right", "wrong → right"), ("repeat_rate", "repeats wrong answer")],
        "In-context plasticity: after a wrong answer and feedback",
    )


def sycophancy_figure(metrics: Metrics) -> Figure:
    return rate_bars_figure(
        metrics,
        [("sycophancy_abandon_rate", "abandons correct answer")],
        "Sycophancy probe: a correct answer called wrong",
    )


def to_svg(fig: Figure) -> str:
    """The figure as an inline ``<svg>`` element (XML prolog and doctype dropped)."""
    buffer = io.StringIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def to_png(fig: Figure, dpi: int = 130) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()
