"""Results for plots and tables: runs read back tolerantly, grouped into conditions, averaged over seeds.

A *condition* is the set of runs whose params differ only in `train.seed`. Within an experiment the
params that vary split in two: those a variant sets (constant within each variant, e.g.
`model.batch_norm`) and the *facet keys*, varied independently of the variant (by a sweep, or by
`--set` in a shell loop). Plots colour by variant and draw one small multiple per combination of
facet values; a numeric facet key is also a sweep axis.

Diverged runs are results: they stay in their condition and are counted, but the final and best
metrics are means over the seeds that did not diverge (a NaN network has no meaningful accuracy).

No matplotlib here; NumPy only for the per-eval-point mean and std of curves.
"""

from __future__ import annotations

import copy
import json
import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from bncompare.config import ConfigError, Run, parse_yaml, varying_keys
from bncompare.results import FINISHED, RunRecord, read_results
from bncompare.schema import SCHEMA

# --x choices -> the history series that holds them.
X_SERIES = {"epoch": "epoch", "step": "step", "time": "seconds"}
# History series that are positions, not metrics.
POSITIONS = ("epoch", "step", "seconds")
# A variant named like this is the baseline of comparisons and comes first in tables.
BASELINE_NAMES = re.compile(r"(no[_-]?(bn|norm)|none|baseline|plain)", re.IGNORECASE)


class NoResults(ValueError):
    """RESULTS_DIR does not exist or holds no usable runs; the message says which."""


class BadFilter(ValueError):
    """A --where, --experiment or --metric that names nothing in the results; the message says what does."""


def lower_is_better(metric: str) -> bool:
    """Losses (loss, val_loss, val_loss_precise, train_eval_loss...) are better when lower."""
    return "loss" in metric


@dataclass(frozen=True)
class Reduction:
    """How a run's curve becomes one number: its final value, its best, or the mean of the last k."""

    how: str  # final | best | last
    k: int = 1

    @classmethod
    def parse(cls, text: str) -> "Reduction":
        """'final', 'best' or 'last:K' (K >= 1 eval points); BadFilter otherwise."""
        if text in ("final", "best"):
            return cls(text)
        # Any K: more than a run's eval points means all of them. The digit bound keeps int() fast.
        match = re.fullmatch(r"last:([1-9][0-9]{0,29})", text)
        if match:
            return cls("last", int(match.group(1)))
        raise BadFilter(f"--reduce {text!r}: expected final, best or last:K (e.g. last:3)")

    def __str__(self) -> str:
        return f"last:{self.k}" if self.how == "last" else self.how

    def describe(self, metric: str) -> str:
        """Words for a table title: 'final', 'lowest', 'mean of the last 3 eval points of'."""
        if self.how == "best":
            return "lowest" if lower_is_better(metric) else "best"
        return "final" if self.how == "final" else f"mean of the last {self.k} eval points of"

    def of(self, values: np.ndarray, metric: str) -> float | None:
        """The reduced value of one run's series (None when it has no finite value to reduce)."""
        if self.how == "best":
            finite = _finite(values)
            if not len(finite):
                return None
            return float(np.min(finite) if lower_is_better(metric) else np.max(finite))
        if not len(values):
            return None
        tail = values[-self.k:]
        # A NaN at the end is a broken run, not a missing point: the reduced value is missing too.
        return float(np.mean(tail)) if np.all(np.isfinite(tail)) else None


@dataclass(frozen=True)
class Stats:
    """Mean, sample standard deviation (None below two values) and count of finite values."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> "Stats":
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if not finite:
            return cls(None, None, 0)
        std = statistics.stdev(finite) if len(finite) > 1 else None
        return cls(statistics.fmean(finite), std, len(finite))


@dataclass(frozen=True)
class Curve:
    """A series averaged over seeds, point by point: eval point i of every seed is aligned."""

    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray  # 0 where fewer than two seeds have the point
    n: np.ndarray


def _series(values: Any) -> np.ndarray:
    """A stored list (null for NaN/inf) as floats; anything else as an empty series."""
    if not isinstance(values, list):
        return np.empty(0)
    return np.array([_number(v) for v in values], dtype=float)


def _number(value: Any) -> float:
    """A stored value as a float: NaN for null, text, booleans and numbers beyond float range."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.nan


