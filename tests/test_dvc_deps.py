"""dvc.yaml names, for each stage, exactly the code it runs and the params it reads.

A stage whose deps miss a file it runs stays "up to date" after that file changes (a verifier
computes the training reward, so editing one must retrain); a stage that lists a whole params
section it only partly reads reruns for nothing (``rollout.max_tasks`` must not retrain models).
Both are derived here from the source, statically, so they hold as the code changes:

- Code: the rl2f modules a stage runs are the transitive imports of ``rl2f.cli`` (module level:
  its function-level imports serve other subcommands) and of the stage's module, following every
  import statement anywhere in a module, function-level ones included (the code imports lazily),
  and every string that names an rl2f module (``importlib.import_module`` of task loaders; not
  in the stage registry ``rl2f.stages``, which names every stage: a stage runs only its own).
  This over-approximates (a function that is never called still counts), which errs towards
  rerunning. Besides its modules a stage runs the templates they load: the folder named by a
  ``PackageLoader("rl2f", "<folder>")`` (``rl2f.report`` renders ``src/rl2f/templates``).
  Every such file must lie under one of the stage's deps (a file or a directory), and every
  ``src/`` dep must hold at least one of them.
- Params: every read of the validated config in those modules, found with ``ast``: a name
  annotated ``Config`` (or ``self.<attr>`` set from one), its aliases (``t = cfg.train``) and
  ``<x>.cfg.<section>.<field>`` chains. A chain ends at the deepest config field it names; a
  sub-config passed on whole (``make_teacher(cfg.teacher)``) reads all of it;
  ``.model_dump(include=/exclude=)`` and properties (``model.base_path``) read what they name.
  Reads of the whole Config (``cfg.model_dump()`` for MLflow) and of ``tracking`` only log and
  decide no output, so they are not params. Keys a stage's cmd overrides with ``-S`` are not
  read from params.yaml. The params listed must then equal the leaves read that params.yaml
  holds (fields left to their default live in config.py, which is a code dep).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
from functools import cache
from pathlib import Path
from typing import get_origin

import pytest
import yaml
from pydantic import BaseModel

from rl2f.config import Config
from rl2f.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
REGISTRY = "rl2f.stages"  # names every stage module; a stage runs only its own
NOT_OUTPUT_PARAMS = {"tracking"}  # where runs are logged; no stage output depends on them
Path_ = tuple[str, ...]


# ---------------------------------------------------------------- modules
def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _package(name: str) -> str:
    return name if module_file(name).name == "__init__.py" else name.rpartition(".")[0]


@cache
def imports_of(name: str, module_level_only: bool = False) -> frozenset[str]:
    """The rl2f modules that ``name`` imports (with the packages each import runs)."""
    tree = ast.parse(module_file(name).read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = _package(name).split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and name != REGISTRY:
            targets = [node.value]  # a module named for importlib ("rl2f.tasks.sources.files")
        for target in targets:
            if not re.fullmatch(r"rl2f(\.\w+)+", target) or module_file(target) is None:
                continue
            if target.split(".")[0] != "rl2f" or module_file(target) is None:
                continue
            parts = target.split(".")
            prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
            found |= {p for p in prefixes if module_file(p)}  # rl2f.tasks is a namespace
    return frozenset(found)


def stage_modules(stage: str) -> set[str]:
    entry = STAGES[stage].module
    seen: set[str] = set()
    pending = ["rl2f", "rl2f.stages", entry, *imports_of("rl2f.cli", module_level_only=True)]
    seen.add("rl2f.cli")
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending += imports_of(name)
    return seen


@cache
def templates_of(name: str) -> frozenset[Path]:
    """The template folders module ``name`` loads: ``PackageLoader("rl2f", "templates")``, as
    ``rl2f.report`` does, reads src/rl2f/templates at run time, so editing a template must
    rerun the stage like editing the module would."""
    found = set()
    for node in ast.walk(ast.parse(module_file(name).read_text())):
        if not isinstance(node, ast.Call):
            continue
        called = getattr(node.func, "attr", getattr(node.func, "id", None))  # jinja2.X or X
        if called != "PackageLoader":
            continue
        args = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
        assert len(args) == len(node.args) == 2, f"{name}: a PackageLoader this cannot read"
        package, folder = args
        found.add(SRC.joinpath(*package.split("."), folder))
    return frozenset(found)


def stage_files(stage: str) -> set[Path]:
    """The source files and template folders a stage runs."""
    modules = stage_modules(stage)
    return {module_file(m) for m in modules} | set().union(*map(templates_of, modules))


# ---------------------------------------------------------------- config reads
def _field_type(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The sub-config a field holds (also when optional); lists and mappings are leaves."""
    annotation = model.model_fields[name].annotation
    if get_origin(annotation) in (list, dict):
        return None
    args = [annotation, *getattr(annotation, "__args__", ())]
    return next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)


