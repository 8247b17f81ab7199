"""``ast.parse`` that several threads may call at once.

CPython 3.11 keeps the AST constructor's recursion depth in state that all threads share. If a
parse gives up the GIL halfway (a garbage collection runs a finalizer, say) and another thread
parses meanwhile, the first fails with ``SystemError: AST constructor recursion depth mismatch``
(python/cpython#106905). The verifiers parse from worker threads, and CI hit this once while
checking HumanEval's tests in four threads. So every parse in the package takes one lock; a
parse of a test or an expression takes microseconds to milliseconds.
"""

from __future__ import annotations

import ast
import threading
from typing import Literal

_PARSE_LOCK = threading.Lock()


def parse_python(source: str, mode: Literal["exec", "eval"] = "exec") -> ast.AST:
    """``ast.parse(source, mode=mode)``, one thread at a time."""
    with _PARSE_LOCK:
        return ast.parse(source, mode=mode)
