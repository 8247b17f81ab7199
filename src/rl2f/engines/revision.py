"""A student made of two models: a frozen one writes each conversation's first attempt, a
revision-trained one every attempt after feedback.

Why: GRPO at a learning rate that teaches the tiny model to read a critique also wrecks its first
answer within a few steps, and masking the first attempt's loss does not protect it (the shared
weights still move). Keeping the base for turn 1 protects it by construction (``train.
frozen_first_attempt``; docs/experiments.md, eleventh round). The trained model is published with
the base beside it in :data:`FIRST_ATTEMPT_DIR`, so every later stage (rollout, distillation,
evaluation, the Kubeflow components) gets the same pair from one folder.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path

from rl2f.config import SamplingConfig
from rl2f.engines.base import Generation, Message, TokenEngine, TokenSession, open_session
from rl2f.errors import UserError

# The sub-folder of a published model that holds its frozen first-attempt model.
FIRST_ATTEMPT_DIR = "first_attempt"


def first_attempt_dir(model_dir: str | Path) -> Path | None:
    """The frozen first-attempt model published with ``model_dir``, if it has one."""
    candidate = Path(model_dir) / FIRST_ATTEMPT_DIR
    return candidate if candidate.is_dir() else None


class RevisionEngine:
    """A :class:`~rl2f.engines.base.SessionEngine` whose sessions send a conversation's first
    call to ``first`` and every later call to ``revisions``. Stateless calls (``generate``,
    ``chat``: a self-critique, a probe) go to ``revisions``, the model that was trained."""

    def __init__(self, first: TokenEngine, revisions: TokenEngine) -> None:
        if first.tokenizer.get_vocab() != revisions.tokenizer.get_vocab():  # type: ignore[attr-defined]
            raise UserError(
                "first-attempt model: its tokenizer differs from the trained model's (both must "
                "come from the same base)"
            )
        self.first, self.revisions = first, revisions
        self.tokenizer = revisions.tokenizer
        lengths = [getattr(e, "context_length", None) for e in (first, revisions)]
        known = [length for length in lengths if length is not None]
        self.context_length: int | None = min(known) if known else None

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        return_logprobs: bool = False,
        *,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        return self.revisions.generate(prompts, sampling, return_logprobs, seeds=seeds)

    def chat(self, conversations: list[list[Message]], sampling: SamplingConfig) -> list[str]:
        return self.revisions.chat(conversations, sampling)

    def session(self) -> RevisionSession:
        return RevisionSession(self)

    def close(self) -> None:
        self.first.close()
        self.revisions.close()


class RevisionSession:
    """Routes each call's prompts by whether their conversation has been seen: new keys to the
    first-attempt model's session, known ones to the revision model's. The revision session
    reads a conversation whole the first time it meets it (its cache starts there)."""

    def __init__(self, engine: RevisionEngine) -> None:
        self.engine = engine
        self.seen: set[Hashable] = set()
        self.first: TokenSession | None = None
        self.revisions = open_session(engine.revisions)

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        return_logprobs: bool = False,
        *,
        keys: Sequence[Hashable],
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        from rl2f.engines import request_seeds

        if len(keys) != len(prompts):
            raise ValueError(f"expected {len(prompts)} keys, one per prompt")
        # Each request's seed from its place in the whole call, as one model would have drawn.
        seeds = request_seeds(sampling.seed, len(prompts), seeds)
        new = [i for i, key in enumerate(keys) if key not in self.seen]
        known = [i for i, key in enumerate(keys) if key in self.seen]
        results: dict[int, Generation] = {}
        if new:
            self.first = self.first or open_session(self.engine.first)
            results |= self._part(self.first, new, prompts, sampling, return_logprobs, keys, seeds)
        elif self.first is not None:
            # No first attempts in this call: release the first model's caches.
            self.first.close()
            self.first = None
        # Always called, so conversations missing from this call are released there too.
        rest = self._part(self.revisions, known, prompts, sampling, return_logprobs, keys, seeds)
        results |= rest
        self.seen.update(keys)
        return [results[i] for i in range(len(prompts))]

    @staticmethod
    def _part(
        session: TokenSession,
        rows: list[int],
        prompts: list[list[int]],
        sampling: SamplingConfig,
        return_logprobs: bool,
        keys: Sequence[Hashable],
        seeds: list[int],
    ) -> dict[int, Generation]:
        generations = session.generate(
            [prompts[i] for i in rows],
            sampling,
            return_logprobs,
            keys=[keys[i] for i in rows],
            seeds=[seeds[i] for i in rows],
        )
        return dict(zip(rows, generations, strict=True))

    def close(self) -> None:
        if self.first is not None:
            self.first.close()
        self.revisions.close()