def leaves(path: Path_, model: type[BaseModel] = Config) -> set[Path_]:
    """The leaf fields at or under ``path`` (lists and dicts are leaves)."""
    node: type[BaseModel] | None = model
    for part in path:
        node = _field_type(node, part)
        if node is None:
            return {path}
    return {leaf for name in node.model_fields for leaf in leaves((*path, name), model)}


def _model_at(path: Path_) -> type[BaseModel] | None:
    node: type[BaseModel] | None = Config
    for part in path:
        node = _field_type(node, part) if node and part in node.model_fields else None
    return node


def _property_reads(model: type[BaseModel], name: str) -> set[str]:
    """The ``self.<field>`` a config property reads (``base_path``: student, base_dir)."""
    source = ast.parse((SRC / "rl2f" / "config.py").read_text())
    for cls in (n for n in source.body if isinstance(n, ast.ClassDef)):
        if cls.name != model.__name__:
            continue
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name):
            return {
                n.attr
                for n in ast.walk(fn)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                if n.value.id == "self" and n.attr in model.model_fields
            }
    raise AssertionError(f"{model.__name__}.{name}: not a field and no property of that name")


def _chain(node: ast.expr) -> tuple[ast.expr, list[str]]:
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.insert(0, node.attr)
        node = node.value
    return node, attrs


def _names(keywords: list[ast.keyword], which: str) -> set[str] | None:
    for keyword in keywords:
        if keyword.arg == which and isinstance(keyword.value, ast.Set | ast.List | ast.Tuple):
            return {e.value for e in keyword.value.elts if isinstance(e, ast.Constant)}
    return None


