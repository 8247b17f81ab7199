"""Generation backends behind one interface (:mod:`rl2f.engines.base`) and the factory that picks
one from ``EngineConfig.kind``.

The concrete engines are imported inside :func:`make_engine` so that importing this package pulls
in neither torch nor vLLM nor an HTTP client: a teacher served over HTTP should not pay for a
torch import, and vLLM is an optional extra.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rl2f.config import EngineConfig
from rl2f.engines.base import (
    ChatEngine,
    Generation,
    Message,
    SessionEngine,
    StatelessSession,
    TokenEngine,
    TokenSession,
    open_session,
)
from rl2f.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ChatEngine",
    "Generation",
    "Message",
    "SessionEngine",
    "StatelessSession",
    "TokenEngine",
    "TokenSession",
    "check_conversations",
    "make_engine",
    "open_session",
    "request_seed",
    "request_seeds",
]

CHAT_ROLES = frozenset({"system", "user", "assistant"})


def make_engine(
    cfg: EngineConfig,
    model: str | PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    dtype: str = "auto",
) -> TokenEngine | ChatEngine:
    """Build the engine ``cfg.kind`` names.

    ``model`` is a local path or hub id, or (transformers only) a model object already in memory,
    e.g. the policy the GRPO trainer is updating: the engine then samples from the live weights
    and leaves the model on its device and in the train/eval mode it found it in. Without
    ``model``, ``cfg.model`` is used. For ``openai`` the name is the model name the server expects.
    A local model folder with a :data:`~rl2f.engines.revision.FIRST_ATTEMPT_DIR` gives a
    :class:`~rl2f.engines.revision.RevisionEngine` over the two models.
    """
    model = model if model is not None else cfg.model
    if model is None or (isinstance(model, str) and not model.strip()):
        raise UserError(f"engine {cfg.kind!r}: no model given (set engine.model or pass a model)")
    if isinstance(model, str) and cfg.kind != "openai":
        from rl2f.engines.revision import RevisionEngine, first_attempt_dir

        first = first_attempt_dir(model)
        if first is not None:  # a revision-trained model: its base writes the first attempts
            return RevisionEngine(
                _make_engine(cfg, str(first), tokenizer, dtype),  # type: ignore[arg-type]
                _make_engine(cfg, model, tokenizer, dtype),  # type: ignore[arg-type]
            )
    return _make_engine(cfg, model, tokenizer, dtype)


def _make_engine(
    cfg: EngineConfig,
    model: str | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    dtype: str,
) -> TokenEngine | ChatEngine:
    if cfg.kind == "transformers":
        from rl2f.engines.transformers_engine import TransformersEngine

        return TransformersEngine(
            model, tokenizer, batch_size=cfg.batch_size, device=cfg.device, dtype=dtype
        )
    if cfg.kind == "vllm":
        from rl2f.engines.vllm_engine import VLLMEngine

        if not isinstance(model, str):
            raise UserError(
                "engine 'vllm' loads weights from a path or hub id, not from a model object; "
                "sample the live policy with the 'transformers' engine"
            )
        return VLLMEngine(
            model,
            tokenizer,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            dtype=dtype,
        )
    if cfg.kind == "openai":
        from rl2f.engines.openai_engine import OpenAIChatEngine

        if not isinstance(model, str):
            raise UserError("engine 'openai' needs the served model's name, not a model object")
        if not cfg.base_url:
            raise UserError("engine 'openai': engine.base_url is not set")
        return OpenAIChatEngine(
            base_url=cfg.base_url,
            model=model,
            api_key_env=cfg.api_key_env,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            concurrency=cfg.concurrency,
            max_retry_wait_s=cfg.max_retry_wait_s,
            backoff_s=cfg.backoff_s,
        )
    raise UserError(f"engine.kind: unknown engine {cfg.kind!r}")


def request_seed(seed: int, index: int) -> int:
    """The seed of request ``index`` in a call made with ``seed``.

    Every request gets its own random stream, so a completion depends only on its own prompt, the
    call's seed and its position in the call: not on how requests are chunked into batches, and
    repeated prompts (G samples of one task) still get different samples. Hashing keeps nearby
    (seed, index) pairs from sharing streams; 31 bits fit every backend's seed type.
    """
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def request_seeds(seed: int, count: int, seeds: Sequence[int] | None = None) -> list[int]:
    """The seed of each of a call's ``count`` requests: ``seeds`` when the caller gives one per
    request, else :func:`request_seed` of (``seed``, position)."""
    if seeds is None:
        return [request_seed(seed, i) for i in range(count)]
    if len(seeds) != count:
        raise UserError(f"seeds: got {len(seeds)} seeds for {count} prompts (one per prompt)")
    return [int(s) for s in seeds]


def check_conversations(conversations: list[list[Message]]) -> None:
    """Fail with the conversation and message index when a message is not ``{role, content}``."""
    for i, conversation in enumerate(conversations):
        if not isinstance(conversation, list) or not conversation:
            raise UserError(f"conversation {i}: expected a non-empty list of messages")
        for j, message in enumerate(conversation):
            where = f"conversation {i}, message {j}"
            if not isinstance(message, dict):
                raise UserError(f"{where}: expected a mapping with 'role' and 'content'")
            role = message.get("role")
            if role not in CHAT_ROLES:
                raise UserError(f"{where}: role must be one of {sorted(CHAT_ROLES)} (got {role!r})")
            if not isinstance(message.get("content"), str):
                raise UserError(f"{where}: content must be a string")
