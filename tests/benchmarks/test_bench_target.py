"""``make bench`` runs the measuring scripts only: each named one exists, runs as a script and prints
JSON; every other file of benchmarks/ is left out for a stated reason (read statically, nothing runs)."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_BENCHMARKS = {  # script -> why `make bench` leaves it out
    "alarm_replay": "helper of monitor_alarms.py (re-judges saved histories)",
    "alarm_sabotage": "helper of monitor_alarms.py (the broken runs)",
    "alarm_table": "helper of monitor_alarms.py (its markdown table)",
    "cod_peers": "helper of field_table.py (the SINet-V2 peer, written from its paper)",
    "field_results": "helper of field_table.py (saved rows, the order of the runs, the table)",
    "field_table": "hours of training (the peers, the MoE ablation, 3 seeds; resumes across sessions): run on its own",
    "gpu_check_ddp": "the 2-GPU part of gpu_check.py, started by it under torchrun",
    "gpu_check_loader": "the data-loader part of gpu_check.py",
    "gpu_check_tables": "helper of gpu_check.py (its side-by-side tables)",
    "monitor_alarms": "about 75 minutes of training (docs/BENCHMARKS.md): run on its own",
    "plain_loop": "helper of real_data.py and field_table.py (the peers' plain training loop)",
    "rendered_scenes": "helper of gpu_check.py and step_overhead.py",
    "uniform_experts": "helper of field_table.py (the uniform-experts ablation's launcher)",
}


def runs_the_list(makefile: str) -> bool:
    """Whether the ``bench`` recipe loops over ``$(BENCHMARKS)`` (no glob of benchmarks/)."""
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    return "$(BENCHMARKS)" in recipe and "*" not in recipe


def bench_names(makefile: str) -> list:
    """The Makefile's ``BENCHMARKS`` list (empty when it has none)."""
    found = re.search(r"^BENCHMARKS := (.+)$", makefile, re.M)
    return found.group(1).split() if found else []


def runs_as_a_script(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and ast.unparse(node.test) in ("__name__ == '__main__'",
                                                                      "'__main__' == __name__")
               for node in tree.body)


def prints_json(tree: ast.Module) -> bool:
    """A ``print`` of ``json.dumps(...)``, directly or through a name assigned from it."""
    def is_dumps(node) -> bool:
        return isinstance(node, ast.Call) and ast.unparse(node.func) == "json.dumps"

    dumped = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and is_dumps(node.value)
              for target in node.targets if isinstance(target, ast.Name)}
    return any(isinstance(node, ast.Call) and ast.unparse(node.func) == "print" and node.args
               and (is_dumps(node.args[0]) or (isinstance(node.args[0], ast.Name) and node.args[0].id in dumped))
               for node in ast.walk(tree))


MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")
NAMES = bench_names(MAKEFILE)


def test_bench_runs_its_list_of_scripts():
    assert runs_the_list(MAKEFILE) and NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_bench_script_exists_runs_as_a_script_and_prints_json(name):
    path = ROOT / "benchmarks" / f"{name}.py"
    assert path.is_file(), f"make bench names {path.name}, which does not exist"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert runs_as_a_script(tree), f"{path.name} has no `if __name__ == \"__main__\":`"
    assert prints_json(tree), f"{path.name} prints no json.dumps(...) line"


def test_every_script_of_benchmarks_is_run_by_bench_or_left_out_for_a_reason():
    scripts = {path.stem for path in (ROOT / "benchmarks").glob("*.py")}
    assert len(NAMES) == len(set(NAMES)) and not set(NAMES) & set(NOT_BENCHMARKS)
    assert scripts == set(NAMES) | set(NOT_BENCHMARKS)


@pytest.mark.parametrize("source, expected", [
    ("import json\nprint(json.dumps({}))\nif __name__ == '__main__':\n    pass\n", (True, True)),
    ("import json\nline = json.dumps({})\nprint(line, flush=True)\n", (False, True)),
    ("import json\nprint('done', file=sys.stderr)\nif __name__ == '__main__':\n    main()\n", (True, False)),
    ("def helper():\n    return 1\n", (False, False)),
])
def test_the_static_checks_tell_a_script_from_a_helper(source, expected):
    tree = ast.parse(source)
    assert (runs_as_a_script(tree), prints_json(tree)) == expected


def test_a_glob_recipe_is_refused():
    assert not runs_the_list("bench: x\n\tfor script in benchmarks/*.py; do $(PY) $$script; done\n")
    assert runs_the_list("bench: x\n\tfor name in $(BENCHMARKS); do $(PY) benchmarks/$$name.py; done\n")
