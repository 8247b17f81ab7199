"""The ``code`` verifier: runs the student's program against the task's unit tests in the
sandbox (:mod:`rl2f.tasks.sandbox`), never in this process.

Tests are HumanEval style: ``verifier_config["test"]`` defines ``check(candidate)``, mostly a
list of asserts such as ``assert candidate([1, 2]) == 3``. The diagnostics are written for a
teacher who must explain a failure without revealing the solution, so each top-level assert of
``check`` runs on its own (one failure does not hide the others) and, for asserts about one
call, records the call, the expected value as written in the test and what the program actually
returned or raised. All of that happens in ONE sandbox run: a generated harness reports each
step on stdout lines that start with a random nonce (read from stdin, so the program cannot
simply print a fake report).

A pass needs the harness's final ``done`` report and a clean exit, so a program that exits
early (``os._exit(0)``, ``sys.exit(0)``, closing stdout) fails. What the entry point returns
must be plain data (exact builtin types, checked recursively), so an object whose ``__eq__``
always returns True fails instead of passing every ``==``. The tests run in their own
namespace with builtins copied before the program loads, so rebinding ``builtins.abs`` does
not fool them. Not closed: the program shares the harness's process, so code written to
rewrite the harness in memory (find the nonce through frames and forge reports, patch
``math.isclose``) could still fake a pass, as with HumanEval's own in-process ``check``.
Closing that needs the judge in another process (docs/reliability.md). The sandbox is what
keeps the machine safe, not the harness.

``verifier_config`` keys: ``test`` (source defining ``check``), ``entry_point`` (the function
name), optional ``timeout_s`` (default 5), ``memory_mb`` (default 512) and ``prelude`` (code
run before the program, e.g. the HumanEval prompt, so helpers and imports the student was shown
exist even when the answer does not repeat them; the program must still define the entry point).

Diagnostics keys: ``status`` (sandbox status), ``error`` (program-level problem or None),
``total`` and ``failed`` (tests), ``tests`` (at most 20 entries, failures first to keep:
``source``, ``passed``, ``call``, ``expected``, ``actual``, ``error``), ``check_passed`` (the
verdict of running the real ``check(candidate)`` whole, which is the final authority when
``check`` holds more than plain asserts; None when not needed) and ``extracted_chars``.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
import secrets
import signal
import textwrap
from dataclasses import asdict, dataclass
from typing import Any

from rl2f.errors import DataError
from rl2f.tasks.python_ast import parse_python
from rl2f.tasks.sandbox import SandboxResult, run_python
from rl2f.tasks.schema import Task
from rl2f.tasks.verifiers.base import Verdict, register

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_MB = 512
MAX_REPORTED_TESTS = 20
_TEXT_CAP = 300
_REPORT_CAP_BYTES = 1 << 20  # room for thousands of step reports (each repr is capped)
_PYTHON_TAGS = frozenset({"python", "python3", "py", "py3"})
_FENCE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<tag>[\w+#.-]*)[^\n]*\n(?P<body>.*?)"
    r"(?:^[ \t]*(?P=fence)[ \t]*$|\Z)",
    re.MULTILINE | re.DOTALL,
)
_ACTUAL = "__rl2f_actual__"
_NUMERIC_CLOSENESS = frozenset({"abs", "fabs"})
_ISCLOSE = frozenset({"isclose"})

# The harness runs in the sandbox as main.py; the program is solution.py next to it. It reads
# its instructions (nonce, tests, steps) from stdin so nothing secret is on disk, sends the
# program's own prints to a sink, and reports each step as soon as it finishes, so a run that
# hangs or crashes still tells which step did it.
_HARNESS = r"""
import builtins, json, os, reprlib, sys

_dumps = json.dumps
_brief = reprlib.Repr()
_brief.maxlevel = 4
_brief.maxstring = _brief.maxother = _brief.maxlong = 200
_brief.maxlist = _brief.maxtuple = _brief.maxset = _brief.maxfrozenset = 30
_brief.maxdict = _brief.maxdeque = _brief.maxarray = 30


