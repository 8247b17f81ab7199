"""The ``math`` verifier: the student's final answer against ``task.answer`` with math-verify.

math-verify enforces its timeouts with ``signal.alarm``, which raises outside the main thread
and cannot interrupt a sympy computation that never returns (``(10^{7})!``). So its timeouts
are switched off and every math-verify call runs in a persistent worker process instead: the
caller waits a bounded time for the reply and kills the worker when it overruns. That is safe
from any thread and from any process, including ones started by Kubeflow or DataLoader.

Plain numbers (``12``, ``-0``, ``0.5``, ``1/2``, ``\\frac{1}{2}``, ``1,000``) are decided
exactly in-process without a worker round trip, which covers every arithmetic task and keeps
rollouts fast; anything else goes to math-verify.

Diagnostics: ``expected`` (task.answer), ``got`` (the extracted answer or None),
``parse_error`` (an answer was found but math-verify could not read it), ``numeric_error``
(got - expected as a float when both are numbers, else None; a teacher's "too high by 3"),
``timeout`` (the comparison overran and counts as incorrect), ``unevaluated`` (the reference is a
plain number and the answer is arithmetic still to be done, such as ``-1 + 3`` or ``5 - 5 = 2``:
incorrect, or echoing the question's expression would earn the reward).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import re
import selectors
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

from rl2f.errors import DataError
from rl2f.tasks.schema import Task
from rl2f.tasks.verifiers.base import Verdict, register
from rl2f.tasks.verifiers.extract import Fallback, extract_answer

DEFAULT_TIMEOUT_S = 10.0
# Importing sympy on a loaded two-core machine can take many seconds; the per-call timeout
# must not be charged for it.
WORKER_STARTUP_TIMEOUT_S = 180.0
# A runaway sympy computation should die with MemoryError in the worker, not take the host.
WORKER_MEMORY_LIMIT_BYTES = 4 * 2**30
WORKER_POOL_SIZE = min(4, os.cpu_count() or 1)
# Above this many digits exact rational arithmetic gets slow (quadratic conversions), so huge
# numbers are compared by their canonical spelling only.
MAX_ARITHMETIC_DIGITS = 10_000

# ---------------------------------------------------------------------------------------------
# Fast path: plain numbers, compared exactly in-process.

_DECIMAL = re.compile(r"([+-]?)((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)")
_FRACTION = re.compile(
    r"([+-]?)(?:(\d+)\s*/\s*(\d+)|\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\})"
)


@dataclass(frozen=True)
class PlainNumber:
    """A number written without any operation other than a sign or one fraction bar."""

    # Canonical decimal spelling ("-12.5", "0"); None for a fraction, which has none in general.
    canonical: str | None
    # The exact value; None when there are too many digits for cheap arithmetic.
    value: Fraction | None

    @property
    def is_integer(self) -> bool:
        return self.canonical is not None and "." not in self.canonical


def parse_plain_number(text: str) -> PlainNumber | None:
    text = text.strip()
    if decimal := _DECIMAL.fullmatch(text):
        return _plain_decimal(decimal.group(1), decimal.group(2).replace(",", ""))
    if fraction := _FRACTION.fullmatch(text):
        sign, numerator, denominator = (
            fraction.group(1),
            fraction.group(2) or fraction.group(4),
            fraction.group(3) or fraction.group(5),
        )
        if len(numerator) + len(denominator) > MAX_ARITHMETIC_DIGITS or int(denominator) == 0:
            return None
        value = Fraction(int(numerator), int(denominator))
        return PlainNumber(canonical=None, value=-value if sign == "-" else value)
    return None


def _plain_decimal(sign: str, digits: str) -> PlainNumber:
    whole, _, fractional = digits.partition(".")
    whole, fractional = whole.lstrip("0") or "0", fractional.rstrip("0")
    magnitude = f"{whole}.{fractional}" if fractional else whole
    canonical = magnitude if sign != "-" or magnitude == "0" else f"-{magnitude}"
    value = None
    if len(whole) + len(fractional) <= MAX_ARITHMETIC_DIGITS:
        value = Fraction(canonical)
    return PlainNumber(canonical=canonical, value=value)


def compare_plain_numbers(expected: PlainNumber, got: PlainNumber) -> bool | None:
    """True/False when plain arithmetic decides; None to defer to math-verify, which allows a
    rounding tolerance for non-integers (0.333333 vs 1/3) that exact comparison would not."""
    if expected.is_integer and got.is_integer:
        return expected.canonical == got.canonical
    if expected.canonical is not None and expected.canonical == got.canonical:
        return True
    if expected.value is not None and expected.value == got.value:
        return True
    return None


def numeric_difference(expected: PlainNumber | None, got: PlainNumber | None) -> float | None:
    if expected is None or got is None or expected.value is None or got.value is None:
        return None
    try:
        difference = float(got.value - expected.value)
    except OverflowError:
        return None
    return difference if math.isfinite(difference) else None


# ---------------------------------------------------------------------------------------------
# The math-verify worker process.


class WorkerTimeout(Exception):
    """The worker did not answer in time (the pool then kills it)."""


class WorkerCrashed(Exception):
    """The worker exited or closed its pipe before answering."""


_WORKER_BOOT = "from rl2f.tasks.verifiers.math import serve; serve()"
_READY = b'{"ready": true}'


class _Worker:
    """One child process serving math-verify comparisons, one JSON line per request.

    The reply is read with ``selectors`` on the pipe so the wait is bounded. That is sound with
    a buffered reader only because the worker writes exactly one line per request: nothing is
    ever read ahead past the line being waited for.
    """

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            ready = self._read_line(WORKER_STARTUP_TIMEOUT_S)
        except (WorkerTimeout, WorkerCrashed) as exc:
            self.kill()
            raise RuntimeError(
                f"the math-verify worker did not start ({exc}); see its error output above"
            ) from None
        if ready.strip() != _READY:
            self.kill()
            raise RuntimeError(f"the math-verify worker sent {ready!r} instead of a ready line")

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def request(self, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps(payload).encode() + b"\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerCrashed(f"writing the request failed: {exc}") from None
        return json.loads(self._read_line(timeout_s))

    def _read_line(self, timeout_s: float) -> bytes:
        assert self._process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout_s):
                raise WorkerTimeout(f"no reply within {timeout_s:g} s")
        line = self._process.stdout.readline()
        if not line.endswith(b"\n"):
            raise WorkerCrashed(f"the worker exited with code {self._process.poll()}")
        return line

    def kill(self) -> None:
        self._process.kill()
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()


class _WorkerPool:
    """A few workers shared by all threads: each call borrows one, so concurrent verifies run
    in parallel and a hung comparison only blocks its own caller."""

    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        # LIFO: a single-threaded caller keeps reusing one warm worker instead of starting more.
        self._slots: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        for _ in range(size):
            self._slots.put(None)
        self._started: list[_Worker] = []
        self._started_lock = threading.Lock()

    def compare(self, expected: str, got: str, timeout_s: float) -> dict[str, Any]:
        worker = self._slots.get()
        answered = False
        try:
            if worker is None or not worker.alive:
                worker = self._start()
            response = worker.request({"expected": expected, "got": got}, timeout_s)
            answered = True
            return response
        finally:
            # A worker that did not answer (timeout, crash, Ctrl-C in this thread) may still
            # owe a reply that the next caller would read as its own: replace it.
            if not answered and worker is not None:
                worker.kill()
                worker = None
            self._slots.put(worker)

    def _start(self) -> _Worker:
        worker = _Worker()
        with self._started_lock:
            self._started = [w for w in self._started if w.alive]
            self._started.append(worker)
        return worker

    def shutdown(self) -> None:
        if os.getpid() != self.pid:
            return  # a forked child must not kill its parent's workers
        with self._started_lock:
            for worker in self._started:
                if worker.alive:
                    worker.kill()
            self._started.clear()


_pool: _WorkerPool | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> _WorkerPool:
    """One pool per process. A forked child gets a fresh one: sharing the parent's pipes would
    interleave two processes' requests."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            _pool = _WorkerPool(WORKER_POOL_SIZE)
            atexit.register(_pool.shutdown)
        return _pool


