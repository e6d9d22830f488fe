"""The package's shape (docs/architecture.md): no import cycle, a layer order that imports only go down,
and a short walk of a sweep's runs from `cli.run` through the calls that pass them on."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bncompare"

# The layers, low to high (docs/architecture.md, "Layers"). A module imports only modules of its own
# layer or lower ones; within a layer, imports must not form a cycle either.
LAYERS = [
    ("interrupts", "terminal", "results", "schedule", "callables", "backend"),  # no bncompare import
    ("schema", "layers", "data", "seeding"),
    ("models",),
    ("config",),
    ("checkpoint", "bn_eval", "probes", "instruments"),  # what a run measures and saves
    ("engines.contract", "engines.common", "engines.fit", "engines.tf_pack", "engines.vmap_eval",
     "engines.vmap", "engines"),
    ("status", "skipping"),  # what a run's status is; where its results live
    ("lifecycle",),
    ("runner", "parallel", "ray_executor", "executors"),  # the executors
    ("aggregate", "summary", "compare", "export", "style", "probe_plots", "plots", "report"),  # readers
    ("display",),
    ("cli", "__main__", "bncompare"),  # `bncompare`: the package's __init__ (`load` imports export)
]
LAYER = {module: number for number, layer in enumerate(LAYERS) for module in layer}
# Imports allowed to go up: every module may read the package's version.
UPWARD_ALLOWED = {("bncompare", "__version__")}


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package by its name without the `bncompare.` prefix ("bncompare" for the
    package itself), with its file and whether it is a package's __init__."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts) or "bncompare"] = (path, is_package)
    return found


def _local(dotted: str, known: dict) -> str | None:
    """The module of the package `dotted` (bncompare.x.y, maybe naming a function) is in, if any."""
    if dotted != "bncompare" and not dotted.startswith("bncompare."):
        return None
    name = dotted[len("bncompare."):] if dotted != "bncompare" else "bncompare"
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in known else "bncompare"


def imports(name: str, path: Path, is_package: bool, known: dict) -> list[tuple[str, str, int]]:
    """(imported module, imported name, line) for every import of the package in the module, at
    module level or inside functions, absolute or relative."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _local(alias.name, known)
                if target:
                    found.append((target, alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package, up level - 1
                package = ["bncompare", *([] if name == "bncompare" else name.split("."))]
                package = package if is_package else package[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                target = _local(f"{base}.{alias.name}", known) or _local(base, known)
                if target:
                    found.append((target, alias.name, node.lineno))
    return [(target, what, line) for target, what, line in found if target != name]


def graph() -> dict[str, dict[str, list[tuple[str, int]]]]:
    """module -> imported module -> [(imported name, line)]."""
    known = modules()
    edges: dict[str, dict[str, list[tuple[str, int]]]] = {}
    for name, (path, is_package) in known.items():
        edges[name] = {}
        for target, what, line in imports(name, path, is_package, known):
            edges[name].setdefault(target, []).append((what, line))
    return edges


def cycles(edges: dict[str, dict]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in edges:
        if node not in index:
            visit(node)
    return [_cycle_in(sorted(group), edges) for group in groups]


def _cycle_in(group: list[str], edges: dict[str, dict]) -> list[str]:
    """A cycle through the group's first module, found breadth-first (the shortest one)."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(edges[node]):
                if target == start:
                    return paths[node] + [start]
                if target in members and target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    return group


def test_the_graph_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    """The checker itself: a cycle made only by an import inside a function, and one made by a
    relative import, are both found and named."""
    package = tmp_path / "bncompare"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from bncompare import b\n")
    (package / "b.py").write_text("from bncompare.a import f\n")
    (package / "sub" / "__init__.py").write_text("from . import c\n")
    (package / "sub" / "c.py").write_text("from .. import sub\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    found = {tuple(cycle) for cycle in cycles(graph())}
    assert found == {("a", "b", "a"), ("sub", "sub.c", "sub")}


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in found)


def test_every_module_has_a_layer():
    assert sorted(set(modules()) - set(LAYER)) == [], "add the new module to LAYERS (docs/architecture.md)"


def test_imports_only_go_down_the_layers():
    upward = [f"{module} -> {target} ({what}, line {line})"
              for module, targets in graph().items() for target, names in targets.items()
              for what, line in names
              if LAYER[target] > LAYER[module] and (target, what) not in UPWARD_ALLOWED]
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_every_engine_meets_the_contract():
    """Each engine has what engines/contract.py's Engine asks for (planning and training call it)."""
    from bncompare import engines
    from bncompare.engines.contract import Engine

    for name in ("fit", "tf_pack", "vmap"):
        assert isinstance(engines._make(name), Engine), name


# ---- the walk -----------------------------------------------------------------------------------

MAX_CLIMBS = 8
TINY = """\
name: tiny
data: {dataset: synthetic, train_limit: 512}
model: {hidden: [32, 16]}
train: {epochs: 2, batch_size: 64, seeds: [0]}
"""


def walk(argv: list[str]) -> list[str]:
    """The modules the `configs` argument of `cli.run` goes through, running `bncompare *argv`.

    A stop is a call of a function of the package that takes the configs list or a list of runs
    (all runs, a group of them) as an argument, and the return from such a call into the traced
    call that made it; consecutive stops in one module are one stop.
    """
    from bncompare import cli
    from bncompare.config import Run

    traced: list = []
    stops: list[str] = []
    configs: list = []

    def takes_the_runs(frame) -> bool:
        code = frame.f_code
        for name in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]:
            value = frame.f_locals.get(name)
            if isinstance(value, list) and value and (
                    value is configs[0] or all(isinstance(item, Run) for item in value)):
                return True
        return False

    def stop(frame) -> None:
        module = frame.f_globals["__name__"]
        module = module[len("bncompare."):] if module != "bncompare" else module
        if not stops or stops[-1] != module:
            stops.append(module)

    def profile(frame, event, _):
        if event == "call":
            if frame.f_code is cli.run.__code__:
                configs.append(frame.f_locals["configs"])
            if configs and frame.f_globals.get("__name__", "").startswith("bncompare") \
                    and takes_the_runs(frame):
                traced.append(frame)
                stop(frame)
        elif event == "return" and traced and traced[-1] is frame:
            traced.pop()
            if traced:
                stop(traced[-1])

    sys.setprofile(profile)
    try:
        cli.app(argv, prog_name="bncompare")
    except SystemExit as e:
        assert e.code == 0, f"bncompare {' '.join(argv)} exited {e.code}"
    finally:
        sys.setprofile(None)
    return stops


def climbs(stops: list[str]) -> list[tuple[str, str]]:
    """The steps of the walk that go up the layers."""
    return [(low, high) for low, high in zip(stops, stops[1:]) if LAYER[high] > LAYER[low]]


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [["--jobs", "1"], []], ids=["jobs-1", "jobs-auto"])
def test_a_sweeps_runs_climb_back_up_the_layers_at_most_eight_times(tmp_path, jobs):
    """Issue #25's walk: 10 climbs before the contract/status/executors split, 7 after (--jobs 1);
    13 before and 8 after with the default --jobs auto, whose planner asks engines.plan once."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    stops = walk(["run", str(config), "--out", str(tmp_path / "out"), *jobs, "--quiet"])
    assert stops[0] == "cli" and "lifecycle" in stops, stops
    up = climbs(stops)
    print(f"{len(up)} climbs, {len(stops)} stops: {' -> '.join(stops)}")
    assert len(up) <= MAX_CLIMBS, f"{len(up)} climbs: {' -> '.join(stops)}"
