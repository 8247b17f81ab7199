"""Batched sampling with a transformers causal LM: the CPU default and the live-policy sampler.

The decoding loop is written out here instead of calling ``model.generate`` because the rollout
needs three things ``generate`` does not promise together: the sampling distribution is exactly
``temperature`` and ``top_p`` (``generate`` silently fills unset knobs such as ``top_k`` or
``repetition_penalty`` from the checkpoint's generation_config), each request draws from its own
seeded random stream (so a completion does not depend on the batch it landed in), and the
log-probability of every sampled token comes from the very distribution it was drawn from. A
fourth comes with sessions: a conversation's KV cache is kept from one turn to the next, so a
multi-turn rollout prefills only each turn's new tokens instead of the whole conversation.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import DynamicCache, DynamicLayer

from rl2f.config import SamplingConfig
from rl2f.engines import check_conversations, request_seeds
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
    of one ``torch.multinomial`` per row per step (at batch 64 and a 384-token vocabulary on the
    CPU, 0.16 ms a step against 1.0 ms). On the CPU uniform draws fill a tensor in order, so a
    row's stream does not even depend on the block size; on a GPU it does, which is why the
    block size is fixed per engine (:func:`noise_block_steps`).
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


# ---------------------------------------------------------------- KV cache between calls
class _RoomyLayer(DynamicLayer):
    """A full-attention cache layer that writes new keys and values into room reserved ahead.

    ``DynamicLayer`` concatenates, copying the whole cache every decoding step; at batch 64 and a
    few hundred columns that copy costs about as much as the attention reading the cache (a
    third of a CPU decoding step). Here a call's first update reserves ``spare`` more columns
    and every step after it writes in place. Only the engine touches these layers, through
    ``update`` and ``set_states``; ``DynamicLayer``'s other editing methods would lose the room."""

    spare = 0  # columns to reserve beyond an update that outgrows the room; set per call

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.set_states(key_states[:, :, :0], value_states[:, :, :0])
        start = self.keys.shape[2]
        end = start + key_states.shape[2]
        if end > self._key_room.shape[2]:
            self._key_room = _with_room(self._key_room, start, end + self.spare)
            self._value_room = _with_room(self._value_room, start, end + self.spare)
        self._key_room[:, :, start:end] = key_states
        self._value_room[:, :, start:end] = value_states
        self.keys, self.values = self._key_room[:, :, :end], self._value_room[:, :, :end]
        return self.keys, self.values

    def set_states(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the cached states (rows or columns were picked); the next update that needs
        room reserves it again."""
        self.keys, self.values = keys, values
        self._key_room, self._value_room = keys, values


def _with_room(states: torch.Tensor, used: int, columns: int) -> torch.Tensor:
    """``states`` (rows, heads, columns, head size) copied into room for ``columns`` columns."""
    roomy = states.new_empty((*states.shape[:2], columns, states.shape[3]))
    roomy[:, :, :used] = states[:, :, :used]
    return roomy


def _roomy_cache(model: PreTrainedModel) -> DynamicCache | None:
    """An empty cache of :class:`_RoomyLayer` for a model whose layers all use full attention;
    None for any other model (sliding windows, linear attention, ...), which then builds its
    own cache and rebuilds it from the whole prompt on each call."""
    cache = DynamicCache(config=model.config)
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [_RoomyLayer() for _ in cache.layers]
    return cache


def _reusable(cache: object) -> bool:
    """Whether a cache can be cut by row and column and kept for the next call."""
    return isinstance(cache, DynamicCache) and all(
        isinstance(layer, _RoomyLayer) for layer in cache.layers
    )


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _common_prefix(cached: list[int], prompt: list[int]) -> int:
    length = 0
    for mine, theirs in zip(cached, prompt, strict=False):
        if mine != theirs:
            break
        length += 1
    return length


@dataclass
class _Batch:
    """Requests decoded together and, within a session, the KV cache they leave behind.

    Cache column ``c`` holds one of row ``r``'s tokens where ``mask[r, c]`` is 1, and ``ids[r]``
    lists those tokens in order. The other columns are holes: left padding, tokens fed after the
    row stopped, tokens rewound, another batch's length after a merge. Positions count a row's own
    tokens only, so holes change nothing the row sees.
    """

    keys: list[Hashable]
    ids: list[list[int]]
    mask: torch.Tensor  # (rows, cache columns), long
    past: DynamicCache | None = None

    @classmethod
    def empty(cls, keys: list[Hashable], device: torch.device) -> _Batch:
        mask = torch.zeros((len(keys), 0), dtype=torch.long, device=device)
        return cls(keys, [[] for _ in keys], mask)

    def __len__(self) -> int:
        return len(self.keys)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (by index), then drop the columns no remaining row uses."""
        if len(rows) == len(self):
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.keys = [self.keys[row] for row in rows]
        self.ids = [self.ids[row] for row in rows]
        self.mask = self.mask[index]
        self._map_cache(lambda states: states[index])
        used = self.mask.any(dim=0)
        if not bool(used.all()):
            columns = used.nonzero().flatten()
            self.mask = self.mask[:, columns]
            self._map_cache(lambda states: states[:, :, columns])

    def absorb(self, other: _Batch) -> None:
        """Take ``other``'s rows, left-padding the shorter cache with holes."""
        width = max(self.mask.shape[1], other.mask.shape[1])

        def stacked(mine: torch.Tensor, theirs: torch.Tensor, dim: int) -> torch.Tensor:
            return torch.cat([_pad_left(mine, width, dim), _pad_left(theirs, width, dim)])

        self.keys += other.keys
        self.ids += other.ids
        self.mask = stacked(self.mask, other.mask, 1)
        assert self.past is not None and other.past is not None
        for mine, theirs in zip(self.past.layers, other.past.layers, strict=True):
            # Layer states are (rows, heads, columns, head size).
            mine.set_states(
                stacked(mine.keys, theirs.keys, 2), stacked(mine.values, theirs.values, 2)
            )

    def rewind(self, prompts: Sequence[list[int]]) -> list[int]:
        """How many leading tokens of each prompt the cache already holds. Cached tokens that are
        not a prefix of the prompt become holes, and the prompt's last token is always fed again
        when nothing follows it: its logits are the next token's distribution."""
        starts = []
        for row, prompt in enumerate(prompts):
            start = min(_common_prefix(self.ids[row], prompt), len(prompt) - 1)
            if start < len(self.ids[row]):
                columns = self.mask[row].nonzero().flatten()
                self.mask[row, columns[start:]] = 0
                self.ids[row] = self.ids[row][:start]
            starts.append(start)
        return starts

    def remember(self, past: object, mask: torch.Tensor, ids: list[list[int]]) -> None:
        if _reusable(past):
            self.past, self.mask, self.ids = past, mask, ids  # type: ignore[assignment]
        else:
            self.forget()

    def forget(self) -> None:
        self.past = None
        self.mask = self.mask.new_zeros((len(self), 0))
        self.ids = [[] for _ in self.keys]

    def _map_cache(self, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.past is None:
            return
        for layer in self.past.layers:
            layer.set_states(change(layer.keys), change(layer.values))


def _pack(batches: list[_Batch], batch_size: int) -> list[_Batch]:
    """Merge batches that shrank as episodes finished into fewer, fuller ones."""
    packed: list[_Batch] = []
    for batch in sorted(batches, key=len):
        last = packed[-1] if packed else None
        mergeable = last is not None and last.past is not None and batch.past is not None
        if mergeable and len(last) + len(batch) <= batch_size:
            last.absorb(batch)
        else:
            packed.append(batch)
    return packed


# ---------------------------------------------------------------- engine
class TransformersEngine:
    """A :class:`~rl2f.engines.base.SessionEngine` over a transformers causal LM.

    Prompts are sorted by length and decoded in left-padded chunks of ``batch_size`` with a KV
    cache. Each request stops at its first stop token (kept in ``token_ids``) or after
    ``max_new_tokens``. A :meth:`session` keeps each conversation's cache between calls.
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
        *,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        session = TransformersSession(self, carry=False)
        return session.generate(
            prompts, sampling, return_logprobs, keys=range(len(prompts)), seeds=seeds
        )

    def session(self) -> TransformersSession:
        self._check_open()
        return TransformersSession(self)

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
    def _new_batches(self, prompts: Sequence[list[int]], keys: Sequence[Hashable]) -> list[_Batch]:
        """Requests with nothing cached, in batches of ``batch_size``. Similar lengths share a
        batch, so little compute goes to padding; per-request seeds make the reordering
        invisible in the results."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        return [
            _Batch.empty([keys[i] for i in order[start : start + self.batch_size]], self.device)
            for start in range(0, len(order), self.batch_size)
        ]

    def _decode(
        self,
        batch: _Batch,
        prompts: Sequence[list[int]],
        seeds: Sequence[int],
        sampling: SamplingConfig,
        return_logprobs: bool,
    ) -> list[Generation]:
        """Feed each row what its cache lacks of its prompt, sample, and leave in ``batch`` the
        cache of every token fed."""
        input_ids, new_mask, position_ids = self._prompt_block(prompts, batch.rewind(prompts))
        attention_mask = torch.cat([batch.mask, new_mask], dim=1)
        next_positions = position_ids[:, -1:] + 1
        stop_ids = torch.tensor(sorted(self.stop_ids), dtype=torch.long, device=self.device)
        running = torch.ones(len(prompts), dtype=torch.bool, device=self.device)
        sampled: list[torch.Tensor] = []
        sampled_log_probs: list[torch.Tensor] = []

        past = batch.past if batch.past is not None else _roomy_cache(self.model)
        for layer in past.layers if past is not None else []:
            layer.spare = sampling.max_new_tokens
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1,
        )
        noise = self._noise(seeds, sampling, outputs.logits.shape[-1])
        for step in range(sampling.max_new_tokens):
            log_probs = sampling_log_probs(outputs.logits[:, -1, :], sampling)
            step_noise = noise.at(step, running) if noise is not None else None
            tokens = _draw(log_probs, step_noise).masked_fill(~running, self.pad_id)
            sampled.append(tokens)
            if return_logprobs:
                sampled_log_probs.append(log_probs.gather(-1, tokens[:, None]).squeeze(-1))
            # A token is the row's own (stop token included) if the row was still running; the
            # padding fed to stopped rows becomes a hole in their cache.
            fed_mask = running.long()[:, None]
            running = running & ~torch.isin(tokens, stop_ids)
            if step + 1 == sampling.max_new_tokens or not bool(running.any()):
                break
            attention_mask = torch.cat([attention_mask, fed_mask], dim=1)
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
            torch.stack(sampled_log_probs, dim=1).tolist()
            if return_logprobs
            else [None] * len(prompts)
        )
        generations = [
            self._finish(tokens, log_probs)
            for tokens, log_probs in zip(token_rows, log_prob_rows, strict=True)
        ]
        fed = len(sampled) - 1  # the last token sampled was never fed to the model
        batch.remember(
            outputs.past_key_values,
            attention_mask,
            [list(p) + g.token_ids[:fed] for p, g in zip(prompts, generations, strict=True)],
        )
        return generations

    def _prompt_block(
        self, prompts: Sequence[list[int]], starts: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input ids, attention mask and position ids of the prompt tokens not cached yet,
        left-padded so every row's last prompt token is in the last column."""
        suffixes = [prompt[start:] for prompt, start in zip(prompts, starts, strict=True)]
        rows, width = len(suffixes), max(len(ids) for ids in suffixes)
        input_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        for row, ids in enumerate(suffixes):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) :] = 1
        # Positions count real tokens only, those cached included, so a prompt sees the same
        # rotary positions batched, padded or continued as it would alone.
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0) + torch.tensor(starts)[:, None]
        return input_ids.to(self.device), mask.to(self.device), positions.to(self.device)

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


