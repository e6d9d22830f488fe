"""Training engines, and the planner that groups a sweep's runs for them.

An engine only trains: given a group of runs (members) and their data, it reports each member's
progress and eval points to the member's Recorder (bncompare/lifecycle.py owns everything else).

| engine | backend | what it does |
| --- | --- | --- |
| `fit` | any | one run through Keras's `Model.fit`: the reference path |
| `tf_pack` | tensorflow | same-seed runs of one invocation in one compiled TF loop (bit-equal to fit) |
| `vmap` | jax | many runs as one program under `jax.vmap` (see engines/vmap.py) |

`train.pack: auto` lets the planner pick the backend's group engine for every run it accepts; a run
it refuses, or any run with `train.pack: off`, trains alone through `fit`, and `--dry-run` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bncompare.config import Run

# The group engine of each backend under `train.pack: auto`.
GROUP_ENGINE = {"tensorflow": "tf_pack", "jax": "vmap", "torch": None}
# Engines whose members learn, bit for bit, what they learn alone: their groups may be split
# between workers without changing a number. A vmap group rounds differently with other members.
SPLITTABLE = ("tf_pack",)


_ENGINES: dict[str, object] = {}


def get(name: str):
    """The engine called `name`, one per process (the vmap engine keeps its compiled programs for
    every group of a sweep); imported on demand: engines import Keras."""
    if name not in _ENGINES:
        _ENGINES[name] = _make(name)
    return _ENGINES[name]


def _make(name: str):
    if name == "fit":
        from bncompare.engines.fit import FitEngine

        return FitEngine()
    if name == "tf_pack":
        from bncompare.engines.tf_pack import TfPackEngine

        return TfPackEngine()
    if name == "vmap":
        from bncompare.engines.vmap import VmapEngine

        return VmapEngine()
    raise ValueError(f"unknown engine {name!r}")


@dataclass
class Group:
    """Runs that one engine trains together (a single run is a group of one)."""

    engine: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""  # why these runs train alone, when the group engine refused them


def plan(runs: list[Run], backend: str, datasets: dict | None = None, workers: int = 1) -> list[Group]:
    """The runs grouped for training, in order of each group's first run. With `datasets` (by
    engines.common.data_key), group sizes are capped by device memory; without, by a default.
    For `workers` processes (--jobs), splittable groups are halved until each has one (`spread`)."""
    from bncompare.engines.common import data_key

    datasets = datasets or {}
    preferred = GROUP_ENGINE.get(backend)
    group_engine = _available(preferred)
    groups: dict[tuple, Group] = {}
    caps: dict[tuple, int] = {}
    order: list[Group] = []
    for run in runs:
        engine, note = group_engine, ""
        if run.params.get("train.pack", "auto") == "off":
            engine, note = None, "train.pack: off"
        elif engine is not None:
            note = engine.refuses(run) or ""
            engine = None if note else engine
        if engine is None:
            order.append(Group("fit", [run], note))
            continue
        key = engine.group_key(run)
        if key not in caps:  # once per key: the vmap engine builds a model to estimate memory
            caps[key] = engine.max_members(run, datasets.get(data_key(run)))
        group = groups.get(key)
        if group is None or len(group.runs) >= caps[key]:
            group = groups[key] = Group(engine.name)
            order.append(group)
        group.runs.append(run)
    return spread(order, workers)


def spread(groups: list[Group], workers: int) -> list[Group]:
    """`groups` with splittable groups halved (largest first) until every one of `workers` has a
    group, or none can be split."""
    groups = list(groups)
    while len(groups) < workers:
        splittable = [g for g in groups if g.engine in SPLITTABLE and len(g.runs) > 1]
        if not splittable:
            break
        largest = max(splittable, key=lambda g: len(g.runs))
        at = groups.index(largest)
        groups[at:at + 1] = [Group(largest.engine, half, largest.note) for half in halves(largest.runs)]
    return groups


def halves(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """`runs` in two halves of about equal training time (each in the runs' order), so that the
    workers they go to finish together: costliest first, each to the half with less so far.
    Splitting a sweep's order in the middle would give one worker every BN run, and the other
    would wait for it (docs/guide.md, "Speed")."""
    if len(runs) < 2:
        return list(runs), []
    costs = [step_cost(run) for run in runs]
    totals, sides = [0.0, 0.0], ([], [])
    for index in sorted(range(len(runs)), key=lambda i: -costs[i]):
        side = 0 if (totals[0], len(sides[0])) <= (totals[1], len(sides[1])) else 1
        sides[side].append(index)
        totals[side] += costs[index]
    first, second = sorted((sorted(side) for side in sides), key=min)  # the first run's half first
    return [runs[i] for i in first], [runs[i] for i in second]


def step_cost(run: Run) -> float:
    """A rough relative cost of one training step, only to balance `halves`: the hidden layers'
    weights (units or filters, consecutive products), a third more with a normaliser (about what
    a BN MLP's steps cost over a plain one's in a tf_pack worker on CPU)."""
    from bncompare.models import layer_sizes, norm_of

    sizes = layer_sizes(run.params)
    weights = sum(a * b for a, b in zip(sizes, sizes[1:])) + sum(sizes) * 100  # 100: a stand-in input
    return weights * (1.34 if norm_of(run.params) != "none" else 1.0)


def _available(name: str | None):
    """The group engine, or None when its module cannot be used here."""
    if name is None:
        return None
    try:
        return get(name)
    except ImportError:
        return None