def serve() -> None:
    """Worker main loop (runs in the child process)."""
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    # Anything a library prints must not corrupt the protocol: send fd 1 to stderr.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # Ctrl-C is the parent's business; the worker exits when its stdin closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_memory(WORKER_MEMORY_LIMIT_BYTES)
    # math-verify warns that its timeouts are off on every process start; the timeout is here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _compare_with_math_verify("1", "1")  # import and warm up before declaring ready
    protocol_out.write(_READY.decode() + "\n")
    protocol_out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            response = _compare_with_math_verify(request["expected"], request["got"])
        except Exception as exc:  # MemoryError included: one bad answer must not end the worker
            response = {
                "equal": False,
                "got_parsed": False,
                "numeric_error": None,
                "error": f"{type(exc).__name__}: {exc}"[:500],
            }
        protocol_out.write(json.dumps(response) + "\n")
        protocol_out.flush()


def _limit_memory(limit_bytes: int) -> None:
    try:
        import resource
    except ImportError:  # not on POSIX: no limit, the timeout still applies
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit_bytes = min(limit_bytes, hard)
    if soft == resource.RLIM_INFINITY or soft > limit_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, hard))


def _compare_with_math_verify(expected: str, got: str) -> dict[str, Any]:
    from math_verify import verify

    gold_parsed = _parse_reference(expected)
    got_parsed = _parse_with_math_verify(got)
    equal = bool(verify(list(gold_parsed), list(got_parsed), timeout_seconds=None))
    return {
        "equal": equal,
        "got_parsed": _has_expression(got_parsed),
        "numeric_error": _sympy_difference(gold_parsed, got_parsed),
    }