class TransformersSession:
    """A :class:`~rl2f.engines.base.TokenSession`: each conversation keeps its KV cache between
    calls, so a later turn prefills only the tokens added since (the end of the last attempt,
    the feedback, the assistant header).

    A conversation stays in the batch it started in; batches that shrink as conversations end
    are merged. The results equal :meth:`TransformersEngine.generate` on the whole prompts up to
    float rounding: a cached key or value was computed one token at a time instead of in one
    prefill. ``carry=False`` forgets every cache after use (what ``generate`` does).
    """

    def __init__(self, engine: TransformersEngine, *, carry: bool = True) -> None:
        self.engine = engine
        self.carry = carry
        self._batches: list[_Batch] = []

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        return_logprobs: bool = False,
        *,
        keys: Sequence[Hashable],
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        engine = self.engine
        engine._check_open()
        keys = list(keys)
        if len(keys) != len(prompts) or len(set(keys)) != len(keys):
            raise ValueError(f"expected {len(prompts)} distinct keys, one per prompt")
        seeds = request_seeds(sampling.seed, len(prompts), seeds)
        check_prompts(prompts, sampling.max_new_tokens, engine.vocab_size, engine.context_length)
        index = {key: i for i, key in enumerate(keys)}
        results: list[Generation] = [None] * len(prompts)  # type: ignore[list-item]
        with _inference(engine.model):
            batches = self._carried(index)
            cached = {key for batch in batches for key in batch.keys}
            fresh = [i for i, key in enumerate(keys) if key not in cached]
            batches += engine._new_batches([prompts[i] for i in fresh], [keys[i] for i in fresh])
            for batch in batches:
                rows = [index[key] for key in batch.keys]
                generations = engine._decode(
                    batch,
                    [prompts[i] for i in rows],
                    [seeds[i] for i in rows],
                    sampling,
                    return_logprobs,
                )
                for i, generation in zip(rows, generations, strict=True):
                    results[i] = generation
                if not self.carry:
                    batch.forget()
        self._batches = batches if self.carry else []
        return results

    def close(self) -> None:
        self._batches = []

    def __enter__(self) -> TransformersSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _carried(self, index: dict[Hashable, int]) -> list[_Batch]:
        """The batches of conversations asked for again, without the ones that ended."""
        kept = []
        for batch in self._batches:
            rows = [row for row, key in enumerate(batch.keys) if key in index]
            if rows:
                batch.keep(rows)
                kept.append(batch)
        return _pack(kept, self.engine.batch_size)
