"""`bncompare compare`: paired statistics of each variant against a baseline, per condition.

Runs with the same seed see the same initial batches and data order, so a variant and its baseline
at one seed are a *pair*, and the paired difference (variant - baseline) removes the seed's own
luck. Per condition (the params other than the variant and the seed) and per variant other than the
baseline, a row carries:

- n_pairs: seeds finished (completed, not diverged, with a finite metric) in both;
- mean_diff: the mean paired difference, variant - baseline;
- ci_low, ci_high: the 95% t-interval of the paired differences (scipy.stats);
- p_value: the two-sided paired t-test (scipy.stats.ttest_1samp of the differences against 0,
  which is scipy.stats.ttest_rel); None where it is undefined (fewer than two pairs, or differences
  that are all equal);
- wins: pairs where the variant is better (higher, or lower for losses);
- n_diverged_variant, n_diverged_baseline: diverged seeds on each side, which are not in the pairs.

Every number comes from NumPy or scipy; nothing here holds a statistical table.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from bncompare.aggregate import (BASELINE_NAMES, BadFilter, Condition, ExperimentResults, Reduction,
                                 Results, format_value, lower_is_better, machine_readable, series)

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Paired:
    """The paired statistics of one variant against the baseline in one condition."""

    n_pairs: int
    mean_diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    wins: int


def paired(variant: list[float], baseline: list[float], lower_better: bool) -> Paired:
    """Paired-difference statistics of two equally long lists of per-seed values."""
    diffs = np.asarray(variant, dtype=float) - np.asarray(baseline, dtype=float)
    n = len(diffs)
    wins = int(np.sum(diffs < 0) if lower_better else np.sum(diffs > 0))
    if n == 0:
        return Paired(0, None, None, None, None, 0)
    mean = float(np.mean(diffs))
    # Differences equal up to float rounding (0.1 vs 0.10000000000000003) have no spread: t would be
    # infinite or a rounding artefact. One pair has no spread to estimate either.
    rounding = 1e-12 * max(1.0, float(np.max(np.abs(variant))), float(np.max(np.abs(baseline))))
    if n < 2 or np.ptp(diffs) <= rounding:
        return Paired(n, mean, None, None, None, wins)
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # e.g. near-identical differences
        test = stats.ttest_1samp(diffs, 0.0)
        low, high = test.confidence_interval(CONFIDENCE)
    return Paired(n, mean, _finite(low), _finite(high), _finite(test.pvalue), wins)


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def default_baseline(variants: list[str]) -> str:
    """The variant named like no_bn (no_bn, none, baseline...), else the first."""
    return next((v for v in variants if BASELINE_NAMES.fullmatch(v)), variants[0])


def rows(results: Results, metric: str = "val_accuracy", reduction: Reduction = Reduction("final"),
         baseline: str | None = None) -> list[dict[str, Any]]:
    """One flat record per experiment, condition and non-baseline variant (see the module docstring)."""
    if baseline is not None and baseline not in results.variants:
        raise BadFilter(f"--baseline {baseline!r}: no such variant (variants: {', '.join(results.variants)})")
    keys = condition_keys(results)
    records = []
    for experiment in results.experiments:
        base = baseline or default_baseline(experiment.variants)
        if base not in experiment.variants:
            continue  # --baseline names a variant of another experiment
        for facets, conditions in experiment.groups():
            by_variant = {c.variant: c for c in conditions}
            if base not in by_variant:
                continue
            for variant in experiment.variants:
                if variant == base or variant not in by_variant:
                    continue
                record: dict[str, Any] = {"experiment": experiment.name}
                record.update({key: _value(results, by_variant[variant], facets, key) for key in keys})
                record.update(variant=variant, baseline=base, metric=metric, reduce=str(reduction))
                record.update(_pair(by_variant[variant], by_variant[base], metric, reduction))
                records.append(record)
    return records


def condition_keys(results: Results) -> list[str]:
    """The keys a row names its condition by: those given to --where (the condition the user chose,
    even when it is the only one), then the facet keys of every experiment."""
    where = [key for key in results.where if key not in ("variant", "experiment")]
    return list(dict.fromkeys(where + [key for e in results.experiments for key in e.facet_keys]))


def _value(results: Results, condition: Condition, facets: tuple, key: str) -> Any:
    """A condition key's value: from the facets, or for a --where key from the runs' params."""
    found = dict(facets)
    if key in found or key not in results.where:
        return found.get(key)
    return condition.runs[0].metrics["params"].get(key)


def _pair(variant: Condition, baseline: Condition, metric: str, reduction: Reduction) -> dict[str, Any]:
    """The row's statistics: pairs by seed, then `paired`."""
    mine, theirs = _by_seed(variant, metric, reduction), _by_seed(baseline, metric, reduction)
    seeds = [seed for seed in mine if seed in theirs]
    stats = paired([mine[s] for s in seeds], [theirs[s] for s in seeds], lower_is_better(metric))
    return {"n_pairs": stats.n_pairs, "mean_diff": stats.mean_diff, "ci_low": stats.ci_low,
            "ci_high": stats.ci_high, "p_value": stats.p_value, "wins": stats.wins,
            "better": "lower" if lower_is_better(metric) else "higher",
            "n_seeds_variant": len(variant.runs), "n_seeds_baseline": len(baseline.runs),
            "n_diverged_variant": variant.statuses.get("diverged", 0),
            "n_diverged_baseline": baseline.statuses.get("diverged", 0)}


