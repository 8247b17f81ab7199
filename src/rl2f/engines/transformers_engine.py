"""Batched sampling with a transformers causal LM: the CPU default and the live-policy sampler.

The decoding loop is written out here instead of calling ``model.generate`` because the rollout
needs three things ``generate`` does not promise together: the sampling distribution is exactly
``temperature`` and ``top_p`` (``generate`` silently fills unset knobs such as ``top_k`` or
``repetition_penalty`` from the checkpoint's generation_config), each request draws from its own
seeded random stream (so a completion does not depend on the batch it landed in), and the
log-probability of every sampled token comes from the very distribution it was drawn from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl2f.config import SamplingConfig
from rl2f.engines import check_conversations, request_seed
from rl2f.engines.base import Generation, Message
from rl2f.errors import UserError

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


# ---------------------------------------------------------------- loading
def resolve_device(name: str) -> torch.device:
    """``auto`` means the GPU when there is one; anything else must be a usable torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"engine.device: {name!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"engine.device: {name!r} requested but CUDA is not available here")
    return device


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UserError(_load_failure(source, "a tokenizer", exc)) from None


def load_causal_lm(source: str, device: torch.device, dtype: str) -> PreTrainedModel:
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise UserError(_load_failure(source, "a causal language model", exc)) from None
    return model.to(device)


def _load_failure(source: str, what: str, exc: BaseException) -> str:
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if not Path(source).exists():
        return f"{source}: cannot load {what}: no such directory, nor a hub id available ({detail})"
    return f"{source}: cannot load {what} ({detail})"