class ConfigReads(ast.NodeVisitor):
    """Collects the config paths one module reads; see the module docstring for the rules."""

    def __init__(self) -> None:
        self.reads: set[Path_] = set()
        self.roots: dict[str, Path_] = {}  # local name -> config path it holds
        self.self_roots: set[str] = set()  # self.<attr> that hold the Config

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        outer = self.self_roots
        self.self_roots = set()
        for fn in (n for n in ast.walk(node) if isinstance(n, ast.FunctionDef)):
            params = {a.arg for a in fn.args.args if self._is_config(a.annotation)}
            for assign in (n for n in ast.walk(fn) if isinstance(n, ast.Assign)):
                pairs = [(t, assign.value) for t in assign.targets]
                for target, value in list(pairs):  # self.cfg, self.spec = cfg, spec
                    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
                        pairs += list(zip(target.elts, value.elts, strict=False))
                for target, value in pairs:
                    if not (isinstance(value, ast.Name) and value.id in params):
                        continue
                    base, attrs = _chain(target)
                    if isinstance(base, ast.Name) and base.id == "self" and len(attrs) == 1:
                        self.self_roots.add(attrs[0])
        self.generic_visit(node)
        self.self_roots = outer

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer = dict(self.roots)
        args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        for arg in args:
            if self._is_config(arg.annotation):
                self.roots[arg.arg] = ()
            else:
                self.roots.pop(arg.arg, None)
        self.generic_visit(node)
        self.roots = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        pairs = [(t, node.value) for t in node.targets]
        for target, value in list(pairs):
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
                pairs += list(zip(target.elts, value.elts, strict=False))
        for target, value in pairs:
            if isinstance(target, ast.Name):
                path = self._path(value)
                if path is not None and _model_at(path) is not None:
                    self.roots[target.id] = path
                else:
                    self.roots.pop(target.id, None)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._record(node, None)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr == "model_dump":
            self._record(node.func.value, node)
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                self.visit(arg)
            return
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        path = self.roots.get(node.id)
        if path and isinstance(node.ctx, ast.Load):  # a sub-config passed on whole
            self.reads.add(path)

    def _record(self, node: ast.expr, dump: ast.Call | None) -> None:
        base, attrs = _chain(node)
        path = self._path(node)
        if path is None:
            self.visit(base)
            return
        model = _model_at(path)
        if dump is not None and not path:
            return  # the whole Config dumped: logged to MLflow, never an output
        if dump is not None and model is not None:
            include = _names(dump.keywords, "include") or set(model.model_fields)
            include -= _names(dump.keywords, "exclude") or set()
            self.reads |= {(*path, name) for name in include}
        elif path:
            self.reads.add(path)

    def _path(self, node: ast.expr) -> Path_ | None:
        """The config path ``node`` evaluates to (properties expanded into reads), or None."""
        base, attrs = _chain(node)
        if isinstance(base, ast.Name) and base.id in self.roots:
            path, rest = self.roots[base.id], attrs
        elif isinstance(base, ast.Name) and base.id == "self" and attrs[:1]:
            if attrs[0] not in self.self_roots:
                return None
            path, rest = (), attrs[1:]
        elif "cfg" in attrs[:-2]:
            at = attrs.index("cfg")
            section, field = attrs[at + 1], attrs[at + 2]
            if section not in Config.model_fields or field not in leaves_names(section):
                return None
            path, rest = (), attrs[at + 1 :]
        else:
            return None
        for attr in rest:
            model = _model_at(path)
            if model is None:
                break
            if attr not in model.model_fields:
                if isinstance(getattr(model, attr, None), property):
                    self.reads |= {(*path, f) for f in _property_reads(model, attr)}
                    return ()
                break
            path = (*path, attr)
        return path

    @staticmethod
    def _is_config(annotation: ast.expr | None) -> bool:
        if isinstance(annotation, ast.Constant):
            return annotation.value == "Config"
        return isinstance(annotation, ast.Name) and annotation.id == "Config"


def leaves_names(section: str) -> set[str]:
    return set(_model_at((section,)).model_fields)


@cache
def module_reads(name: str) -> frozenset[Path_]:
    visitor = ConfigReads()
    visitor.visit(ast.parse(module_file(name).read_text()))
    return frozenset(visitor.reads)


# ---------------------------------------------------------------- dvc.yaml
def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def command(spec: dict) -> tuple[str, set[Path_]]:
    """The rl2f stage a dvc stage runs and the keys its ``-S`` overrides set."""
    words = shlex.split(spec["cmd"])
    assert words[0] == "rl2f", spec["cmd"]
    overridden = {
        tuple(value.partition("=")[0].split("."))
        for flag, value in zip(words, words[1:], strict=False)
        if flag == "-S"
    }
    return words[1], overridden


@cache
def in_params_yaml() -> frozenset[Path_]:
    """The config leaves params.yaml sets (each a DVC-trackable param)."""
    tree = yaml.safe_load((REPO / "params.yaml").read_text())

    def present(path: Path_) -> bool:
        node = tree
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    return frozenset(leaf for leaf in leaves(()) if present(leaf))


def read_params(
    stage: str, overridden: set[Path_] = frozenset(), own_only: bool = False
) -> set[str]:
    """The params.yaml leaves ``stage`` may read, dotted (a list or mapping value is one leaf);
    ``own_only``: only those read by its own modules under rl2f.stages."""
    modules = stage_modules(stage)
    if own_only:
        modules = {m for m in modules if m.startswith(REGISTRY + ".")}
    paths = set().union(*map(module_reads, modules))
    read = {leaf for path in paths for leaf in leaves(path)}
    return {
        ".".join(leaf)
        for leaf in read & in_params_yaml()
        if leaf[0] not in NOT_OUTPUT_PARAMS and leaf not in overridden
    }


def listed_params(spec: dict) -> set[str]:
    """A stage's dvc params, a section standing for all of its leaves in params.yaml."""
    named = {tuple(p.split(".")) for p in spec.get("params", [])}
    for path in named:
        assert leaves(path) & in_params_yaml(), f"{'.'.join(path)}: not in params.yaml"
    return {".".join(leaf) for path in named for leaf in leaves(path) & in_params_yaml()}