def _by_seed(condition: Condition, metric: str, reduction: Reduction) -> dict[str, float]:
    """Seed -> reduced metric of each completed seed with a finite value (diverged seeds excluded)."""
    found = {}
    for run in condition.runs:
        if run.status != "completed":
            continue  # diverged (no meaningful metric), or still running with --include-running
        value = reduction.of(series(run, ("history", metric)), metric)
        if value is not None:
            found[json.dumps(run.metrics["params"].get("train.seed"))] = value
    return found


# ---- output ---------------------------------------------------------------------------------------


def render(results: Results, records: list[dict[str, Any]], fmt: str):
    """The comparison in `fmt` (table | csv | json | markdown); a rich Table for `table`."""
    if fmt in ("json", "csv"):
        return machine_readable(records, fmt)
    header, body = _human(results, records)
    if fmt == "markdown":
        lines = [header, ["---"] * len(header), *body]
        return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |"
                         for line in lines)
    from rich.table import Table

    table = Table(title=title(records), title_justify="left", header_style="bold",
                  caption=CAPTION, caption_justify="left")
    for column in header:
        table.add_column(column, overflow="fold", no_wrap=column in ("difference [95% CI]", "p"))
    for line in body:
        table.add_row(*line)
    return table


CAPTION = ("difference: variant − baseline, mean over the seeds that finished (not diverged) in both, "
           "with its 95% t-interval; better in k/n seeds: pairs where the variant did better (of N: "
           "the seeds run, when some have no pair); p: two-sided paired t-test")


def title(records: list[dict[str, Any]]) -> str:
    """What every row compares, in words."""
    first = records[0]
    reduction = Reduction.parse(first["reduce"])
    better = "lower" if first["better"] == "lower" else "higher"
    return (f"paired comparison by seed: {reduction.describe(first['metric'])} {first['metric']} "
            f"({better} is better)")


def sentence(record: dict[str, Any]) -> str:
    """'bn − no_bn: +0.0120 [+0.0040, +0.0200], better in 5/5 seeds'."""
    head = f"{record['variant']} − {record['baseline']}: "
    if record["mean_diff"] is None:
        return head + "no seed finished in both"
    return (f"{head}{_difference(record)}, better in "
            f"{record['wins']}/{record['n_pairs']} seed{'s' * (record['n_pairs'] != 1)}")


def _difference(record: dict[str, Any]) -> str:
    """'+0.0240 [+0.0073, +0.0407]': the mean difference and its interval, with one number of
    decimals for the three (enough for the largest to show three significant digits)."""
    values = [v for v in (record["mean_diff"], record["ci_low"], record["ci_high"]) if v is not None]
    largest = max(abs(v) for v in values)
    decimals = 4 if largest == 0 or largest >= 0.01 else min(10, 2 - math.floor(math.log10(largest)))
    text = f"{record['mean_diff']:+.{decimals}f}"
    if record["ci_low"] is not None:
        text += f" [{record['ci_low']:+.{decimals}f}, {record['ci_high']:+.{decimals}f}]"
    return text


def _human(results: Results, records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells for people: the condition, then the row in words."""
    keys = condition_keys(results)
    several = len({r["experiment"] for r in records}) > 1
    header = (["experiment"] * several + keys
              + ["variant − baseline: difference [95% CI], seeds better", "p", "diverged (variant/baseline)"])
    body = []
    for r in records:
        body.append([r["experiment"]] * several
                    + [_facet_cell(results, r, k) for k in keys]
                    + [sentence(r) + _dropped(r), "-" if r["p_value"] is None else _p(r["p_value"]),
                       f"{r['n_diverged_variant']}/{r['n_diverged_baseline']}"])
    return header, body


def _dropped(record: dict[str, Any]) -> str:
    """' (of 5)' when seeds dropped out of the pairs, so n is never silently smaller."""
    total = max(record["n_seeds_variant"], record["n_seeds_baseline"])
    return f" (of {total})" if record["n_pairs"] < total else ""


def _facet_cell(results: Results, record: dict[str, Any], key: str) -> str:
    experiment: ExperimentResults = next(e for e in results.experiments if e.name == record["experiment"])
    known = key in experiment.facet_keys or key in results.where
    return format_value(record[key]) if known else ""


def _p(value: float) -> str:
    return "<1e-6" if value < 1e-6 else f"{value:.2g}" if value < 0.001 else f"{value:.3f}"

