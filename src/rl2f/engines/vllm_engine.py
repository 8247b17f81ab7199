"""Sampling with vLLM on a GPU: the same contract as the transformers engine, faster.

vLLM is an optional extra, imported only when this engine is built, so the package imports (and
its CPU tests run) without it. Prompts go in as token ids (``TokensPrompt``) and prefix caching is
on: in a multi-turn rollout every turn's prompt extends the previous one, so most of it is
already cached.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from transformers import GenerationConfig

from rl2f.config import SamplingConfig
from rl2f.engines import check_conversations, request_seeds
from rl2f.engines.base import Generation, Message
from rl2f.engines.transformers_engine import (
    check_prompts,
    load_tokenizer,
    render_chat,
    stop_token_ids,
)
from rl2f.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

INSTALL_HINT = "the vllm engine needs vLLM: install the vllm extra (pip install 'rl2f[vllm]')"


class VLLMEngine:
    """A :class:`~rl2f.engines.base.TokenEngine` backed by ``vllm.LLM``.

    Matches :class:`~rl2f.engines.transformers_engine.TransformersEngine`: one seeded random
    stream per request, the same stop ids (tokenizer EOS plus generation_config EOS ids), token
    ids that end with the stop token, and log-probabilities after temperature and top-p
    (``logprobs_mode="processed_logprobs"``, what TRL's importance ratio expects).
    """

    def __init__(
        self,
        model: str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        gpu_memory_utilization: float = 0.85,
        dtype: str = "auto",
    ) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise UserError(INSTALL_HINT) from None
        llm = LLM(
            model=model,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,
            logprobs_mode="processed_logprobs",
        )
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model)
        self._attach(llm, tokenizer, _generation_config(model), owns_llm=True)

    @classmethod
    def wrap(
        cls,
        llm: Any,
        tokenizer: PreTrainedTokenizerBase,
        generation_config: GenerationConfig | None = None,
    ) -> VLLMEngine:
        """An engine over a ``vllm.LLM`` someone else owns, such as the one TRL colocates with
        the trainer (built with ``logprobs_mode="processed_logprobs"`` too, and synced with the
        policy's weights every step); ``close()`` leaves it running."""
        engine = cls.__new__(cls)
        engine._attach(llm, tokenizer, generation_config, owns_llm=False)
        return engine

    def _attach(
        self,
        llm: Any,
        tokenizer: PreTrainedTokenizerBase,
        generation_config: GenerationConfig | None,
        *,
        owns_llm: bool,
    ) -> None:
        self._llm = llm
        self.tokenizer = tokenizer
        self.stop_ids = stop_token_ids(tokenizer, generation_config)
        model_config = llm.llm_engine.model_config
        self.vocab_size: int = model_config.get_vocab_size()
        self.context_length: int = model_config.max_model_len
        self._owns_llm = owns_llm
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
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._check_open()
        seeds = request_seeds(sampling.seed, len(prompts), seeds)
        check_prompts(prompts, sampling.max_new_tokens, self.vocab_size, self.context_length)
        if not prompts:
            return []
        params = [
            SamplingParams(
                n=1,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed,
                stop_token_ids=sorted(self.stop_ids),
                logprobs=0 if return_logprobs else None,
                # Text is decoded with our tokenizer, exactly as the transformers engine does.
                detokenize=False,
            )
            for seed in seeds
        ]
        outputs = self._llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            sampling_params=params,
            use_tqdm=False,
        )
        return [
            self._to_generation(i, out.outputs[0], return_logprobs) for i, out in enumerate(outputs)
        ]

    def chat(self, conversations: list[list[Message]], sampling: SamplingConfig) -> list[str]:
        self._check_open()
        check_conversations(conversations)
        prompts = [render_chat(self.tokenizer, conversation) for conversation in conversations]
        return [generation.text for generation in self.generate(prompts, sampling)]

    def close(self) -> None:
        """Stop vLLM's engine process and free the GPU memory it reserved (unless the LLM was
        only wrapped: its owner closes it)."""
        if self._closed:
            return
        self._closed = True
        if not self._owns_llm:
            return
        engine_core = getattr(self._llm.llm_engine, "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del self._llm
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------ helpers
    def _to_generation(self, index: int, completion: Any, return_logprobs: bool) -> Generation:
        token_ids = list(completion.token_ids)
        reason = completion.finish_reason
        if reason not in ("stop", "length"):
            raise UserError(f"vllm: request {index} ended with finish_reason {reason!r}")
        finish_reason: Literal["stop", "length"] = reason
        logprobs = None
        if return_logprobs:
            # Each step's dict holds the sampled token (plus top-k ones when asked for more).
            logprobs = [
                float(step[token].logprob)
                for step, token in zip(completion.logprobs, token_ids, strict=True)
            ]
        return Generation(
            token_ids=token_ids,
            logprobs=logprobs,
            finish_reason=finish_reason,
            text=self.tokenizer.decode(token_ids, skip_special_tokens=True),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise UserError("vllm engine: used after close()")


def _generation_config(model: str) -> GenerationConfig | None:
    """The checkpoint's generation_config, for its EOS ids; many checkpoints have none."""
    try:
        return GenerationConfig.from_pretrained(model)
    except OSError:
        return None