class _Sink:
    def write(self, text):
        return len(text)

    def flush(self):
        return None  # nothing is buffered: everything written is discarded


def _brief_repr(value):
    try:
        text = _brief.repr(value)
    except BaseException as exc:
        return "<unprintable %s: %s>" % (type(value).__name__, type(exc).__name__)
    return text if len(text) <= 400 else text[:397] + "..."


def _describe(exc, program_lines, code_lines=None):
    try:
        message = str(exc)
    except BaseException:
        message = "<unprintable message>"
    text = type(exc).__name__ + (": " + message if message else "")
    where = None
    frames = exc.__traceback__
    while frames is not None:
        name, lineno = frames.tb_frame.f_code.co_filename, frames.tb_lineno
        frames = frames.tb_next
        if name == "solution.py" and 0 < lineno <= len(program_lines):
            where = " (solution.py, line %d: %s)" % (lineno, program_lines[lineno - 1].strip())
        elif name == "<check>" and code_lines and where is None and 0 < lineno <= len(code_lines):
            where = " (at: %s)" % code_lines[lineno - 1].strip()
    return (text + (where or ""))[:600]


# Answers must be plain data, compared by these exact types' own (unpatchable) methods: an
# object whose __eq__ always returns True, or an int subclass that does, would pass any
# `assert candidate(x) == expected`.
_PLAIN_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes})
_PLAIN_CONTAINERS = frozenset({list, tuple, set, frozenset, dict})
_PLAIN_NAMES = "None, bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict"


def _first_non_plain(value, _type=type, _id=id):
    # The first part of value that is not plain data, or None (cycles are fine).
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        kind = _type(item)
        if kind in _PLAIN_ATOMS:
            continue
        if kind not in _PLAIN_CONTAINERS:
            return item
        if _id(item) not in seen:
            seen.add(_id(item))
            stack.extend(dict.keys(item) if kind is dict else item)
            if kind is dict:
                stack.extend(dict.values(item))
    return None


def _plain_results_only(candidate, _type=type):
    def checked(*args, **kwargs):
        value = candidate(*args, **kwargs)
        odd = _first_non_plain(value)
        if odd is not None:
            inside = "" if odd is value else " holding a %s" % _type(odd).__name__
            raise TypeError(
                "returned a %s object%s; answers must be plain data (%s)"
                % (_type(value).__name__, inside, _PLAIN_NAMES)
            )
        return value

    return checked


