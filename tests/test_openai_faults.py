"""The OpenAI-compatible engine against a real teacher server on loopback that misbehaves:
slow, failing (500), rate limiting (429 + Retry-After), resetting the connection mid-reply,
answering 200 with a body that is not JSON or has no content, and one conversation of a batch
that always fails. Every request must end in a reply or a one-line error after a bounded
number of attempts, and ``engine.stats`` must count what happened."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from servers import FaultyChatServer

from rl2f.config import SamplingConfig
from rl2f.engines.openai_engine import STAT_NAMES, OpenAIChatEngine
from rl2f.errors import UserError

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=8)


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def first_then(*faults: str) -> Callable[[int, str], str]:
    """Answer each message's attempts with ``faults`` in turn, then normally."""
    return lambda attempt, _message: faults[attempt] if attempt < len(faults) else "ok"


@contextmanager
def engine_for(
    script: Callable[[int, str], str], server_kw: dict | None = None, **engine_kw: object
) -> Iterator[tuple[OpenAIChatEngine, FaultyChatServer]]:
    options = {"timeout_s": 2.0, "max_retries": 2, "concurrency": 4, "backoff_s": 0.01}
    with FaultyChatServer(script, **(server_kw or {})) as server:
        engine = OpenAIChatEngine(base_url=server.url, model="teacher", **(options | engine_kw))
        try:
            yield engine, server
        finally:
            engine.close()


def test_stats_start_at_zero_and_count_a_clean_batch() -> None:
    with engine_for(first_then()) as (engine, _server):
        assert engine.stats == dict.fromkeys(STAT_NAMES, 0)
        assert engine.chat([user("a"), user("b")], GREEDY) == ["echo: a", "echo: b"]
        stats = engine.stats
    assert (stats["requests"], stats["completed"], stats["attempts"]) == (2, 2, 2)
    assert stats["retries"] == stats["failures"] == 0


@pytest.mark.parametrize(
    ("fault", "counter"),
    [
        ("500", "server_errors"),
        ("429", "rate_limited"),
        ("reset", "connection_errors"),
        ("malformed", "malformed_replies"),
        ("empty", "malformed_replies"),
    ],
)
def test_a_passing_fault_is_retried_and_counted(fault: str, counter: str) -> None:
    with engine_for(first_then(fault, fault)) as (engine, server):
        assert engine.chat([user("hello")], GREEDY) == ["echo: hello"]
        stats = engine.stats
    assert server.faults_for("hello") == [fault, fault, "ok"]
    assert stats[counter] == 2
    assert (stats["retries"], stats["attempts"], stats["completed"], stats["failures"]) == (
        2, 3, 1, 0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("500", r"HTTP 500 after 3 attempts: scripted 500 \(conversation 0\)$"),
        ("429", r"HTTP 429 after 3 attempts: slow down \(conversation 0\)$"),
        ("reset", r"cannot connect after 3 attempts: .*\(conversation 0\)$"),
        ("malformed", r"the reply is not JSON after 3 attempts: .*\(conversation 0\)$"),
        ("empty", r"conversation 0: the reply has no message content after 3 attempts"),
        ("slow", r"no answer within 0.3 s after 3 attempts \(conversation 0\)$"),
    ],
)
def test_a_lasting_fault_raises_one_clear_line_after_the_retry_budget(
    fault: str, message: str
) -> None:
    with engine_for(lambda *_: fault, timeout_s=0.3) as (engine, server):
        started = time.monotonic()
        with pytest.raises(UserError, match=message) as raised:
            engine.chat([user("hello")], GREEDY)
        elapsed = time.monotonic() - started
        stats = engine.stats
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith(f"{server.url}/chat/completions: ")
    assert len(server.faults_for("hello")) == 3  # max_retries=2: three attempts, no more
    assert (stats["attempts"], stats["retries"], stats["failures"], stats["completed"]) == (
        3, 2, 1, 0,
    )  # fmt: skip
    assert elapsed < 3 * 0.3 + 2.0


def test_retry_after_is_honoured() -> None:
    script = first_then("429")
    with engine_for(script, server_kw={"retry_after": "0.4"}) as (engine, server):
        assert engine.chat([user("hello")], GREEDY) == ["echo: hello"]
        assert engine.stats["rate_limited"] == 1
    (_, _, limited_at), (_, _, retried_at) = server.seen
    assert retried_at - limited_at >= 0.4


