"""Chat with a model served elsewhere over the OpenAI-compatible chat completions API (a vLLM
teacher on the cluster, ``transformers serve`` locally, or a hosted API).

Built on the ``openai`` client for the requests themselves; the retries are ours (the client's
are switched off) because the client's cannot be counted, do not cover a 200 whose body is
not a chat completion, and may sleep up to two minutes on a server's ``Retry-After``. Every
conversation either gets its reply or raises a one-line :class:`UserError` naming the URL,
the conversation and what went wrong, after at most ``max_retries + 1`` attempts; waits
between attempts are bounded by ``max_retry_wait_s``. ``engine.stats`` counts what happened
(retries, rate limits, failures, ...) so a stage can log it with its metrics.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import openai

from rl2f.config import SamplingConfig
from rl2f.engines import check_conversations, request_seed
from rl2f.engines.base import Message
from rl2f.errors import UserError

log = logging.getLogger(__name__)

# Servers without authentication (vLLM, transformers serve) accept any key; the client needs one.
NO_KEY = "EMPTY"
MAX_DETAIL_CHARS = 300
DEFAULT_MAX_RETRY_WAIT_S = 30.0
DEFAULT_BACKOFF_S = 0.5
BACKOFF_CAP_S = 8.0
# The counters of ``engine.stats``, all present from the start (zero) so metrics line up.
STAT_NAMES = (
    "requests",  # conversations asked for
    "completed",  # conversations answered
    "failures",  # conversations given up on (each raised a UserError)
    "attempts",  # HTTP requests sent, retries included
    "retries",  # attempts after the first
    "rate_limited",  # 429 answers
    "server_errors",  # 5xx answers (and 408/409)
    "timeouts",  # attempts with no answer within timeout_s
    "connection_errors",  # refused, reset mid-reply, ...
    "malformed_replies",  # 200 answers that are not a chat completion with content
)


@dataclass
class _Fault(Exception):
    """One failed attempt: what to count, what to tell the user, whether to try again."""

    kind: str  # a STAT_NAMES counter, or "" for a fault not worth counting on its own
    headline: str  # e.g. "HTTP 503"; the error reads "<url>: <headline> after N attempts: <more>"
    retryable: bool
    retry_after_s: float | None = None
    more: str = ""


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
        max_retry_wait_s: float = DEFAULT_MAX_RETRY_WAIT_S,
        backoff_s: float = DEFAULT_BACKOFF_S,
    ) -> None:
        if max_retries < 0 or not (max_retry_wait_s >= 0 and backoff_s >= 0):
            raise UserError("openai engine: max_retries, max_retry_wait_s and backoff_s >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s
        self.backoff_s = backoff_s
        self._url = f"{self.base_url}/chat/completions"
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=os.environ.get(api_key_env) or NO_KEY,
            timeout=timeout_s,
            max_retries=0,  # retried below, where each retry is counted and bounded
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai-chat")
        self._counts: Counter[str] = Counter(dict.fromkeys(STAT_NAMES, 0))
        self._counts_lock = threading.Lock()
        self._closed = False

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters since the engine was made (see ``STAT_NAMES``)."""
        with self._counts_lock:
            return dict(self._counts)

    def chat(self, conversations: list[list[Message]], sampling: SamplingConfig) -> list[str]:
        if self._closed:
            raise UserError(f"{self.base_url}: openai engine used after close()")
        check_conversations(conversations)
        seeds = [request_seed(sampling.seed, i) for i in range(len(conversations))]
        futures = [
            self._pool.submit(self._complete, i, conversation, seeds[i], sampling)
            for i, conversation in enumerate(conversations)
        ]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        if pending:  # something failed: do not start what is left of a failing batch
            _stop_the_rest(futures)
        for future in futures:  # the first failure in input order, if any, is raised
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]  (a UserError from _complete)
        return [future.result() for future in futures]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    # ------------------------------------------------------------ one conversation

    def _complete(
        self, index: int, conversation: list[Message], seed: int, sampling: SamplingConfig
    ) -> str:
        self._count("requests")
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count("retries")
            self._count("attempts")
            try:
                text = self._attempt(index, conversation, seed, sampling)
            except _Fault as fault:
                if fault.kind:
                    self._count(fault.kind)
                if not fault.retryable or attempt == self.max_retries:
                    self._count("failures")
                    raise UserError(self._give_up_message(fault, attempt + 1, index)) from None
                wait_s = self._wait_before_retry(attempt, fault.retry_after_s)
                log.info("%s: %s; retrying in %.2f s", self._url, fault.headline, wait_s)
                time.sleep(wait_s)
                continue
            self._count("completed")
            return text
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempt(
        self, index: int, conversation: list[Message], seed: int, sampling: SamplingConfig
    ) -> str:
        """One HTTP request; every way it can fail becomes a _Fault."""
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
            raise _status_fault(exc) from None
        except openai.APITimeoutError:
            raise _Fault("timeouts", f"no answer within {self.timeout_s:g} s", True) from None
        except openai.APIConnectionError as exc:
            cause = _one_line(str(exc.__cause__ or exc))
            raise _Fault("connection_errors", "cannot connect", True, more=cause) from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            # ValueError: the client's json.JSONDecodeError on a body that is not JSON.
            more = _one_line(str(exc))
            raise _Fault("malformed_replies", "the reply is not JSON", True, more=more) from None
        return _content_of(response, index)

    def _wait_before_retry(self, attempt: int, retry_after_s: float | None) -> float:
        """The server's Retry-After when it gave one, else exponential backoff with jitter;
        never longer than max_retry_wait_s."""
        if retry_after_s is not None:
            wait_s = retry_after_s
        else:
            wait_s = min(self.backoff_s * 2.0**attempt, BACKOFF_CAP_S) * random.uniform(0.75, 1)
        return max(0.0, min(wait_s, self.max_retry_wait_s))

    def _give_up_message(self, fault: _Fault, attempts: int, index: int) -> str:
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        more = f": {fault.more}" if fault.more else ""
        which = f"conversation {index}"
        named = "" if fault.headline.startswith(which) else f" ({which})"
        return f"{self._url}: {fault.headline}{tried}{more}{named}"

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1


