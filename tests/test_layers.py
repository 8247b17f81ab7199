"""The layers of ``rl2f`` only point down, and no import goes round in a cycle.

Layers, lowest first. A module belongs to the layer of its longest matching prefix (the package
``rl2f`` itself matches only exactly), and may import its own layer and those below it:

==  ==========  =====================================================================
0   base        ``rl2f``, ``rl2f.config``, ``rl2f.errors``: everyone may import them
1   tasks       ``rl2f.tasks``: schema, sources, verifiers, exact arithmetic
2   engines     ``rl2f.engines``: text generation backends
3   guard       ``rl2f.leakage``: judges a critique's text; knows tasks, not teachers
4   teachers    ``rl2f.teachers``: teacher policies and the guarded critique loop
5   episodes    ``rl2f.episodes``, ``rl2f.rollout``: episode records, the multi-turn loop
6   work        ``rl2f.training``, ``rl2f.evaluation`` and what they share or feed:
                ``rl2f.tracking`` (MLflow), ``rl2f.validation``
                (task data checks), ``rl2f.report`` (built from evaluation results)
7   stages      ``rl2f.stages``: one function per pipeline stage
8   entry       ``rl2f.cli``, ``rl2f.kubeflow``, ``rl2f.cluster``, ``rl2f.pipeline_io``
==  ==========  =====================================================================

Every ``import`` counts, wherever it is: one inside a function is still a dependency, only a
lazy one, and an ``if TYPE_CHECKING:`` import still couples the modules (none needs an
exemption). Imports made by name at run time (``importlib``) are not seen.

Cycles are checked twice. Between units (a top-level module, or a top-level package with all
its submodules), over every import: two packages that need each other are one tangled layer.
Inside a package a lazy cycle is allowed (the engine factory in ``rl2f.engines`` imports an
engine when asked, and the engine imports helpers from the package), but not between modules
at import time, where a cycle fails or half-initialises a module depending on who comes first.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "rl2f"
SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("rl2f", "rl2f.config", "rl2f.errors", "rl2f.cpu_threads")),
    ("tasks", ("rl2f.tasks",)),
    ("engines", ("rl2f.engines",)),
    ("guard", ("rl2f.leakage",)),
    ("teachers", ("rl2f.teachers",)),
    ("episodes", ("rl2f.episodes", "rl2f.rollout")),
    (
        "work",
        (
            "rl2f.training",
            "rl2f.evaluation",
            "rl2f.tracking",
            "rl2f.validation",
            "rl2f.report",
        ),
    ),
    ("stages", ("rl2f.stages",)),
    ("entry", ("rl2f.cli", "rl2f.kubeflow", "rl2f.cluster", "rl2f.pipeline_io")),
)


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    import_time: bool  # runs when ``source`` is imported (module level, not TYPE_CHECKING)


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or (prefix != PACKAGE and module.startswith(prefix + "."))


def layer_of(module: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> int | None:
    matches = [
        (len(prefix), rank)
        for rank, (_, prefixes) in enumerate(layers)
        for prefix in prefixes
        if _matches(module, prefix)
    ]
    return max(matches)[1] if matches else None


def unit_of(module: str) -> str:
    """``rl2f.tasks.verifiers.math`` -> ``rl2f.tasks``; ``rl2f.rollout`` -> itself."""
    return ".".join(module.split(".")[:2])


def modules_under(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root`` (a ``src`` folder), by dotted name."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: Iterable[str]) -> None:
        self.module, self.is_package, self.known = module, is_package, set(known)
        self.found: list[Import] = []
        self._deferred = 0  # inside a function body or a TYPE_CHECKING block

    def _deferring(self, nodes: Iterable[ast.AST]) -> None:
        self._deferred += 1
        for node in nodes:
            self.visit(node)
        self._deferred -= 1

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        self._deferring(node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._deferring(node.body)
        for child in node.orelse:
            self.visit(child)

    def _add(self, target: str, node: ast.stmt) -> None:
        found = Import(self.module, target, node.lineno, not self._deferred)
        if (target == PACKAGE or target.startswith(PACKAGE + ".")) and found not in self.found:
            self.found.append(found)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: resolved against this module's package
            package = self.module.split(".")
            package = package if self.is_package else package[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, *([base] if base else [])])
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in self.known else base, node)


def collect_imports(root: Path) -> list[Import]:
    """Every import of a package module inside the package under ``root``."""
    modules = modules_under(root)
    found: list[Import] = []
    for module, path in modules.items():
        collector = _Collector(module, path.name == "__init__.py", modules)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found += collector.found
    return found


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in graph.get(node, ()):
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_violations(
    root: Path, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS
) -> list[str]:
    """Everything wrong with the package under ``root``, one line each (empty when clean)."""
    modules = modules_under(root)
    imports = collect_imports(root)
    problems = [
        f"{module}: in no layer (add it to LAYERS)"
        for module in modules
        if layer_of(module, layers) is None
    ]
    for imp in imports:
        here, there = layer_of(imp.source, layers), layer_of(imp.target, layers)
        if here is not None and there is not None and there > here:
            problems.append(
                f"{imp.source}:{imp.line} imports {imp.target}: layer {layers[here][0]!r} "
                f"may not depend on {layers[there][0]!r} above it"
            )
    units: dict[str, set[str]] = {}
    module_time: dict[str, set[str]] = {}
    for imp in imports:
        if unit_of(imp.source) != unit_of(imp.target):
            units.setdefault(unit_of(imp.source), set()).add(unit_of(imp.target))
        if imp.import_time:
            module_time.setdefault(imp.source, set()).add(imp.target)
    problems += [f"import cycle between units: {' <-> '.join(c)}" for c in cycles(units)]
    problems += [f"import-time cycle: {' <-> '.join(c)}" for c in cycles(module_time)]
    return problems


# ---------------------------------------------------------------- the project
def test_every_import_points_down_and_nothing_goes_round() -> None:
    assert layer_violations(SRC) == []


def test_every_layer_prefix_names_a_module() -> None:
    """A stale entry (a module renamed or removed) would let its replacement go unchecked."""
    modules = modules_under(SRC)
    for _, prefixes in LAYERS:
        for prefix in prefixes:
            assert any(_matches(module, prefix) for module in modules), prefix


# ---------------------------------------------------------------- the checker itself
def plant(root: Path, files: Mapping[str, str]) -> Path:
    """A miniature ``rl2f`` package under ``root/src`` holding ``files`` (path: source)."""
    src = root / "src"
    for name, source in {"rl2f/__init__.py": "", **files}.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(src).parents:
            if parent.parts and not (src / parent / "__init__.py").exists():
                (src / parent / "__init__.py").write_text("")
        path.write_text(source)
    return src


def test_checker_catches_an_upward_import_even_in_a_function(tmp_path: Path) -> None:
    src = plant(
        tmp_path,
        {
            "rl2f/config.py": "",
            "rl2f/teachers/base.py": "from rl2f.config import x\n",
            "rl2f/tasks/schema.py": (
                "def f():\n    from rl2f.teachers.base import Teacher\n    return Teacher\n"
            ),
        },
    )
    problems = layer_violations(src)
    assert len(problems) == 1
    assert "rl2f.tasks.schema:2 imports rl2f.teachers.base" in problems[0]
    assert "'tasks' may not depend on 'teachers'" in problems[0]


def test_checker_sees_type_checking_and_relative_imports(tmp_path: Path) -> None:
    src = plant(
        tmp_path,
        {
            "rl2f/leakage.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from rl2f.teachers.base import Teacher\n"
            ),
            "rl2f/teachers/base.py": "",
            "rl2f/engines/base.py": "from ..training import grpo\n",
            "rl2f/training/grpo.py": "",
        },
    )
    problems = layer_violations(src)
    assert any(p.startswith("rl2f.leakage:3 imports rl2f.teachers.base") for p in problems)
    assert any(p.startswith("rl2f.engines.base:1 imports rl2f.training.grpo") for p in problems)


def test_checker_catches_cycles(tmp_path: Path) -> None:
    src = plant(
        tmp_path,
        {
            # Same layer, so only the cycle check can object.
            "rl2f/training/a.py": "def f():\n    import rl2f.evaluation.b\n",
            "rl2f/evaluation/b.py": "from rl2f.training import a\n",
            # Inside one package: lazily fine, at import time not.
            "rl2f/engines/__init__.py": "def make():\n    from rl2f.engines import impl\n",
            "rl2f/engines/impl.py": "from rl2f.engines import helper\n",
            "rl2f/tasks/one.py": "from rl2f.tasks import two\n",
            "rl2f/tasks/two.py": "import rl2f.tasks.one\n",
        },
    )
    assert sorted(layer_violations(src)) == [
        "import cycle between units: rl2f.evaluation <-> rl2f.training",
        "import-time cycle: rl2f.tasks.one <-> rl2f.tasks.two",
    ]


def test_checker_wants_every_module_in_a_layer(tmp_path: Path) -> None:
    src = plant(tmp_path, {"rl2f/newcomer.py": "import rl2f\n"})
    assert layer_violations(src) == ["rl2f.newcomer: in no layer (add it to LAYERS)"]