def test_a_long_retry_after_is_capped_by_max_retry_wait_s() -> None:
    # The server asks for an hour; the engine waits its own bound instead, then tries again.
    script = first_then("429")
    kw = {"server_kw": {"retry_after": "3600"}, "max_retry_wait_s": 0.2}
    with engine_for(script, **kw) as (engine, server):  # type: ignore[arg-type]
        started = time.monotonic()
        assert engine.chat([user("hello")], GREEDY) == ["echo: hello"]
        assert time.monotonic() - started < 2.0
    (_, _, limited_at), (_, _, retried_at) = server.seen
    assert 0.2 <= retried_at - limited_at < 1.5


def test_a_slow_server_within_the_timeout_is_waited_for() -> None:
    with engine_for(first_then("slow"), server_kw={"slow_s": 0.3}, timeout_s=2.0) as (engine, _):
        assert engine.chat([user("hello")], GREEDY) == ["echo: hello"]
        assert engine.stats["timeouts"] == 0


def test_one_failing_conversation_fails_the_batch_by_name_and_stops_the_rest() -> None:
    def script(_attempt: int, message: str) -> str:
        return "500" if message == "poison" else "slow"

    batch = [user(f"q{i}") for i in range(3)] + [user("poison")] + [user(f"q{i}") for i in (4, 5)]
    with engine_for(script, server_kw={"slow_s": 0.2}, concurrency=4) as (engine, server):
        with pytest.raises(UserError, match=r"HTTP 500 after 3 attempts.*\(conversation 3\)$"):
            engine.chat(batch, GREEDY)
        # chat() returned only once every request it started had ended: nothing still runs.
        stats = engine.stats
        seen_then = len(server.seen)
        time.sleep(0.5)
        assert len(server.seen) == seen_then
        assert stats["failures"] == 1
        assert stats["requests"] == stats["completed"] + stats["failures"]
        # The engine is still usable afterwards, and accounts for every request.
        assert engine.chat([user("again")], GREEDY) == ["echo: again"]


def test_concurrent_faults_do_not_deadlock() -> None:
    """Many conversations, each meeting a different fault first, several chat() calls at
    once from different threads: every one returns its own replies, in order."""
    faults = ["500", "429", "reset", "malformed", "empty", "ok"]

    def script(attempt: int, message: str) -> str:
        return faults[int(message.split("-")[1]) % len(faults)] if attempt == 0 else "ok"

    with engine_for(script, concurrency=3) as (engine, _server):
        results: dict[int, list[str]] = {}

        def caller(k: int) -> None:
            results[k] = engine.chat([user(f"{k}-{i}") for i in range(12)], GREEDY)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads), "chat() deadlocked"
        stats = engine.stats
    assert results == {k: [f"echo: {k}-{i}" for i in range(12)] for k in range(3)}
    assert stats["completed"] == stats["requests"] == 36
    assert stats["retries"] == 30 and stats["failures"] == 0


def test_an_llm_teacher_reports_its_engines_counters_for_the_stage_metrics() -> None:
    """The rollout stage puts ``teacher.engine_stats()`` into its summary: an LLM teacher over
    a rate-limiting server reports the retry, rule-based teachers report nothing."""
    from rl2f.config import TeacherConfig
    from rl2f.tasks.schema import Task
    from rl2f.tasks.verifiers import verify
    from rl2f.teachers import make_teacher
    from rl2f.teachers.base import CritiqueRequest

    task = Task(domain="math", source="test", prompt="What is 2 + 3?", answer="5", verifier="math")
    request = CritiqueRequest(task, user(task.prompt), "Answer: 4", verify(task, "Answer: 4"), 1)
    with engine_for(first_then("429")) as (engine, _server):
        teacher = make_teacher(TeacherConfig(kind="llm", model="teacher"), engine=engine)
        (critique,) = teacher.critique([request])
        assert critique.startswith("echo:")
        stats = teacher.engine_stats()
    assert stats["rate_limited"] == 1 and stats["retries"] == 1 and stats["completed"] == 1
    assert make_teacher(TeacherConfig(kind="oracle")).engine_stats() == {}
