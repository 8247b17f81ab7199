"""The one interface every generation backend implements.

Students are rolled out on token ids (the multi-turn loss mask must line up with exactly what was
sampled), so token engines take and return ids. Teachers served elsewhere only speak chat, so
every engine also answers chat conversations with text.
"""

from __future__ import annotations

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
    ) -> list[Generation]: ...
