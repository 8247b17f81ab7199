"""The one interface every generation backend implements.

Students are rolled out on token ids (the multi-turn loss mask must line up with exactly what was
sampled), so token engines take and return ids. Teachers served elsewhere only speak chat, so
every engine also answers chat conversations with text.

A multi-turn rollout sends each conversation again every turn, grown by the last attempt and the
feedback. A :class:`SessionEngine` opens a :class:`TokenSession` that keeps each conversation's
state (its KV cache) between calls, so a later turn only reads the new tokens; every other engine
gets a :class:`StatelessSession` that sends whole prompts (vLLM's prefix cache does the same job
inside vLLM; an HTTP server is out of reach).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from rl2f.config import SamplingConfig

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": "..."}


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]
    # Log-probability of each sampled token under the sampling distribution; None unless asked.
    logprobs: list[float] | None
    finish_reason: Literal["stop", "length"]
    text: str = ""


@runtime_checkable
class ChatEngine(Protocol):
    def chat(self, conversations: list[list[Message]], sampling: SamplingConfig) -> list[str]: ...

    def close(self) -> None: ...


@runtime_checkable
class TokenEngine(ChatEngine, Protocol):
    """An engine that samples from token ids; the student side of every rollout uses one."""

    tokenizer: object  # a transformers PreTrainedTokenizerBase

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        return_logprobs: bool = False,
        *,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """Request ``i`` draws from the random stream of ``seeds[i]`` when given, else of
        ``request_seed(sampling.seed, i)``."""
        ...


@runtime_checkable
class TokenSession(Protocol):
    """Generation over a set of conversations that come back call after call, each longer.

    ``generate`` takes the same prompts, sampling and seeds as :meth:`TokenEngine.generate`
    and must return the same generations; ``keys`` name the conversation each prompt continues.
    A key missing from a call is finished: its state is released.
    """

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        return_logprobs: bool = False,
        *,
        keys: Sequence[Hashable],
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]: ...

    def close(self) -> None: ...


@runtime_checkable
class SessionEngine(TokenEngine, Protocol):
    """A token engine that can carry conversations' state across calls."""

    def session(self) -> TokenSession: ...


class StatelessSession:
    """A :class:`TokenSession` that keeps nothing: every call sends the whole prompts."""

    def __init__(self, engine: TokenEngine) -> None:
        self.engine = engine

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        return_logprobs: bool = False,
        *,
        keys: Sequence[Hashable],
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        return self.engine.generate(prompts, sampling, return_logprobs, seeds=seeds)

    def close(self) -> None:
        """Nothing is held between calls; the engine belongs to whoever made it."""


def open_session(engine: TokenEngine) -> TokenSession:
    """The engine's own session when it can carry state across calls, else a stateless one."""
    if isinstance(engine, SessionEngine):
        return engine.session()
    return StatelessSession(engine)