def series(run: RunRecord, path: tuple[str, ...]) -> np.ndarray:
    """One recorded series, e.g. ("history", "val_accuracy") or ("activations", "layer_1", "p50")."""
    node: Any = run.metrics
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return _series(node)


def mean_curve(columns: list[tuple[np.ndarray, np.ndarray]]) -> Curve | None:
    """Average (x, y) series of several seeds index by index; seeds may stop early (diverged)."""
    pairs = [(x[:len(y)], y[:len(x)]) for x, y in columns if len(x) and len(y)]
    if not pairs:
        return None
    length = max(len(y) for _, y in pairs)
    xs = np.full((len(pairs), length), np.nan)
    ys = np.full((len(pairs), length), np.nan)
    for row, (x, y) in enumerate(pairs):
        xs[row, :len(x)], ys[row, :len(y)] = x, y
    ok = np.isfinite(ys) & np.isfinite(xs)  # a point needs both its position and its value
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.sum(ok, axis=0)
        mean = np.where(ok, ys, 0).sum(axis=0) / n
        squares = np.where(ok, (ys - mean) ** 2, 0).sum(axis=0)
        std = np.where(n > 1, np.sqrt(squares / np.maximum(n - 1, 1)), 0.0)
        x = np.where(ok, xs, 0).sum(axis=0) / n  # time differs per seed: its mean
    keep = n > 0
    return Curve(x[keep], mean[keep], std[keep], n[keep])


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