# A task's reference is compared again at every turn and every training step, and parsing it
# costs as much as parsing the reply; sympy expressions are immutable, so the parse is shared.
@lru_cache(maxsize=4096)
def _parse_reference(text: str) -> tuple[Any, ...]:
    return _parse_with_math_verify(text)


def _parse_with_math_verify(text: str) -> tuple[Any, ...]:
    """Parse one answer span. A plain expression (``10**5``, ``2 + 3``) is taken only if it
    spans the whole text, so a number inside prose is not read as the answer; anything else
    is read as LaTeX, where prose turns into a product of symbols and fails to match."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    as_expression = parse(text, extraction_config=[ExprExtractionConfig()], parsing_timeout=None)
    if len(as_expression) == 2 and _squeeze(as_expression[1]) == _squeeze(text):
        return tuple(as_expression)
    return tuple(
        parse(
            f"${text}$",
            extraction_config=[LatexExtractionConfig()],
            parsing_timeout=None,
        )
    )


def _squeeze(text: Any) -> str:
    return re.sub(r"[\s,]", "", str(text))


def _has_expression(parsed: tuple[Any, ...]) -> bool:
    from sympy import Basic, MatrixBase

    return any(isinstance(item, Basic | MatrixBase) for item in parsed)


def _sympy_difference(gold: tuple[Any, ...], got: tuple[Any, ...]) -> float | None:
    from sympy import Expr

    if not gold or not got or not isinstance(gold[0], Expr) or not isinstance(got[0], Expr):
        return None
    if not (gold[0].is_number and got[0].is_number):
        return None
    try:
        difference = complex((got[0] - gold[0]).evalf(15, chop=True))
    except (TypeError, ValueError, OverflowError, ArithmeticError):
        return None
    if difference.imag != 0 or not math.isfinite(difference.real):
        return None
    return difference.real


# ---------------------------------------------------------------------------------------------
# The verifier.

# Two numbers joined by an operator or an equals sign: an answer that still holds arithmetic.
_UNEVALUATED = re.compile(r"\d\s*[-+*/×÷=]\s*[-+]?\s*\d")


@register("math")
class MathVerifier:
    name = "math"

    def __init__(
        self, timeout_s: float = DEFAULT_TIMEOUT_S, fallback: Fallback = Fallback.LAST_LINE
    ) -> None:
        self.timeout_s = timeout_s
        self.fallback = fallback

    def verify(self, task: Task, response: str) -> Verdict:
        expected = task.answer.strip()
        if not expected:
            raise DataError(f"task {task.id}: field 'answer' is empty; 'math' needs a reference")
        got = extract_answer(response, fallback=self.fallback)
        diagnostics: dict[str, Any] = {
            "expected": task.answer,
            "got": got,
            "parse_error": False,
            "numeric_error": None,
            "timeout": False,
        }
        if got is None:
            return Verdict(correct=False, extracted=None, diagnostics=diagnostics)

        expected_number, got_number = parse_plain_number(expected), parse_plain_number(got)
        diagnostics["numeric_error"] = numeric_difference(expected_number, got_number)
        if expected_number is not None and got_number is None and _UNEVALUATED.search(got):
            diagnostics["unevaluated"] = True
            return Verdict(correct=False, extracted=got, diagnostics=diagnostics)
        if expected_number is not None and got_number is not None:
            decided = compare_plain_numbers(expected_number, got_number)
            if decided is not None:
                return Verdict(correct=decided, extracted=got, diagnostics=diagnostics)

        try:
            result = _shared_pool().compare(expected, got, self.timeout_s)
        except WorkerTimeout:
            diagnostics["timeout"] = True
            return Verdict(correct=False, extracted=got, diagnostics=diagnostics)
        except WorkerCrashed as exc:
            diagnostics.update(parse_error=True, error=f"math-verify worker crashed: {exc}")
            return Verdict(correct=False, extracted=got, diagnostics=diagnostics)
        diagnostics["parse_error"] = not result["got_parsed"]
        if diagnostics["numeric_error"] is None:
            diagnostics["numeric_error"] = result["numeric_error"]
        if "error" in result:
            diagnostics["error"] = result["error"]
        return Verdict(correct=bool(result["equal"]), extracted=got, diagnostics=diagnostics)
