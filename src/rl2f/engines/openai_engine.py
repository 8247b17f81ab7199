"""Chat with a model served elsewhere over the OpenAI-compatible chat completions API (a vLLM
teacher on the cluster, ``transformers serve`` locally, or a hosted API).

Built on the ``openai`` client, which already retries connection errors, timeouts, 408/409/429
and 5xx answers with exponential backoff and jitter (and honours ``Retry-After``); this module
adds the concurrency and turns the client's exceptions into one-line errors that name the URL.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import openai

from rl2f.config import SamplingConfig
from rl2f.engines import check_conversations, request_seed
from rl2f.engines.base import Message
from rl2f.errors import UserError

# Servers without authentication (vLLM, transformers serve) accept any key; the client needs one.
NO_KEY = "EMPTY"
MAX_DETAIL_CHARS = 300


class OpenAIChatEngine:
    """A :class:`~rl2f.engines.base.ChatEngine`: one chat completion request per conversation,
    ``concurrency`` of them in flight at once, answers returned in input order."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 3,
        concurrency: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=os.environ.get(api_key_env) or NO_KEY,
            timeout=timeout_s,
            max_retries=max_retries,
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai-chat")
        self._closed = False

    def chat(self, conversations: list[list[Message]], sampling: SamplingConfig) -> list[str]:
        if self._closed:
            raise UserError(f"{self.base_url}: openai engine used after close()")
        check_conversations(conversations)
        jobs = [
            (i, conversation, request_seed(sampling.seed, i))
            for i, conversation in enumerate(conversations)
        ]
        return list(self._pool.map(lambda job: self._complete(*job, sampling), jobs))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def _complete(
        self, index: int, conversation: list[Message], seed: int, sampling: SamplingConfig
    ) -> str:
        url = f"{self.base_url}/chat/completions"
        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=conversation,  # type: ignore[arg-type]
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed,
            )
        except openai.APIStatusError as exc:
            tried = self._tries() if _is_retried(exc.status_code) else ""
            raise UserError(
                f"{url}: HTTP {exc.status_code}{tried}: {_one_line(exc.message)}"
            ) from None
        except openai.APITimeoutError:
            raise UserError(
                f"{url}: no answer within {self.timeout_s:g} s{self._tries()}"
            ) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise UserError(
                f"{url}: cannot connect{self._tries()} ({_one_line(str(cause))})"
            ) from None
        if not response.choices or response.choices[0].message.content is None:
            raise UserError(f"{url}: conversation {index}: the reply has no message content")
        return response.choices[0].message.content

    def _tries(self) -> str:
        return f" after {self.max_retries + 1} attempts" if self.max_retries else ""


def _is_retried(status: int) -> bool:
    """The statuses the openai client retries before giving up: timeouts, conflicts, rate
    limits and server errors. Other 4xx answers are the request's fault and fail at once."""
    return status in (408, 409, 429) or status >= 500


def _one_line(text: str) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= MAX_DETAIL_CHARS else flat[: MAX_DETAIL_CHARS - 3] + "..."