@dataclass
class Condition:
    """Runs of one experiment and variant that differ only in their seed."""

    variant: str
    facets: tuple[tuple[str, Any], ...]  # (key, value) of every facet key of the experiment
    runs: list[RunRecord]

    @property
    def statuses(self) -> Counter:
        return Counter(run.status for run in self.runs)

    @property
    def kept(self) -> list[RunRecord]:
        """The runs whose metrics count: those that did not diverge."""
        return [run for run in self.runs if run.status != "diverged"]

    def final(self, metric: str) -> Stats:
        """The metric at the last eval point, over the seeds that did not diverge."""
        return self.reduced(metric, Reduction("final"))

    def best(self, metric: str) -> Stats:
        """The best value of the metric over training (min for losses), over non-diverged seeds."""
        return self.reduced(metric, Reduction("best"))

    def reduced(self, metric: str, reduction: Reduction) -> Stats:
        """The metric reduced per seed (final, best, mean of the last k), over non-diverged seeds."""
        return Stats.of(reduction.of(series(r, ("history", metric)), metric) for r in self.kept)

    def eval_points(self) -> int:
        """The most eval points any seed recorded."""
        return max((len(series(r, ("history", "step"))) for r in self.runs), default=0)

    def packed_members(self) -> int:
        """The largest number of runs trained together with one of these (1: each trained alone).

        Runs trained together report the group's shared wall time as their `seconds`.
        """
        members = [r.metrics.get("engine", {}).get("members") if isinstance(r.metrics.get("engine"), dict)
                   else None for r in self.runs]
        return max([m for m in members if is_number(m)] + [1])

    def train_seconds(self) -> Stats:
        """Training time (evaluation excluded) of every run, diverged ones up to their divergence."""
        return Stats.of(float(v[-1]) if len(v) else None
                        for v in (_finite(series(r, ("history", "seconds"))) for r in self.runs))

    def curve(self, path: tuple[str, ...], x: str) -> Curve | None:
        """Mean and std over seeds of a recorded series against epoch, step or time."""
        return mean_curve([(series(r, ("history", X_SERIES[x])), series(r, path)) for r in self.runs])

    def traces(self, path: tuple[str, ...], x: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """(x, y) of every seed's own series, for drawing seeds under their mean."""
        found = []
        for run in self.runs:
            xs, ys = series(run, ("history", X_SERIES[x])), series(run, path)
            length = min(len(xs), len(ys))
            if length:
                found.append((xs[:length], ys[:length]))
        return found

    def diverged_ends(self, path: tuple[str, ...], x: str) -> list[tuple[float, float | None]]:
        """(x, y) where each diverged run broke: x from `diverged_at` (epoch, step) or its last
        point (time); y its last recorded value, None when it diverged before the first eval."""
        ends = []
        for run in self.runs:
            if run.status != "diverged":
                continue
            xs, ys = series(run, ("history", X_SERIES[x])), series(run, path)
            ok = np.flatnonzero(np.isfinite(xs[:len(ys)]) & np.isfinite(ys[:len(xs)]))
            at = run.metrics.get("diverged_at")
            at_x = at.get(x) if isinstance(at, dict) else None
            if not is_number(at_x):
                at_x = xs[ok[-1]] if len(ok) else math.nan
            ends.append((float(at_x), float(ys[ok[-1]]) if len(ok) else None))
        return ends

    def has(self, block: str) -> bool:
        return any(isinstance(run.metrics.get(block), dict) and run.metrics[block] for run in self.runs)

    def block_keys(self, block: str) -> list[str]:
        """Layer names (activations) or weight paths (gradients) recorded by any seed, in order."""
        keys = {key for run in self.runs for key in (run.metrics.get(block) or {})}
        return sorted(keys, key=natural)


@dataclass
class ExperimentResults:
    """The usable runs of one experiment, grouped into conditions."""

    name: str
    directory: Path  # where its run directories are; plots go to directory/plots by default
    variants: list[str]  # in table order (see `variant_order`)
    facet_keys: list[str]
    conditions: list[Condition]
    shared: dict[str, Any]  # params with one value in every run: what every panel has in common

    @property
    def sweep_keys(self) -> list[str]:
        """Facet keys whose values are all numbers: each gets a sweep plot."""
        values: dict[str, list[Any]] = {}  # one pass: a run may have thousands of params
        for condition in self.conditions:
            for key, value in condition.facets:
                values.setdefault(key, []).append(value)
        return [key for key in self.facet_keys
                if all(is_number(value) for value in values.get(key, ()))]

    def values(self, key: str) -> list[Any]:
        """The distinct values of a facet key, sorted."""
        distinct = {_canonical(value): value for c in self.conditions
                    for k, value in c.facets if k == key}
        return sorted(distinct.values(), key=sort_key)

    def groups(self, without: tuple[str, ...] = ()) -> list[tuple[tuple[tuple[str, Any], ...], list[Condition]]]:
        """Conditions grouped by their facet values (leaving out keys in `without`), sorted."""
        grouped: dict[str, tuple[tuple, list[Condition]]] = {}
        for condition in self.conditions:
            facets = tuple((k, v) for k, v in condition.facets if k not in without)
            grouped.setdefault(_canonical(facets), (facets, []))[1].append(condition)
        return sorted(grouped.values(), key=lambda item: [sort_key(v) for _, v in item[0]])


@dataclass
class Results:
    """Everything `plot` and `summary` work from."""

    root: Path
    experiments: list[ExperimentResults]
    skipped: list[tuple[Path, str]]  # (run directory, why it was skipped)
    variants: list[str]  # every variant name, in the order of the experiments' variants
    where: dict[str, Any] = field(default_factory=dict)  # the --where filters: resolved key -> value

    @property
    def runs(self) -> int:
        return sum(len(c.runs) for e in self.experiments for c in e.conditions)


def condition_keys(results: Results) -> list[str]:
    """The keys a row of `summary` or `compare` names its condition by: those given to --where (the
    condition the user chose, even when it is the only one), then the facet keys of every
    experiment, in order of first appearance."""
    where = [key for key in results.where if key not in ("variant", "experiment")]
    return list(dict.fromkeys(where + [key for e in results.experiments for key in e.facet_keys]))


# ---- loading ------------------------------------------------------------------------------------


def load(root: Path, *, include_running: bool = False, where: Iterable[str] = (),
         experiment: str | None = None) -> Results:
    """Read every run under a results root, an experiment directory or a run directory.

    Runs that are not finished (failed, interrupted, and running unless `include_running`) or not
    usable are listed in `skipped` with the reason (so `experiments` may be empty). `where`
    ("KEY=VALUE" texts) and `experiment` keep only the matching runs; runs they leave out are
    neither used nor reported. Raise NoResults when `root` is missing or holds no run directories
    at all, BadFilter when a filter names a key or experiment that no run has.
    """
    root = Path(root)
    try:
        is_dir = root.is_dir()
    except OSError as e:  # a 300-character name: ENAMETOOLONG
        raise NoResults(f"{root}: {e.strerror or e}") from None
    if not is_dir:
        raise NoResults(f"{root}: " + ("not a directory; give a results directory (the --out of "
                                       "`bncompare run`)" if root.exists() else "no such directory"))
    runs, skipped = read_results(root)
    if not runs and not skipped:
        raise NoResults(f"{root}: no runs found (expected <experiment>/<run_id>/metrics.json)")
    if experiment is not None:
        names = sorted({experiment_name(run) for run in runs})
        if experiment not in names:
            raise BadFilter(f"--experiment {experiment!r}: no such experiment in {root} "
                            f"(experiments: {', '.join(names) or 'none readable'})")
        runs = [run for run in runs if experiment_name(run) == experiment]
        skipped = [(path, why) for path, why in skipped if experiment in (path.name, path.parent.name)]
    filters = [parse_where(text) for text in where]
    if filters:
        known = set().union(*(_keys(run) for run in runs)) if runs else set()
        filters = [(_resolve_key(key, known), value, text) for key, value, text in filters]
        runs = [run for run in runs if all(_matches(run, key, value) for key, value, _ in filters)]
        if not runs:
            raise NoResults(f"{root}: no run matches {' and '.join('--where ' + t for *_, t in filters)}")
    usable = []
    for run in runs:
        problem = _problem(run, include_running)
        if problem:
            skipped.append((run.path, problem))
        else:
            usable.append(run)
    by_experiment: dict[str, list[RunRecord]] = {}
    for run in usable:
        by_experiment.setdefault(experiment_name(run), []).append(run)
    experiments = [_group(name, group) for name, group in sorted(by_experiment.items())]
    variants = list(dict.fromkeys(v for e in experiments for v in e.variants))
    return Results(root, experiments, sorted(skipped, key=lambda item: str(item[0])), variants,
                   {key: value for key, value, _ in filters})


def experiment_name(run: RunRecord) -> str:
    """The experiment a run belongs to: its recorded name, else its directory's parent."""
    return str(run.metrics.get("experiment") or run.path.parent.name)


def history_metrics(results: Results) -> list[str]:
    """Every metric recorded in some run's history (positions like epoch and step excluded)."""
    return list(dict.fromkeys(key for e in results.experiments for c in e.conditions for r in c.runs
                              for key in r.metrics["history"] if key not in POSITIONS))


def check_metric(results: Results, metric: str) -> None:
    """BadFilter naming the recorded metrics when no usable run recorded `metric`."""
    recorded = history_metrics(results)
    if metric not in recorded:
        raise BadFilter(f"--metric {metric!r}: no run recorded it (recorded: {', '.join(recorded)})")


# ---- --where filters ----------------------------------------------------------------------------


def parse_where(text: str) -> tuple[str, Any, str]:
    """'train.learning_rate=0.1' -> (key, value read as YAML, the text); BadFilter when malformed."""
    key, equals, raw = text.partition("=")
    if not equals or not key.strip():
        raise BadFilter(f"--where {text!r}: expected KEY=VALUE, e.g. --where train.learning_rate=0.1")
    try:  # within a config's bounds: an alias bomb or 5,000 digits is refused, not computed
        value = parse_yaml(raw, f"--where {key.strip()}")[0] if raw.strip() else raw
    except ConfigError as e:
        if "invalid YAML" not in str(e):
            raise BadFilter(str(e).replace(":1: ", ": ", 1)) from None
        value = raw  # not YAML (`--where variant=a: b`): compared as the text it is
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 as text; a researcher means the number
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value, text


def _keys(run: RunRecord) -> set[str]:
    return set(run.metrics["params"]) | {"variant", "experiment"}


def _resolve_key(key: str, known: set[str]) -> str:
    """The params key a --where names: exact, or the one key ending in '.KEY' (learning_rate)."""
    if key in known:
        return key
    endings = sorted(k for k in known if k.endswith("." + key))
    if len(endings) == 1:
        return endings[0]
    hint = f"one of {', '.join(endings)}" if endings else "no run has it"
    raise BadFilter(f"--where {key}=...: unknown key ({hint}); keys: variant, experiment, "
                    f"{', '.join(sorted(k for k in known if k not in ('variant', 'experiment')))}")


def _matches(run: RunRecord, key: str, wanted: Any) -> bool:
    if key == "variant":
        value: Any = _variant(run)
    elif key == "experiment":
        value = experiment_name(run)
    else:
        value = run.metrics["params"].get(key)
    if is_number(value) and is_number(wanted):
        return math.isclose(value, wanted, rel_tol=1e-9, abs_tol=0.0)
    return _canonical(value) == _canonical(wanted) or (
        isinstance(value, str) and not isinstance(wanted, str) and value == format_value(wanted))


# ---- grouping -------------------------------------------------------------------------------------


def _problem(run: RunRecord, include_running: bool = False) -> str | None:
    """Why a readable run cannot be plotted, or None."""
    if run.status not in FINISHED and not (include_running and run.status == "running"):
        error = (run.metrics.get("error") or "").strip().splitlines()
        why = f": {error[0][:120]}" if run.status == "failed" and error else ""
        return f"{'still running' if run.status == 'running' else run.status}{why}"
    return None


def variant_order(runs: list[RunRecord]) -> list[str]:
    """Variants in table order: the baseline-like one (no_bn) first, then in the order their first
    run started (the config's order when runs train one after another), ties by name."""
    first: dict[str, str] = {}
    for run in runs:
        started = str(run.metrics.get("started_at") or "")
        name = _variant(run)
        first[name] = min(first.get(name, started), started)
    return sorted(first, key=lambda v: (not BASELINE_NAMES.fullmatch(v), first[v], v))


def _group(name: str, runs: list[RunRecord]) -> ExperimentResults:
    keys = list(dict.fromkeys(key for run in runs for key in run.metrics["params"]))
    # Runs of one config on two Keras backends start from other weights: they are other conditions,
    # not more seeds of one (their ids differ by the backend, their params do not).
    several = len({_backend(r) for r in runs}) > 1
    as_runs = [Run(name, _variant(r), r.run_id, {**params, **({"backend": _backend(r)} if several else {})})
               for r, params in zip(runs, _filled(runs, keys))]
    keys += ["backend"] * several
    variants = variant_order(runs)
    # A key that a variant fixes (one value within each variant) is explained by the colour; the
    # keys that vary within a variant are what the small multiples show.
    varying = varying_keys(as_runs)
    facet_keys = [key for key in varying
                  if any(len({_canonical(r.params[key]) for r in as_runs if r.variant == v}) > 1
                         for v in variants)]
    shared = {key: as_runs[0].params[key] for key in keys if key not in varying and key != "train.seed"}
    conditions: dict[str, Condition] = {}
    for record, run in zip(runs, as_runs):
        facets = tuple((key, run.params[key]) for key in facet_keys)
        condition = conditions.setdefault(_canonical([run.variant, facets]),
                                          Condition(run.variant, facets, []))
        condition.runs.append(record)
    for condition in conditions.values():
        condition.runs.sort(key=lambda r: (sort_key(r.metrics["params"].get("train.seed")), r.run_id))
    ordered = sorted(conditions.values(),
                     key=lambda c: ([sort_key(v) for _, v in c.facets], variants.index(c.variant)))
    directory = Counter(run.path.parent for run in runs).most_common(1)[0][0]
    return ExperimentResults(name, directory, variants, facet_keys, ordered, shared)


def _filled(runs: list[RunRecord], keys: list[str]) -> list[dict[str, Any]]:
    """Each run's params over the union of `keys`. A key a run lacks reads as its default when a
    later release added it (the run was written before it existed), else as the one value the other
    runs of its variant agree on, else None. Without this, one run missing a key its variant sets
    (model.batch_norm) would make that key a facet and split its variant away from every pair."""
    lacking = [key for key in keys if any(key not in run.metrics["params"] for run in runs)]
    agreed: dict[tuple[str, str], Any] = {}
    for key in lacking:
        values: dict[str, dict[str, Any]] = {}
        for run in runs:
            if key in run.metrics["params"]:
                value = run.metrics["params"][key]
                values.setdefault(_variant(run), {})[_canonical(value)] = value
        agreed.update({(key, variant): next(iter(found.values()))
                       for variant, found in values.items() if len(found) == 1})
    filled = []
    for run in runs:
        params = run.metrics["params"]
        own = {key: params.get(key) for key in keys}
        for key in lacking:
            if key in params:
                continue
            if key in SCHEMA and SCHEMA[key].added > 1:
                own[key] = copy.deepcopy(SCHEMA[key].default)
            else:
                own[key] = agreed.get((key, _variant(run)))
        filled.append(own)
    return filled


def _variant(run: RunRecord) -> str:
    return str(run.metrics.get("variant") or "base")


def _backend(run: RunRecord) -> str:
    return str((run.metrics.get("environment") or {}).get("backend") or "tensorflow")


# ---- small helpers shared with plots and tables ---------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sort_key(value: Any) -> tuple:
    """Numbers in numeric order, then everything else by its text, then None."""
    if is_number(value):
        return (0, value, "")
    return (2, 0, "") if value is None else (1, 0, _canonical(value))


def natural(name: str) -> tuple:
    """'layer_10' after 'layer_2': digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def format_value(value: Any) -> str:
    """A param value as a reader expects it: 0.01, true, [256, 128], random_normal(stddev=0.05)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict) and "name" in value:
        args = ", ".join(f"{k}={format_value(v)}" for k, v in value.items() if k != "name")
        return f"{value['name']}({args})"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def clean(value: Any, digits: int = 6) -> Any:
    """A value for csv/json: floats to `digits` significant digits (0.7099999785423279 -> 0.71),
    NaN/inf -> None, containers cleaned inside."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, digits) for v in value]
    return value


def facet_label(facets: tuple[tuple[str, Any], ...]) -> str:
    """'learning_rate=0.01, depth=4': keys without their section, as a title."""
    return ", ".join(f"{key.split('.', 1)[-1]}={format_value(value)}" for key, value in facets)


def machine_readable(records: list[dict[str, Any]], fmt: str) -> str:
    """Rows as `json` (a list of objects) or `csv`, numbers rounded by `clean`."""
    import csv
    import io

    if fmt == "json":
        return json.dumps([{k: clean(v) for k, v in r.items()} for r in records], indent=2)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_cell(clean(v)) for k, v in r.items()} for r in records)
    return buffer.getvalue().rstrip("\n")


def _csv_cell(value: Any) -> Any:
    return "" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else value
