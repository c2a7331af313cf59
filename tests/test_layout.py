"""The layout of the code base, kept by tests: which room may import which, no import circles, and
no file grown past ``MAX_LINES`` (docs/ARCHITECTURE.md draws the rooms).

Imports are read with ``ast`` from every statement, function bodies included: a function-level import
is still an import, and the circle this test was written against hid in one.
"""
from __future__ import annotations

import ast
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
    ("engine.callbacks", "engine.monitors"),  # optional features plugged into the Trainer
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


def test_no_python_file_is_over_the_line_limit():
    tracked = [path for path in ROOT.rglob("*.py")
               if not any(part.startswith(".") or part in ("build", "checkpoints") for part in path.relative_to(ROOT).parts)]
    oversized = {str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines()) for path in tracked}
    oversized = {path: lines for path, lines in oversized.items() if lines > MAX_LINES}
    assert not oversized, f"split these by idea (at most {MAX_LINES} lines): {oversized}"


def test_the_entry_point_holds_only_the_commands():
    assert len((ROOT / "train_ultimate.py").read_text(encoding="utf-8").splitlines()) < 200