def main():
    # Taken before any untrusted code runs: the tests see these builtins even if the program
    # rebinds builtins.abs or builtins.isinstance.
    pristine_builtins = dict(vars(builtins))
    payload = json.loads(sys.stdin.read())
    # Stdin is a file that still holds the tests and the nonce: put /dev/null in its place so
    # the program cannot seek back or reopen /proc/self/fd/0 to read them.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    nonce = payload["nonce"]
    report = sys.stdout
    write, flush = report.write, report.flush

    def emit(**event):
        write("\n" + nonce + " " + _dumps(event) + "\n")
        flush()

    sys.stdout = sys.stderr = _Sink()
    program = open("solution.py", encoding="utf-8").read()
    program_lines = program.splitlines()
    ns = {"__name__": "solution", "__builtins__": builtins}
    # The tests live in their own namespace, loaded before the program can touch anything.
    tests_ns = {"__name__": "tests", "__builtins__": pristine_builtins}

    emit(event="start", phase="load")
    for namespace in (tests_ns, ns):
        try:
            exec(compile(payload["prelude"], "prelude.py", "exec"), namespace)
        except BaseException as exc:
            error = "the task prelude failed: " + _describe(exc, [])
            emit(event="result", phase="load", error=error)
            return
    try:
        exec(compile(payload["test"], "<tests>", "exec"), tests_ns)
    except BaseException as exc:
        error = "the task tests failed to load: " + _describe(exc, [])
        emit(event="result", phase="load", error=error)
        return
    before = ns.get(payload["entry_point"])
    try:
        exec(compile(program, "solution.py", "exec"), ns)
    except BaseException as exc:
        emit(event="result", phase="load", error=_describe(exc, program_lines))
        return
    candidate = ns.get(payload["entry_point"])
    if candidate is None or candidate is before or not callable(candidate):
        error = "the program does not define a function named %r" % payload["entry_point"]
        emit(event="result", phase="load", error=error)
        return
    emit(event="result", phase="load", error=None)

    # Names the tests use but neither they nor the prelude define (helpers such as HumanEval's
    # poly() when no prelude is given) come from the program.
    for name, value in ns.items():
        tests_ns.setdefault(name, value)
    candidate = _plain_results_only(candidate)
    scope = dict(tests_ns)
    scope[payload["param"]] = candidate
    for index, step in enumerate(payload["steps"]):
        emit(event="start", phase=index)
        emit(event="result", phase=index, **_run_step(step, scope, program_lines))
    if payload["run_whole_check"]:
        emit(event="start", phase="check")
        try:
            tests_ns["check"](candidate)
        except BaseException as exc:
            emit(event="result", phase="check", passed=False, error=_describe(exc, program_lines))
        else:
            emit(event="result", phase="check", passed=True, error=None)
    emit(event="done")


def _run_step(step, scope, program_lines):
    code_lines = step["code"].splitlines()
    if step["call_code"] is None:
        try:
            exec(compile(step["code"], "<check>", "exec"), scope)
        except BaseException as exc:
            error = _describe(exc, program_lines, code_lines)
            return {"passed": False, "actual": None, "error": error}
        return {"passed": True, "actual": None, "error": None}
    try:
        actual = eval(compile(step["call_code"], "<check>", "eval"), scope)
    except BaseException as exc:
        return {"passed": False, "actual": None, "error": _describe(exc, program_lines)}
    scope["__rl2f_actual__"] = actual
    try:
        exec(compile(step["code"], "<check>", "exec"), scope)
    except AssertionError:
        return {"passed": False, "actual": _brief_repr(actual), "error": None}
    except BaseException as exc:
        error = _describe(exc, program_lines, code_lines)
        return {"passed": False, "actual": _brief_repr(actual), "error": error}
    return {"passed": True, "actual": _brief_repr(actual), "error": None}