def _stop_the_rest(futures: list[Future[str]]) -> None:
    """Cancel what has not started and wait for what has (each is bounded by its own retry
    budget), so no request of a failed batch is still running once chat() raises."""
    for future in futures:
        future.cancel()
    wait(futures)


def _status_fault(exc: openai.APIStatusError) -> _Fault:
    status = exc.status_code
    # The client prefixes "Error code: 500 - "; the headline already says it.
    more = _one_line(exc.message.removeprefix(f"Error code: {status} - "))
    headline = f"HTTP {status}"
    retry_after_s = _retry_after_s(exc.response.headers)
    if status == 429:
        return _Fault("rate_limited", headline, True, retry_after_s, more)
    if _is_retried(status):
        return _Fault("server_errors", headline, True, retry_after_s, more)
    return _Fault("", headline, False, more=more)  # the request's fault: a retry cannot help


def _content_of(response: Any, index: int) -> str:
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError):
        content = None
    if not isinstance(content, str):
        headline = f"conversation {index}: the reply has no message content"
        raise _Fault("malformed_replies", headline, True)
    return content


def _retry_after_s(headers: Any) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, or ``retry-after`` in seconds
    or as an HTTP date; None when absent or unreadable."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        return seconds if math.isfinite(seconds) else None
    date = headers.get("retry-after")
    parsed = email.utils.parsedate_tz(date) if date else None
    return email.utils.mktime_tz(parsed) - time.time() if parsed else None


def _is_retried(status: int) -> bool:
    """Statuses worth another try: timeouts, conflicts, rate limits and server errors. Other
    4xx answers are the request's fault and fail at once."""
    return status in (408, 409, 429) or status >= 500


def _one_line(text: str) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= MAX_DETAIL_CHARS else flat[: MAX_DETAIL_CHARS - 3] + "..."
