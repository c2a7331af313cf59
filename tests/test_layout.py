"""The layout of the code base, kept by tests: which room may import which, no import circles, no
file grown past ``MAX_LINES``, and monitors that only observe (docs/ARCHITECTURE.md draws the rooms).

Imports are read with ``ast`` from every statement, function bodies included: a function-level import
is still an import, and the circle this test was written against hid in one.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "models", "data")

# engine's rooms, bottom to top: a module imports its own room and rooms of a lower layer only.
ENGINE_LAYERS = (
    ("engine",),                            # the package itself: __version__
    ("engine.config",),                     # settings: read by everything, reads nothing of engine
    ("engine.runtime",),                    # the machine: devices, processes, compile, environment errors
    ("engine.checkpoint", "engine.evaluation"),  # checkpoint files; mask scores and COD metrics
    ("engine.training",),                   # the Trainer, its step, plan and callback protocol
    ("engine.callbacks", "engine.monitors"),  # optional features: callbacks act on a run, monitors observe
    ("engine.build",),                      # the assembly of a run from a TrainConfig
    ("engine.commands",),                   # eval, predict, export, report, synth, dry run
    ("engine.api",),                        # the Python API
)
CONFIG_MAY_IMPORT = ("engine.config", "models", "yaml")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> Dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def imported_names(path: Path, name: str) -> Set[str]:
    """Every module name an ``import`` statement anywhere in the file names (relative ones resolved)."""
    names: Set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def internal_graph() -> Dict[str, Set[str]]:
    """module -> the modules of engine/models/data it imports (the deepest existing module named)."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in imported_names(path, name):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def room(module: str) -> str:
    """The longest room name that ``module`` lies in."""
    rooms = [name for layer in ENGINE_LAYERS for name in layer if module == name or module.startswith(name + ".")]
    return max(rooms, key=len)


def layer(module: str) -> int:
    return next(index for index, names in enumerate(ENGINE_LAYERS) if room(module) in names)


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import circle as a list of modules (first == last), or [] when there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


GRAPH = internal_graph()


def test_models_and_data_never_import_engine():
    offenders = [f"{name} -> {target}" for name, targets in GRAPH.items() if not name.startswith("engine")
                 for target in targets if target.startswith("engine")]
    assert not offenders, offenders


def test_configuration_imports_only_models_the_standard_library_and_yaml():
    modules = package_modules()
    offenders = []
    for name, path in modules.items():
        if not (name == "engine.config" or name.startswith("engine.config.")):
            continue
        for target in imported_names(path, name):
            top = target.split(".")[0]
            allowed = (top in sys.stdlib_module_names or top == "__future__"
                       or any(target == prefix or target.startswith(prefix + ".") for prefix in CONFIG_MAY_IMPORT))
            if not allowed and target:
                offenders.append(f"{name} -> {target}")
    assert not offenders, offenders


def upward_imports(graph: Dict[str, Set[str]]) -> List[str]:
    """The edges from an engine room to another room of the same or a higher layer."""
    offenders = []
    for name, targets in graph.items():
        if not name.startswith("engine"):
            continue
        for target in targets:
            if target.startswith("engine") and room(target) != room(name) and layer(target) >= layer(name):
                offenders.append(f"{name} ({room(name)}) -> {target} ({room(target)})")
    return sorted(offenders)


def test_engine_rooms_import_downwards_only():
    offenders = upward_imports(GRAPH)
    assert not offenders, "imports against the direction of docs/ARCHITECTURE.md:\n" + "\n".join(offenders)


@pytest.mark.parametrize("edge", [("engine.config.checks", "engine.monitors.post_epoch"),
                                  ("engine.training.trainer", "engine.callbacks.weight_ema"),
                                  ("engine.callbacks.preview", "engine.monitors.expert_usage"),
                                  ("engine.checkpoint.files", "engine.evaluation.mask_scores")])
def test_an_upward_or_sideways_import_is_caught(edge):
    assert upward_imports({edge[0]: {edge[1]}})


def test_every_engine_module_lies_in_a_room():
    for name in GRAPH:
        if name.startswith("engine"):
            room(name)  # raises ValueError (max of nothing) for a module outside every room


def test_no_import_circle():
    cycle = find_cycle(GRAPH)
    assert not cycle, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("edges, circle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
    ({"engine.config": {"engine.monitors.post_epoch"}, "engine.monitors.post_epoch": {"engine.config"}}, True),
])
def test_the_circle_finder_finds_circles(edges, circle):
    assert bool(find_cycle(edges)) is circle


def test_a_function_level_import_counts(tmp_path):
    source = tmp_path / "late.py"
    source.write_text("def f():\n    from engine.monitors.post_epoch import parse\n    from . import sibling\n")
    assert {"engine.monitors.post_epoch", "engine.monitors.post_epoch.parse"} <= imported_names(source, "pkg.late")
    assert "pkg.sibling" in imported_names(source, "pkg.late")


# Monitors observe a run, callbacks act on it (docs/ARCHITECTURE.md, "Who acts on a run"). Acting, in
# code: a Trainer service that changes the run (a stop, the plan's LR scale, an epoch restart), the
# optimizer, or an assignment to anything reached from the Trainer.
ACTING_ATTRIBUTES = ("request_stop", "scale_lr", "restart_epoch", "optimizer", "param_groups", "lr_scales")
TRAINER_NAMES = ("trainer", "_trainer")


