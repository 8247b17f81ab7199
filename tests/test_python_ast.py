"""Parses in the package wait for each other: CPython 3.11's AST constructor keeps its recursion
depth in state that all threads share (python/cpython#106905), and the verifiers parse from
worker threads. CI once failed on it while checking HumanEval's tests in four threads."""

from __future__ import annotations

import ast
import re
import threading
from pathlib import Path

from rl2f.tasks import python_ast
from rl2f.tasks.python_ast import parse_python

SRC = Path(__file__).resolve().parents[1] / "src" / "rl2f"


def test_a_parse_waits_while_another_thread_parses() -> None:
    parsed = threading.Event()

    def parse() -> None:
        parse_python("def check(candidate):\n    assert candidate(1) == 2\n")
        parsed.set()

    with python_ast._PARSE_LOCK:  # as another thread holds it for its whole parse
        worker = threading.Thread(target=parse)
        worker.start()
        assert not parsed.wait(0.2)
    assert parsed.wait(10)
    worker.join()


def test_parse_python_gives_the_tree_ast_parse_gives() -> None:
    for source, mode in [("1 + 2 * 3", "eval"), ("def f(x):\n    return x\n", "exec")]:
        assert ast.dump(parse_python(source, mode=mode)) == ast.dump(ast.parse(source, mode=mode))


def test_no_module_parses_python_without_the_lock() -> None:
    direct = [
        f"{path.relative_to(SRC)}:{number}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "python_ast.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bast\.parse\(", line)
    ]
    assert direct == [], f"call rl2f.tasks.python_ast.parse_python instead: {direct}"