# ---------------------------------------------------------------- tests
STAGE_NAMES = list(dvc_stages())


def test_the_analysis_sees_what_is_known_to_be_read() -> None:
    """Guards the analysis itself: reads through aliases, self.cfg, properties and model_dump."""
    assert {"train.steps", "train.kl_beta", "rollout.gamma", "teacher.level"} <= read_params(
        "train_rl2f"
    )
    assert "rollout.max_tasks" in read_params("rollout")
    assert "rollout.max_tasks" not in read_params("train_rl2f")
    assert {"model.student", "model.base_dir"} <= read_params("train_rl2f")  # base_path
    assert "rl2f.tasks.verifiers" in stage_modules("train_rl2f")
    assert SRC / "rl2f/templates" in stage_files("report")


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_stage_deps_cover_every_module_it_runs(name: str) -> None:
    spec = dvc_stages()[name]
    stage, _ = command(spec)
    deps = [REPO / dep for dep in spec.get("deps", [])]
    files = stage_files(stage)
    uncovered = sorted(
        str(f.relative_to(REPO)) for f in files if not any(f == d or d in f.parents for d in deps)
    )
    assert not uncovered, f"{name}: add to its deps in dvc.yaml: {uncovered}"
    unused = [
        str(d.relative_to(REPO))
        for d in deps
        if SRC in d.parents
        and d.suffix != ".json"  # data a module reads
        and not any(f == d or d in f.parents for f in files)
    ]
    assert not unused, f"{name}: deps in dvc.yaml it never runs: {unused}"


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_stage_params_are_what_it_reads(name: str) -> None:
    """Module-level analysis over-approximates what a stage reads (the report stage imports the
    teachers, which import training code, which reads train.*), so the check is two-sided
    around it: what the stage's own modules read must be listed, and nothing may be listed
    that no module it runs reads. Between the two, the lists in dvc.yaml are written from the
    code (see the comments there); a section is listed whole only when all of it is read."""
    spec = dvc_stages()[name]
    stage, overridden = command(spec)
    listed = listed_params(spec)
    own = read_params(stage, overridden, own_only=True)
    assert not own - listed, f"{name}: add to its params in dvc.yaml: {sorted(own - listed)}"
    never = listed - read_params(stage, overridden)
    assert not never, f"{name}: params in dvc.yaml it never reads: {sorted(never)}"


@pytest.mark.slow
def test_editing_a_verifier_makes_train_rl2f_stale(tmp_path: Path) -> None:
    """Real DVC: with the stages recorded as done (``dvc commit``, nothing trained), editing a
    verifier (it computes the training reward) shows train_rl2f changed, and not prepare."""
    from test_dvc import BIN, _run

    for name in ("params.yaml", "dvc.yaml", "src", ".dvc", ".dvcignore"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, tmp_path / name)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)}
    _run("git", "init", "-q", cwd=tmp_path, env=env)
    dvc = str(BIN / "dvc")
    # Record every stage as done without running it: `dvc commit` hashes deps and outs.
    for out in ("data/tasks", "models/base", "models/rl2f", "models/single_turn"):
        (tmp_path / out).mkdir(parents=True)
        (tmp_path / out / "x").write_text(out)
    for stage in ("prepare", "bootstrap", "train_rl2f", "train_single_turn"):
        _run(dvc, "commit", "-f", stage, cwd=tmp_path, env=env)
    clean = json.loads(_run(dvc, "status", "train_rl2f", "--json", cwd=tmp_path, env=env).stdout)
    assert not clean, clean
    verifier = tmp_path / "src/rl2f/tasks/verifiers/math.py"
    verifier.write_text(verifier.read_text() + "\n# edited\n")
    status = json.loads(
        _run(dvc, "status", "train_rl2f", "prepare", "--json", cwd=tmp_path, env=env).stdout
    )
    changed = [entry.get("changed deps", {}) for entry in status.get("train_rl2f", [])]
    assert any("src/rl2f/tasks/verifiers" in deps for deps in changed), status
    assert "prepare" not in status, status