def _reaches_trainer(node: ast.AST) -> bool:
    """Whether ``node`` (an assignment target or an argument) is the Trainer or something reached from it."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        if isinstance(node, ast.Attribute) and node.attr in TRAINER_NAMES:
            return True
        node = node.value
    return isinstance(node, ast.Name) and node.id in TRAINER_NAMES


def _targets(node: ast.AST) -> List[ast.AST]:
    if isinstance(node, (ast.Assign, ast.Delete)):
        found = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        found = [node.target]
    else:
        return []
    flat = []
    while found:
        target = found.pop()
        if isinstance(target, (ast.Tuple, ast.List)):
            found.extend(target.elts)
        else:
            flat.append(target)
    return flat


def actions_on_the_run(source: str) -> List[str]:
    """The places in ``source`` that change a run instead of observing it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in ACTING_ATTRIBUTES:
            found.append(f"line {node.lineno}: .{node.attr}")
        found += [f"line {node.lineno}: assigns to the Trainer" for target in _targets(node) if _reaches_trainer(target)]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr")
                and node.args and _reaches_trainer(node.args[0])):
            found.append(f"line {node.lineno}: {node.func.id} on the Trainer")
    return found


def test_monitors_only_observe_the_run():
    acting = {name: actions_on_the_run(path.read_text(encoding="utf-8")) for name, path in package_modules().items()
              if name.startswith("engine.monitors")}
    acting = {name: places for name, places in acting.items() if places}
    assert not acting, f"monitors observe, callbacks act (docs/ARCHITECTURE.md): move these into engine/callbacks/: {acting}"


@pytest.mark.parametrize("source", [
    "def on_epoch_end(self, trainer, record):\n    trainer.plan.scale_lr(trainer.stage, 0.5)\n",
    "def on_epoch_end(self, trainer, record):\n    trainer.request_stop('plateau')\n",
    "def on_optimizer_step(self, trainer, step):\n    trainer.optimizer.param_groups[0]['lr'] *= 0.5\n",
    "def on_optimizer_step(self, trainer, step):\n    for group in trainer.optimizer.param_groups:\n        group['lr'] = 0\n",
    "def on_epoch_end(self, trainer, record):\n    trainer.plan.state, x = None, 1\n",
    "def on_epoch_end(self, trainer, record):\n    setattr(trainer, 'epoch', 0)\n",
    "def on_epoch_end(self, trainer, record):\n    self._trainer.epoch += 1\n",
    "def on_epoch_end(self, trainer, record):\n    trainer.restart_epoch()\n",
])
def test_an_action_on_the_run_is_caught(source):
    assert actions_on_the_run(source)


def test_observing_is_not_an_action():
    source = ("def on_epoch_end(self, trainer, record):\n    lr = trainer.current_lr\n    self.seen = trainer.plan.describe()\n"
              "    record['health'] = {'lr': lr}\n    trainer.log_scalar('x', lr, 1)\n")
    assert actions_on_the_run(source) == []


# The tests that check documents against the code live in one room, tests/docs/; a test elsewhere that
# reads a document says here why it stays where it is.
DOCUMENT_READERS_ELSEWHERE = {
    "tests/cli/test_kaggle_sessions.py": "runs the Kaggle guide's session commands to test resuming across sessions",
}


def reads_documents(source: str) -> bool:
    """Whether ``source`` names a document of the repository in code (docstrings and comments aside):
    README.md, the guides/ or docs/ folder, or a markdown path."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return any(isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
               and (node.value in ("README.md", "guides", "docs") or re.fullmatch(r"[\w./-]+\.md", node.value))
               for node in ast.walk(tree))


def test_tests_that_read_documents_are_in_the_documents_room():
    tests = ROOT / "tests"
    readers = {str(path.relative_to(ROOT)) for path in sorted(tests.rglob("*.py"))
               if tests / "docs" not in path.parents and path != Path(__file__).resolve()
               and reads_documents(path.read_text(encoding="utf-8"))}
    assert readers == set(DOCUMENT_READERS_ELSEWHERE), (
        f"move these document checks into tests/docs/: {sorted(readers - set(DOCUMENT_READERS_ELSEWHERE))}; "
        f"no longer reading documents: {sorted(set(DOCUMENT_READERS_ELSEWHERE) - readers)}")


@pytest.mark.parametrize("source, reads", [
    ('"""Checks README.md."""\nROOT = 1\n', False),
    ("text = (ROOT / 'README.md').read_text()\n", True),
    ("GUIDE = ROOT / 'guides' / 'KAGGLE_GUIDE.md'\n", True),
    ("pages = sorted((ROOT / 'docs').glob('*.md'))\n", True),
    ("message = 'see docs/BENCHMARKS.md for the figures'\n", False),
])
def test_a_document_read_is_recognised(source, reads):
    assert reads_documents(source) is reads


def test_no_python_file_is_over_the_line_limit():
    tracked = [path for path in ROOT.rglob("*.py")
               if not any(part.startswith(".") or part in ("build", "checkpoints") for part in path.relative_to(ROOT).parts)]
    oversized = {str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines()) for path in tracked}
    oversized = {path: lines for path, lines in oversized.items() if lines > MAX_LINES}
    assert not oversized, f"split these by idea (at most {MAX_LINES} lines): {oversized}"


def test_the_entry_point_holds_only_the_commands():
    assert len((ROOT / "train_ultimate.py").read_text(encoding="utf-8").splitlines()) < 200
