"""The LLM teacher: a language model that sees the privileged answer, solution and verifier
report and writes the critique (the paper's setting: the frozen base model as teacher).

All failed episodes of a turn go to the engine in one ``chat`` call. Its output is untrusted
text: it is cleaned and capped here, and checked by the leak guard before any student sees it.
"""

from __future__ import annotations

import json
import re
import string
from collections import defaultdict
from typing import Any

from rl2f.config import SamplingConfig, TeacherConfig
from rl2f.engines.base import ChatEngine, Message
from rl2f.errors import UserError
from rl2f.teachers.base import CritiqueRequest

TEMPLATE_FIELDS = frozenset({"prompt", "answer", "solution_block", "diagnostics", "attempt"})
MAX_DIAGNOSTICS_CHARS = 1500  # code diagnostics list every test; the teacher needs the gist
MAX_CRITIQUE_CHARS = 600
REGENERATION_NOTE = (
    "Your previous critique revealed the answer. Write a new one that does not state the answer, "
    "any value equal to it, or the solution."
)
# Labels a model tends to put in front of its reply; the student should see the critique only.
_LEADING_LABEL = re.compile(r"^\s*(?:\*\*)?(?:critique|feedback|teacher)(?:\*\*)?\s*:\s*", re.I)


def check_template(template: str, allowed: frozenset[str], where: str) -> None:
    """Fail at construction, naming the config key, instead of on the first failed episode."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise UserError(f"{where}: not a valid format string ({exc})") from None
    unknown = sorted(names - allowed)
    if unknown:
        raise UserError(
            f"{where}: unknown field {{{unknown[0]}}} (available: {', '.join(sorted(allowed))})"
        )


def clean_critique(text: str, max_chars: int = MAX_CRITIQUE_CHARS) -> str:
    """Strip a leading label and surrounding whitespace; cut an over-long reply at the last
    sentence (or word) end that fits."""
    text = _LEADING_LABEL.sub("", text.strip(), count=1).strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    sentence_end = max(cut.rfind(mark) for mark in (". ", "! ", "? ", "\n"))
    if sentence_end >= max_chars // 2:
        return cut[: sentence_end + 1].strip()
    return cut.rsplit(" ", 1)[0].strip()


def diagnostics_text(diagnostics: dict[str, Any], max_chars: int = MAX_DIAGNOSTICS_CHARS) -> str:
    text = json.dumps(diagnostics, sort_keys=True, default=str, ensure_ascii=False)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


class LLMTeacher:
    """Privileged teacher backed by any :class:`~rl2f.engines.base.ChatEngine`."""

    name = "llm"
    privileged = True

    def __init__(
        self,
        engine: ChatEngine,
        cfg: TeacherConfig,
        max_chars: int = MAX_CRITIQUE_CHARS,
        *,
        owns_engine: bool = False,
    ) -> None:
        check_template(cfg.prompt_template, TEMPLATE_FIELDS, "teacher.prompt_template")
        self.engine = engine
        self.cfg = cfg
        self.max_chars = max_chars
        self.owns_engine = owns_engine  # started for this teacher (by make_teacher): close it

    def conversation(self, request: CritiqueRequest) -> list[Message]:
        task = request.task
        solution_block = f"Reference solution:\n{task.solution}\n" if task.solution else ""
        user = self.cfg.prompt_template.format(
            prompt=task.prompt,
            answer=task.answer,
            solution_block=solution_block,
            diagnostics=diagnostics_text(dict(request.verdict.diagnostics)),
            attempt=request.attempt,
        )
        if request.attempt_number > 0:
            user = f"{user}\n\n{REGENERATION_NOTE}"
        messages: list[Message] = []
        if self.cfg.system_prompt.strip():
            messages.append({"role": "system", "content": self.cfg.system_prompt})
        messages.append({"role": "user", "content": user})
        return messages

    def critique(self, requests: list[CritiqueRequest]) -> list[str]:
        # One engine call per regeneration round present in the batch (normally exactly one);
        # each round samples with its own seed so a regenerated critique is a fresh draw.
        by_attempt: dict[int, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            by_attempt[request.attempt_number].append(index)
        critiques = [""] * len(requests)
        for attempt_number, indices in sorted(by_attempt.items()):
            texts = self.engine.chat(
                [self.conversation(requests[i]) for i in indices],
                self._sampling(attempt_number),
            )
            if len(texts) != len(indices):
                raise RuntimeError(
                    f"chat engine returned {len(texts)} replies for {len(indices)} conversations"
                )
            for index, text in zip(indices, texts, strict=True):
                # Empty stays empty: the guarded loop sends the fallback and counts it.
                critiques[index] = clean_critique(text, self.max_chars)
        return critiques

    def close(self) -> None:
        if self.owns_engine:
            self.engine.close()

    def engine_stats(self) -> dict[str, int]:
        stats = getattr(self.engine, "stats", None)  # only the HTTP engine keeps counters
        return dict(stats) if isinstance(stats, dict) else {}

    def _sampling(self, attempt_number: int) -> SamplingConfig:
        sampling = self.cfg.sampling
        return sampling.model_copy(update={"seed": sampling.seed + attempt_number})