main()
"""


@dataclass(frozen=True)
class CodeTestConfig:
    test: str
    entry_point: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    prelude: str = ""

    @classmethod
    def from_task(cls, task: Task) -> CodeTestConfig:
        config = task.verifier_config

        def bad(field: str, why: str) -> DataError:
            return DataError(f"task {task.id}: verifier_config.{field} {why}")

        test, entry_point = config.get("test"), config.get("entry_point")
        if not isinstance(test, str) or not test.strip():
            raise bad("test", "must be test source defining check(candidate)")
        if not isinstance(entry_point, str) or not entry_point.isidentifier():
            raise bad("entry_point", f"must be a function name, got {entry_point!r}")
        timeout_s = config.get("timeout_s", DEFAULT_TIMEOUT_S)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
            raise bad("timeout_s", f"must be a number of seconds, got {timeout_s!r}")
        if not (math.isfinite(timeout_s) and 0 < timeout_s <= 600):
            raise bad("timeout_s", f"must be in (0, 600] seconds, got {timeout_s!r}")
        memory_mb = config.get("memory_mb", DEFAULT_MEMORY_MB)
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
            raise bad("memory_mb", f"must be an integer >= 64, got {memory_mb!r}")
        prelude = config.get("prelude", "")
        if not isinstance(prelude, str):
            raise bad("prelude", "must be Python source")
        return cls(test, entry_point, float(timeout_s), memory_mb, prelude)


@dataclass(frozen=True)
class _Step:
    """One top-level statement of check(). ``code`` is what the harness executes: for an
    assert about one call, the assert with that call replaced by its value (``call_code``
    is evaluated first, so the value can be reported even when the assert fails)."""

    source: str
    code: str
    is_test: bool
    call: str | None = None
    call_code: str | None = None
    expected: str | None = None


@dataclass(frozen=True)
class _CheckPlan:
    param: str
    steps: tuple[_Step, ...]
    # check() holds more than plain asserts: running it whole is the final authority.
    run_whole_check: bool


@register("code")
class CodeVerifier:
    name = "code"

    def verify(self, task: Task, response: str) -> Verdict:
        config = CodeTestConfig.from_task(task)
        try:
            plan = _plan_check(config.test)
        except ValueError as exc:
            raise DataError(f"task {task.id}: verifier_config.test {exc}") from None
        program = extract_program(response, config.entry_point)
        nonce = secrets.token_hex(16)
        instructions = {
            "nonce": nonce,
            "entry_point": config.entry_point,
            "prelude": config.prelude,
            "test": config.test,
            "param": plan.param,
            "run_whole_check": plan.run_whole_check,
            "steps": [asdict(step) for step in plan.steps],
        }
        result = run_python(
            _HARNESS,
            config.timeout_s,
            config.memory_mb,
            stdin=json.dumps(instructions),
            files={"solution.py": program},
            output_cap_bytes=_REPORT_CAP_BYTES,
        )
        events = _read_events(result.stdout, nonce)
        correct, diagnostics = _diagnose(plan, events, result, config)
        diagnostics["extracted_chars"] = len(program)
        return Verdict(correct=correct, extracted=program or None, diagnostics=diagnostics)


def extract_program(response: str, entry_point: str | None = None) -> str:
    """The program in a reply: a ```python block if there is one, else any fenced block, else
    the raw text. Among several, blocks that define the entry point win, then the largest."""
    blocks = [(m.group("tag").lower(), m.group("body")) for m in _FENCE.finditer(response)]
    if not blocks:
        return response.strip()
    chosen = [body for tag, body in blocks if tag in _PYTHON_TAGS] or [body for _, body in blocks]
    if entry_point:
        defines = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.M)
        chosen = [body for body in chosen if defines.search(body)] or chosen
    _, largest = max(enumerate(chosen), key=lambda item: (len(item[1]), item[0]))
    return largest.strip("\n")


@functools.lru_cache(maxsize=1024)
def _plan_check(test_source: str) -> _CheckPlan:
    """Split check(candidate) into steps; raises ValueError (one line) on unusable tests."""
    try:
        module = parse_python(test_source)
    except SyntaxError as exc:
        raise ValueError(f"is not valid Python: {exc.msg} (line {exc.lineno})") from None
    check = next(
        (n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None
    )
    if check is None or len(check.args.args) != 1:
        raise ValueError("must define check(candidate) with one parameter")
    param = check.args.args[0].arg
    steps = tuple(_plan_step(test_source, statement, param) for statement in check.body)
    plain = all(isinstance(statement, ast.Assert) for statement in check.body)
    return _CheckPlan(param=param, steps=steps, run_whole_check=not plain)


def _plan_step(source: str, statement: ast.stmt, param: str) -> _Step:
    text = ast.get_source_segment(source, statement, padded=True) or ast.unparse(statement)
    text = textwrap.dedent(text)
    if isinstance(statement, ast.Assert) and isinstance(statement.test, ast.Constant):
        return _Step(source=text, code=text, is_test=False)  # `assert True, "..."`: no test
    is_test = any(isinstance(node, ast.Assert) for node in ast.walk(statement))
    if not isinstance(statement, ast.Assert):
        return _Step(source=text, code=text, is_test=is_test)
    calls = _outer_calls(statement.test, param)
    if len(calls) != 1 or not _always_evaluated(statement.test, calls[0]):
        return _Step(source=text, code=text, is_test=True)
    call = calls[0]
    call_text = ast.get_source_segment(source, call) or ast.unparse(call)
    call_code = ast.unparse(call)
    expected = _expected_text(source, statement.test, call)
    # The plan's tree is private to _plan_check, so the call can be swapped out in place.
    rewritten = _ReplaceNode(call, ast.Name(id=_ACTUAL, ctx=ast.Load())).visit(statement)
    return _Step(
        source=text,
        code=ast.unparse(ast.fix_missing_locations(rewritten)),
        is_test=True,
        call=call_text,
        call_code=call_code,
        expected=expected,
    )


def _outer_calls(node: ast.AST, param: str) -> list[ast.Call]:
    """Calls of the candidate that are not inside another candidate call."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == param:
        return [node]
    return [call for child in ast.iter_child_nodes(node) for call in _outer_calls(child, param)]


def _always_evaluated(root: ast.AST, target: ast.AST) -> bool:
    """Whether ``target`` is evaluated exactly once whenever ``root`` is: only then may it be
    evaluated ahead of the assert without changing what the assert means."""
    if root is target:
        return True
    if isinstance(root, ast.Compare):
        return _always_evaluated(root.left, target) or (
            len(root.comparators) == 1 and _always_evaluated(root.comparators[0], target)
        )
    if isinstance(root, ast.BinOp):
        return _always_evaluated(root.left, target) or _always_evaluated(root.right, target)
    if isinstance(root, ast.UnaryOp):
        return _always_evaluated(root.operand, target)
    if isinstance(root, ast.Call):
        parts = [root.func, *root.args, *(keyword.value for keyword in root.keywords)]
        return any(_always_evaluated(part, target) for part in parts)
    if isinstance(root, ast.Subscript | ast.Attribute):
        return _always_evaluated(root.value, target)
    return False


def _expected_text(source: str, test: ast.expr, call: ast.Call) -> str | None:
    def text(node: ast.AST) -> str:
        return ast.get_source_segment(source, node) or ast.unparse(node)

    if test is call:
        return "True (a truthy value)"
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and test.operand is call:
        return "False (a falsy value)"
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, right, op = test.left, test.comparators[0], test.ops[0]
        if isinstance(op, ast.Eq | ast.Is):
            if _always_evaluated(left, call):
                return text(right)
            if _always_evaluated(right, call):
                return text(left)
        if isinstance(op, ast.Lt | ast.LtE) and _function_name(left) in _NUMERIC_CLOSENESS:
            other = _other_operand(left.args[0] if isinstance(left, ast.Call) else None, call)
            if other is not None:
                return f"{text(other)} (within {text(right)})"
    if isinstance(test, ast.Call) and _function_name(test) in _ISCLOSE and len(test.args) >= 2:
        first, second = test.args[:2]
        if call in (first, second):
            return text(second if first is call else first)
    return None


def _other_operand(difference: ast.AST | None, call: ast.Call) -> ast.expr | None:
    """In ``call - x`` or ``x - call``, the x."""
    if not isinstance(difference, ast.BinOp) or not isinstance(difference.op, ast.Sub):
        return None
    if difference.left is call:
        return difference.right
    return difference.left if difference.right is call else None


def _function_name(node: ast.AST) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    if isinstance(node.func, ast.Name):
        return node.func.id
    return node.func.attr if isinstance(node.func, ast.Attribute) else None


class _ReplaceNode(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: ast.expr) -> None:
        self.target = target
        self.replacement = replacement

    def visit(self, node: ast.AST) -> ast.AST:
        return self.replacement if node is self.target else super().visit(node)


def _read_events(stdout: str, nonce: str) -> list[dict[str, Any]]:
    prefix = nonce + " "
    events = []
    for line in stdout.splitlines():
        if line.startswith(prefix):
            try:
                events.append(json.loads(line[len(prefix) :]))
            except json.JSONDecodeError:
                continue  # a report line cut by output truncation
    return events


_NOT_LOADED = "not run: the program did not load"
_NOT_REACHED = "not run: an earlier step did not finish"


def _diagnose(
    plan: _CheckPlan, events: list[dict[str, Any]], result: SandboxResult, config: CodeTestConfig
) -> tuple[bool, dict[str, Any]]:
    results = {event["phase"]: event for event in events if event.get("event") == "result"}
    started = [event["phase"] for event in events if event.get("event") == "start"]
    unfinished = started[-1] if started and started[-1] not in results else None
    finished = any(event.get("event") == "done" for event in events)
    stopped = _why_stopped(result, config)
    loaded = "load" in results and results["load"].get("error") is None

    error = results.get("load", {}).get("error")
    if unfinished is not None:
        where = "loading the program" if unfinished == "load" else _phase_text(plan, unfinished)
        error = f"{stopped} while {where}"
    elif not finished and error is None:
        error = f"{stopped} before the tests finished"

    tests = []
    for index, step in enumerate(plan.steps):
        outcome = results.get(index)
        if outcome is None:
            reason = stopped if index == unfinished else _NOT_REACHED if loaded else _NOT_LOADED
            outcome = {"passed": False, "actual": None, "error": reason}
            if not step.is_test and index != unfinished:
                continue  # setup that never ran is not a test of its own
        elif not step.is_test and outcome["passed"]:
            continue  # setup that worked
        tests.append(_test_entry(step, outcome))
    failed = sum(not test["passed"] for test in tests)

    check = results.get("check")
    check_passed = bool(check["passed"]) if check else (False if plan.run_whole_check else None)
    if check and not check["passed"] and error is None and not failed:
        error = f"check(candidate) failed: {check.get('error')}"
    correct = (
        result.status == "ok"
        and finished
        and error is None
        and not failed
        and check_passed is not False
    )
    diagnostics = {
        "status": result.status,
        "error": _trim(error, 500),
        "total": len(tests),
        "failed": failed,
        "tests": _keep_failures_first(tests),
        "check_passed": check_passed,
    }
    return correct, diagnostics


def _test_entry(step: _Step, outcome: dict[str, Any]) -> dict[str, Any]:
    error = outcome.get("error")
    if error and step.call:  # name the call, not the harness's placeholder for its value
        error = error.replace(_ACTUAL, step.call)
    return {
        "source": _trim(step.source),
        "passed": bool(outcome["passed"]),
        "call": _trim(step.call),
        "expected": _trim(step.expected),
        "actual": _trim(outcome.get("actual")),
        "error": _trim(error),
    }


def _why_stopped(result: SandboxResult, config: CodeTestConfig) -> str:
    if result.status == "timeout":
        return f"timed out (limit {config.timeout_s:g} s)"
    if result.status == "memory":
        return f"ran out of memory (limit {config.memory_mb} MB)"
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        return f"the process was killed by {name}"
    return f"the program exited (code {result.returncode})"


def _phase_text(plan: _CheckPlan, phase: int | str) -> str:
    if phase == "check":
        return "running check(candidate)"
    step = plan.steps[int(phase)]
    first_line, *more = (step.call or step.source).splitlines()
    return f"running: {_trim(first_line, 200)}{' ...' if more else ''}"


def _keep_failures_first(tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most MAX_REPORTED_TESTS, keeping failures over passes, in the original order."""
    if len(tests) <= MAX_REPORTED_TESTS:
        return tests
    indexed = list(enumerate(tests))
    failures = [item for item in indexed if not item[1]["passed"]]
    passes = [item for item in indexed if item[1]["passed"]]
    kept = (failures + passes)[:MAX_REPORTED_TESTS]
    return [test for _, test in sorted(kept, key=lambda item: item[0])]


def _trim(text: str | None, limit: int = _TEXT_CAP) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."