# ---------------------------------------------------------------- tokens
def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None
) -> frozenset[int]:
    """Every id that ends a completion: the tokenizer's EOS and the checkpoint's generation_config
    EOS ids (chat models often list several, e.g. end-of-turn and end-of-text)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    return frozenset(ids)


def check_prompts(
    prompts: list[list[int]], max_new_tokens: int, vocab_size: int, context_length: int | None
) -> None:
    """Fail on the first prompt the model cannot take, naming its index."""
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise UserError(f"prompt {i}: is empty (a prompt needs at least one token id)")
        bad = next(
            (t for t in prompt if not isinstance(t, Integral) or not 0 <= t < vocab_size), None
        )
        if bad is not None:
            raise UserError(
                f"prompt {i}: token id {bad!r} is outside the vocabulary (size {vocab_size})"
            )
        if context_length is not None and len(prompt) + max_new_tokens > context_length:
            raise UserError(
                f"prompt {i}: {len(prompt)} tokens + max_new_tokens {max_new_tokens} exceed "
                f"the model's context length {context_length}"
            )


def render_chat(tokenizer: PreTrainedTokenizerBase, conversation: list[Message]) -> list[int]:
    """Token ids of a conversation rendered with the tokenizer's chat template, ending with the
    assistant header. The template already writes any BOS it wants, so none is added again."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"tokenizer {tokenizer.name_or_path!r}: has no chat template")
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------- sampling
def sampling_log_probs(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Log-probabilities of the distribution tokens are drawn from: ``logits / temperature``,
    truncated to the ``top_p`` nucleus and renormalised (what vLLM reports as
    ``processed_logprobs`` and what TRL's importance ratio expects). Greedy decoding
    (temperature 0) reports the untempered model distribution."""
    logits = logits.float()
    if sampling.temperature > 0:
        logits = logits / sampling.temperature
        if sampling.top_p < 1.0:
            logits = _nucleus(logits, sampling.top_p)
    return torch.log_softmax(logits, dim=-1)


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Drop the least likely tokens whose total probability stays within ``1 - top_p``; the most
    likely token always survives."""
    sorted_logits, order = torch.sort(logits, dim=-1)
    tail_mass = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = tail_mass <= 1.0 - top_p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


# Gumbel noise a row draws per block stays within this many bytes summed over a full batch: a
# 150k-token vocabulary at batch 64 takes 39 MB a step.
NOISE_BUDGET_BYTES = 256 * 2**20
MAX_NOISE_STEPS = 32


def noise_block_steps(
    batch_size: int, vocab_size: int, max_new_tokens: int, budget_bytes: int = NOISE_BUDGET_BYTES
) -> int:
    """Steps of noise each row draws at once: as many as fit the budget for a full batch, at
    most ``MAX_NOISE_STEPS`` and never more than the call can use.

    It depends on the engine's batch size, not on how many rows a chunk holds, so a request's
    noise at a step never depends on the batch it landed in."""
    per_step = batch_size * vocab_size * 4  # float32
    return max(1, min(MAX_NOISE_STEPS, max_new_tokens, budget_bytes // per_step))


class GumbelNoise:
    """Per-row seeded noise for Gumbel-max sampling.

    ``argmax(log_probs + g)`` with standard Gumbel ``g`` is an exact draw from
    ``softmax(log_probs)``, and a token masked to -inf (outside the top-p nucleus) never wins.
    Each row fills a block of ``block_steps`` steps from its own generator in one call, instead
    of one ``torch.multinomial`` per row per step (6.3 ms against about 1 ms a step at batch 64
    on the CPU). Uniform draws fill a tensor in order on the CPU, so there a row's stream does not
    even depend on the block size.
    """

    def __init__(
        self, seeds: Sequence[int], vocab_size: int, block_steps: int, device: torch.device
    ) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.shape = (len(seeds), block_steps, vocab_size)
        self.device = device
        self._block = torch.empty(0)

    def at(self, step: int, running: torch.Tensor) -> torch.Tensor:
        """Noise of every row for ``step`` (steps are asked for in order, from 0); rows not
        ``running`` get no fresh draws, their tokens are discarded anyway."""
        offset = step % self.shape[1]
        if offset == 0:
            self._block = self._draw_block(running)
        return self._block[:, offset]

    def _draw_block(self, running: torch.Tensor) -> torch.Tensor:
        uniform = torch.zeros(self.shape, device=self.device)
        for row in running.nonzero().flatten().tolist():
            uniform[row].uniform_(generator=self.generators[row])
        # -log(-log(u)); u == 0 gives -inf, a token that cannot win.
        return uniform.log_().neg_().log_().neg_()


def _draw(log_probs: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """Greedy without noise; with Gumbel noise, a sample of ``softmax(log_probs)``."""
    if noise is None:
        return log_probs.argmax(dim=-1)
    return (log_probs + noise).argmax(dim=-1)


@contextmanager
def _inference(model: PreTrainedModel) -> Iterator[None]:
    """Eval mode and no autograd while sampling, then back to whatever mode the caller had: the
    GRPO trainer hands in the policy it is training."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


# ---------------------------------------------------------------- engine
class TransformersEngine:
    """A :class:`~rl2f.engines.base.TokenEngine` over a transformers causal LM.

    Prompts are sorted by length and decoded in left-padded chunks of ``batch_size`` with a KV
    cache. Each request stops at its first stop token (kept in ``token_ids``) or after
    ``max_new_tokens``.
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        batch_size: int = 64,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        if batch_size < 1:
            raise UserError(f"engine.batch_size: must be at least 1 (got {batch_size})")
        if isinstance(model, str):
            self.device = resolve_device(device)
            self.model = load_causal_lm(model, self.device, dtype)
            self._owns_model = True
        else:
            # A model already in memory stays where its owner put it.
            self.model = model
            self.device = model.device
            self._owns_model = False
        source = self.model.name_or_path
        if tokenizer is None and not source:
            raise UserError(
                "transformers engine: the model object has no name_or_path; pass its tokenizer"
            )
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(source)
        self.batch_size = batch_size
        self.stop_ids = stop_token_ids(
            self.tokenizer, getattr(self.model, "generation_config", None)
        )
        # Padding is masked out, so any valid id works; prefer the tokenizer's own.
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.stop_ids, default=0))
        self.vocab_size = self.model.get_input_embeddings().num_embeddings
        self.context_length: int | None = getattr(
            self.model.config, "max_position_embeddings", None
        )
        self._closed = False

    # ------------------------------------------------------------ TokenEngine
    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        return_logprobs: bool = False,
    ) -> list[Generation]:
        self._check_open()
        check_prompts(prompts, sampling.max_new_tokens, self.vocab_size, self.context_length)
        results: dict[int, Generation] = {}
        # Similar lengths share a chunk, so little compute goes to padding; per-request seeds make
        # the reordering invisible in the results.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        with _inference(self.model):
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                generations = self._generate_chunk(
                    [prompts[i] for i in chunk],
                    [request_seed(sampling.seed, i) for i in chunk],
                    sampling,
                    return_logprobs,
                )
                for i, generation in zip(chunk, generations, strict=True):
                    results[i] = generation
        return [results[i] for i in range(len(prompts))]

    def chat(self, conversations: list[list[Message]], sampling: SamplingConfig) -> list[str]:
        self._check_open()
        check_conversations(conversations)
        prompts = [render_chat(self.tokenizer, conversation) for conversation in conversations]
        return [generation.text for generation in self.generate(prompts, sampling)]

    def close(self) -> None:
        """Release the model if this engine loaded it; a borrowed model is left to its owner."""
        if self._closed:
            return
        self._closed = True
        if self._owns_model:
            del self.model
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------ decoding
    def _generate_chunk(
        self,
        prompts: Sequence[list[int]],
        seeds: Sequence[int],
        sampling: SamplingConfig,
        return_logprobs: bool,
    ) -> list[Generation]:
        batch, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        # Left padding shifts every real token right; positions must count real tokens only so a
        # prompt sees the same rotary positions batched as alone.
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        next_positions = position_ids[:, -1:] + 1

        stop_ids = torch.tensor(sorted(self.stop_ids), dtype=torch.long, device=self.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        sampled: list[torch.Tensor] = []
        sampled_log_probs: list[torch.Tensor] = []

        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
        noise = self._noise(seeds, sampling, outputs.logits.shape[-1])
        for step in range(sampling.max_new_tokens):
            log_probs = sampling_log_probs(outputs.logits[:, -1, :], sampling)
            step_noise = noise.at(step, ~finished) if noise is not None else None
            tokens = _draw(log_probs, step_noise).masked_fill(finished, self.pad_id)
            sampled.append(tokens)
            if return_logprobs:
                sampled_log_probs.append(log_probs.gather(-1, tokens[:, None]).squeeze(-1))
            finished |= torch.isin(tokens, stop_ids)
            if step + 1 == sampling.max_new_tokens or bool(finished.all()):
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=-1)
            outputs = self.model(
                input_ids=tokens[:, None],
                attention_mask=attention_mask,
                position_ids=next_positions,
                past_key_values=outputs.past_key_values,
                use_cache=True,
            )
            next_positions = next_positions + 1

        token_rows = torch.stack(sampled, dim=1).tolist()
        log_prob_rows = (
            torch.stack(sampled_log_probs, dim=1).tolist() if return_logprobs else [None] * batch
        )
        return [
            self._finish(tokens, log_probs)
            for tokens, log_probs in zip(token_rows, log_prob_rows, strict=True)
        ]

    def _noise(
        self, seeds: Sequence[int], sampling: SamplingConfig, vocab_size: int
    ) -> GumbelNoise | None:
        if sampling.temperature == 0:
            return None
        steps = noise_block_steps(self.batch_size, vocab_size, sampling.max_new_tokens)
        return GumbelNoise(seeds, vocab_size, steps, self.device)

    def _finish(self, tokens: list[int], log_probs: list[float] | None) -> Generation:
        """Cut a row after its first stop token (what follows is padding of a finished row)."""
        reason: Literal["stop", "length"] = "length"
        end = len(tokens)
        for position, token in enumerate(tokens):
            if token in self.stop_ids:
                end, reason = position + 1, "stop"
                break
        kept = tokens[:end]
        return Generation(
            token_ids=kept,
            logprobs=log_probs[:end] if log_probs is not None else None,
            finish_reason=reason,
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
        )

    # ------------------------------------------------------------ checks
    def _check_open(self) -> None:
        if self._closed:
            raise UserError("transformers engine: used after close()")
