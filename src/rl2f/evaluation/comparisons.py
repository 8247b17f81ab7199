"""Paired differences between evaluation cells, with bootstrap intervals of the difference.

Two per-model 95% intervals that overlap do not show that two models are alike: the question
"is RL2F better than the base model?" is about the difference, and the difference of two
models evaluated on the same tasks is far less noisy than either accuracy, because most of
the variance is which tasks are easy. So every comparison here is paired by task:

- A task's value at turn t is the share of its G episodes solved at or before t
  (:func:`~rl2f.evaluation.metrics.solved_matrix`), exactly as in ``metrics.json``.
- Cells a and b are aligned on the tasks both evaluated (the intersection: a model can leave a
  task out when its prompt fills the model's context) and ``diff`` is mean_a - mean_b.
- The interval is a percentile bootstrap over tasks, seeded: each replicate draws one task
  multiset and applies it to both a and b, i.e. it resamples the per-task differences.

Why the pairing is valid, and why it has power (common random numbers): the resampled unit is
the task, which is what the evaluation sampled, and both cells hold the same tasks, so the
per-task differences are independent draws whatever the models are. Beyond that, the
evaluation gives every model the same random numbers for the same draw: every cell samples with
``eval.seed``; the rollout derives each turn's seed from (``eval.seed``, turn) and gives episode
i, (task i // G, generation i % G) of the same sorted task list under every model and mode, the
stream ``request_seed(turn seed, i)`` at every turn, whichever other episodes are still running
(the sycophancy probe seeds its continuation the same way). So the G episodes of a task draw
different samples (different i) while a (task, generation, turn) draws the same numbers under
every model, and the noise that both cells share cancels in the difference. Less is shared
where the models' earlier attempts and feedback differ (the same numbers meet different
contexts), and where a model left a task out (the later tasks shift to other streams); that
costs power, never validity: the bootstrap over tasks does not assume the numbers are shared.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rl2f.episodes import Episode
from rl2f.evaluation.metrics import (
    bootstrap_means,
    percentile_interval,
    plasticity,
    solved_matrix,
)
from rl2f.evaluation.runner import BUILTIN_MODELS

log = logging.getLogger(__name__)

Side = tuple[str, str]  # (model, feedback mode)
Pair = tuple[Side, Side]  # (a, b): the row reports a - b
CellKey = tuple[str, str, str]  # (model, split, mode)

# The comparisons the paper's claims rest on: RL2F against each baseline under the same
# feedback, what feedback adds over a bare retry, and the critic's self-feedback against the
# models it came from.
DEFAULT_PAIRS: tuple[Pair, ...] = (
    (("rl2f", "teacher"), ("base", "teacher")),
    (("rl2f", "teacher"), ("single_turn", "teacher")),
    (("rl2f", "teacher"), ("rl2f", "retry")),
    (("single_turn", "teacher"), ("base", "teacher")),
    (("base", "teacher"), ("base", "retry")),
    (("rl2f_critic", "self"), ("base", "self")),
    (("rl2f_critic", "self"), ("rl2f", "self")),
    # The answers-only ablation (eval.extra_models) against base: what plain fine-tuning on its
    # own correct answers gains, to set beside rl2f_critic's gain over base.
    (("rl2f_answers_only", "self"), ("base", "self")),
)


def default_pairs(models: Iterable[str]) -> list[Pair]:
    """:data:`DEFAULT_PAIRS`, then every model outside the built-in four (``eval.extra_models``,
    e.g. an ablation of the critic) in self mode against ``rl2f_critic`` in self mode."""
    extras = [model for model in dict.fromkeys(models) if model not in BUILTIN_MODELS]
    return [*DEFAULT_PAIRS, *(((model, "self"), ("rl2f_critic", "self")) for model in extras)]


@dataclass(frozen=True)
class PairedDifference:
    """mean_a - mean_b per turn over the shared tasks, with its paired 95% interval."""

    diff_by_turn: list[float]
    ci95_by_turn: list[list[float]]
    tasks: int


def aligned(episodes: Sequence[Episode], tasks: Sequence[str], max_turns: int) -> np.ndarray:
    """The solved matrix of ``episodes`` with rows in the order of ``tasks``."""
    chosen = set(tasks)
    kept = [episode for episode in episodes if episode.task_id in chosen]
    order = list(dict.fromkeys(episode.task_id for episode in kept))
    solved = solved_matrix(kept, max_turns)
    row = {task: index for index, task in enumerate(order)}
    return solved[[row[task] for task in tasks]]


def paired_difference(
    a: Sequence[Episode], b: Sequence[Episode], max_turns: int, samples: int, seed: int
) -> PairedDifference:
    """Cell a minus cell b on the tasks both hold. Sorting the shared ids makes the result
    independent of file order, so a rerun gives the same interval."""
    shared = sorted({e.task_id for e in a} & {e.task_id for e in b})
    if not shared:
        raise ValueError("the two cells share no task")
    differences = aligned(a, shared, max_turns) - aligned(b, shared, max_turns)
    bounds = percentile_interval(bootstrap_means(differences, samples, seed))
    return PairedDifference(
        diff_by_turn=[float(v) for v in differences.mean(axis=0)],
        ci95_by_turn=[[float(lo), float(hi)] for lo, hi in zip(*bounds, strict=True)],
        tasks=len(shared),
    )


def inferred_turns(*cells: Sequence[Episode]) -> int:
    """The most student turns any episode took: the turn budget when none is given (an
    unsolved episode uses all its turns; a budget nobody reached changes no accuracy)."""
    return max(len(episode.student_turns) for cell in cells for episode in cell)


def comparison_rows(
    cells: Mapping[CellKey, Sequence[Episode]],
    *,
    samples: int,
    seed: int,
    max_turns: Mapping[str, int] | None = None,
    pairs: Sequence[Pair] | None = None,
) -> list[dict[str, Any]]:
    """One row per (split, pair, turn) for every pair whose two cells exist on the split:
    ``{"split", "turn", "a": {"model", "mode"}, "b": {"model", "mode"}, "diff", "ci95": [lo,
    hi], "n": tasks}``. ``max_turns`` gives each split's turn budget (inferred from the
    episodes when absent); ``pairs`` defaults to :func:`default_pairs` of the models present."""
    pairs = list(pairs) if pairs is not None else default_pairs(m for m, _, _ in cells)
    rows = []
    for split in dict.fromkeys(split for _, split, _ in cells):
        for (model_a, mode_a), (model_b, mode_b) in pairs:
            a = cells.get((model_a, split, mode_a))
            b = cells.get((model_b, split, mode_b))
            if not a or not b:
                continue
            turns = (max_turns or {}).get(split) or inferred_turns(a, b)
            try:
                paired = paired_difference(a, b, turns, samples, seed)
            except ValueError:
                log.warning(
                    "%s: %s/%s and %s/%s share no task; not compared",
                    split,
                    model_a,
                    mode_a,
                    model_b,
                    mode_b,
                )
                continue
            for turn, (diff, ci) in enumerate(
                zip(paired.diff_by_turn, paired.ci95_by_turn, strict=True), start=1
            ):
                rows.append(
                    {
                        "split": split,
                        "turn": turn,
                        "a": {"model": model_a, "mode": mode_a},
                        "b": {"model": model_b, "mode": mode_b},
                        "diff": diff,
                        "ci95": ci,
                        "n": paired.tasks,
                    }
                )
    return rows


# ---------------------------------------------------------------- following the feedback
# A model's critique-following is its toward rate under the teacher minus under a bare retry
# (the same model's chance of moving the answer's way when told nothing), and RL's part in it
# that gap minus the base model's.
CRITIQUE_MODE = "teacher"
RETRY_MODE = "retry"
REFERENCE_MODEL = "base"


def toward_counts(episodes: Sequence[Episode], tasks: Sequence[str]) -> np.ndarray:
    """tasks x 2: per task (rows in the order of ``tasks``), the transitions from a wrong number
    to another number on the answer's side of it, and all transitions from a wrong number to a
    different number (:func:`~rl2f.evaluation.metrics.plasticity`)."""
    by_task: dict[str, list[Episode]] = {task: [] for task in tasks}
    for episode in episodes:
        if episode.task_id in by_task:
            by_task[episode.task_id].append(episode)
    counts = [plasticity(group) for group in by_task.values()]
    return np.array([[c.moved_toward, c.numeric_changed_from_wrong] for c in counts], dtype=float)


def feedback_use_rows(
    cells: Mapping[CellKey, Sequence[Episode]], *, samples: int, seed: int
) -> list[dict[str, Any]]:
    """How much more often each model's next number moves the answer's way after a critique
    than after a bare retry (its ``toward_rate`` in teacher mode minus in retry mode), and how
    much wider that gap is than the base model's: one row per (split, model) with both modes,
    ``{"split", "model", "critique", "retry", "diff", "ci95", "minus_base": {"diff", "ci95"} or
    None, "n": tasks}``. Rates are pooled over the tasks all the cells hold; the intervals are
    a bootstrap over those tasks, one task multiset per replicate for every cell, so the
    differences are paired as in :func:`paired_difference`. A split without numeric answers has
    no row."""
    rows = []
    for split in dict.fromkeys(split for _, split, _ in cells):
        models = [
            model
            for model, cell_split, mode in cells
            if cell_split == split
            and mode == CRITIQUE_MODE
            and cells.get((model, split, RETRY_MODE))
        ]
        for model in models:
            with_reference = REFERENCE_MODEL in models and model != REFERENCE_MODEL
            compared = [model, REFERENCE_MODEL] if with_reference else [model]
            sides = [
                cells[(m, split, mode)] for m in compared for mode in (CRITIQUE_MODE, RETRY_MODE)
            ]
            shared = sorted(set.intersection(*({e.task_id for e in side} for side in sides)))
            if not shared:
                log.warning(
                    "%s: %s's cells share no task; critique-following not compared", split, model
                )
                continue
            counts = np.hstack([toward_counts(side, shared) for side in sides])
            if (counts[:, 1::2].sum(axis=0) == 0).any():
                continue  # a cell without a single changed number has no rate
            totals = counts.mean(axis=0)[None, :]
            replicates = bootstrap_means(counts, samples, seed)
            with np.errstate(divide="ignore", invalid="ignore"):
                point, spread = _gaps(totals), _gaps(replicates)
            row: dict[str, Any] = {
                "split": split,
                "model": model,
                "critique": float(totals[0, 0] / totals[0, 1]),
                "retry": float(totals[0, 2] / totals[0, 3]),
                "diff": float(point[0, 0]),
                "ci95": _nan_interval(spread[:, 0]),
                "minus_base": None,
                "n": len(shared),
            }
            if with_reference:
                row["minus_base"] = {
                    "diff": float(point[0, 0] - point[0, 1]),
                    "ci95": _nan_interval(spread[:, 0] - spread[:, 1]),
                }
            rows.append(row)
    return rows


def _gaps(means: np.ndarray) -> np.ndarray:
    """replicates x models: toward rate after a critique minus after a retry, from the columns
    (toward, transitions) x (critique, retry) x models."""
    rates = means[:, 0::2] / means[:, 1::2]
    return rates[:, 0::2] - rates[:, 1::2]


def _nan_interval(values: np.ndarray) -> list[float]:
    """The 95% percentile interval over the replicates that drew a transition in every cell (a
    replicate of a few tasks can draw none, and then has no rate)."""
    low, high = percentile_interval(values[np.isfinite(values)])
    return [float(low), float(high)]


def excludes_zero(ci95: Sequence[float]) -> bool:
    """The interval lies wholly above or below 0: the difference is resolved at 95%."""
    low, high = ci95
    return low > 0 or high < 0
