"""`bncompare compare`: paired statistics of each variant against a baseline, per condition.

Runs with the same seed see the same initial batches and data order, so a variant and its baseline
at one seed are a *pair*, and the paired difference (variant - baseline) removes the seed's own
luck. Per condition (the params other than the variant and the seed) and per variant other than the
baseline, a row carries:

- n_seeds: seeds finished in both (completed with a value, or diverged): every seed counts;
- wins, losses: seeds where the variant did better, or worse; a diverged side loses to a trained
  one, and two diverged sides tie;
- p_rank: the two-sided Wilcoxon signed-rank test over the n_seeds pairs (scipy.stats.wilcoxon),
  a pair with one diverged side counting as a difference larger than any between trained runs (the
  same for every such pair); None when there is no pair;
- p_adjusted: Holm's adjustment of p_rank over the rows of one invocation;
- p_value_adjusted: Holm's adjustment of p_value over the rows of one invocation;
- n_pairs: seeds trained (completed, not diverged, with a finite metric) in both, and over them
- mean_diff: the mean paired difference, variant - baseline;
- ci_low, ci_high: the 95% t-interval of the paired differences (scipy.stats);
- p_value: the two-sided paired t-test (scipy.stats.ttest_1samp of the differences against 0,
  which is scipy.stats.ttest_rel); None where it is undefined (fewer than two pairs, or differences
  that are all equal);
- seeds_needed: seeds for 80% power of that t-test at alpha 0.05 to detect mean_diff, given the
  standard deviation of the differences (the noncentral t, scipy.stats.nct); None when undefined;
- n_diverged_variant, n_diverged_baseline: diverged seeds on each side.

With `tune`, each variant is compared at its own best value of a swept key (see `best_setting`).
Every number comes from NumPy or scipy; nothing here holds a statistical table.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from bncompare.aggregate import (BASELINE_NAMES, BadFilter, Condition, ExperimentResults, Reduction,
                                 Results, check_metric as check_history_metric, condition_keys,
                                 format_value, is_number, lower_is_better, machine_readable, series)

CONFIDENCE = 0.95
ALPHA = 0.05  # the level a row must reach, after Holm's adjustment, to settle its verdict
POWER = 0.8
MAX_SEEDS = 10**9  # past this, seeds_needed is None: the difference is too small to chase
# Evaluated once, at the end of training (`record.test`): in metrics.json's `final`, not its history.
FINAL_ONLY = ("test_accuracy", "test_loss")


@dataclass(frozen=True)
class Paired:
    """The paired statistics of one variant against the baseline over the seeds both trained."""

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
    if n < 2 or np.ptp(diffs) <= _rounding(variant, baseline):
        return Paired(n, mean, None, None, None, wins)
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # e.g. near-identical differences
        test = stats.ttest_1samp(diffs, 0.0)
        low, high = test.confidence_interval(CONFIDENCE)
    return Paired(n, mean, _finite(low), _finite(high), _finite(test.pvalue), wins)


def _rounding(*sides: list[float | None]) -> float:
    """Differences this small are float rounding (0.1 vs 0.10000000000000003), not a difference:
    a t computed from them would be infinite or an artefact, and a rank test would count them."""
    values = [abs(v) for side in sides for v in side if v is not None]
    return 1e-12 * max([1.0, *values])


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Ranked:
    """Every seed's pair, diverged sides included: the counts and the signed-rank test."""

    n_seeds: int
    wins: int
    losses: int
    p_rank: float | None


def ranked(variant: list[float | None], baseline: list[float | None], lower_better: bool) -> Ranked:
    """Wins, losses and the two-sided Wilcoxon signed-rank p-value of per-seed values, None for a
    diverged seed (worse than any trained one)."""
    worse = 1.0 if lower_better else -1.0  # the sign of variant - baseline when the variant is worse
    trained = [v - b for v, b in zip(variant, baseline) if v is not None and b is not None]
    # One diverged side: a difference beyond every finite one, the same for each such pair (ties).
    beyond = 1.0 + 2.0 * max((abs(d) for d in trained), default=0.0)
    rounding = _rounding(variant, baseline)
    diffs = []
    for mine, theirs in zip(variant, baseline):
        if mine is None or theirs is None:
            diffs.append(0.0 if mine is theirs else worse * beyond if mine is None else -worse * beyond)
        else:  # 12 significant digits: 0.3 - 0.2 and 0.2 - 0.1 are one difference, so they tie
            diffs.append(0.0 if abs(mine - theirs) <= rounding else float(f"{mine - theirs:.12g}"))
    signed = np.asarray(diffs, dtype=float) * worse  # > 0: the variant did worse
    n = len(diffs)
    if n == 0:
        return Ranked(0, 0, 0, None)
    return Ranked(n, int(np.sum(signed < 0)), int(np.sum(signed > 0)), signed_rank_p(diffs))


# scipy.stats.wilcoxon's limit for its exact permutation test (ties or zeros, up to 2**13 sign flips).
PERMUTATION_LIMIT = 13


def signed_rank_p(diffs: list[float]) -> float | None:
    """The two-sided p-value of scipy.stats.wilcoxon(diffs) (zero_method "wilcox"); None when undefined.

    Where scipy runs its exact permutation test (ties or zeros among at most 13 differences), the
    same test is computed here by enumerating the sign flips at once: scipy's generic
    permutation_test takes about a second per row at 13 seeds (benchmarks/plot_many_runs.py), and a
    table has many rows. The p-values are scipy's (tests/test_compare.py).
    """
    from scipy import stats

    values = np.asarray(diffs, dtype=float)
    nonzero = values[values != 0]
    if len(values) and not len(nonzero):
        return 1.0  # every pair tied: no evidence either way (scipy's permutation test gives 1)
    ranks = stats.rankdata(np.abs(nonzero))
    ties = len(np.unique(ranks)) < len(ranks)
    if len(values) <= PERMUTATION_LIMIT and (ties or len(nonzero) < len(values)):
        observed = float(np.sum(ranks[nonzero > 0]))
        flips = (np.arange(2 ** len(nonzero))[:, None] >> np.arange(len(nonzero))) & 1
        null = flips @ ranks  # the sum of positive ranks under every sign assignment
        gamma = abs(observed) * np.finfo(float).eps * 100  # permutation_test's tolerance for ties
        less, greater = np.mean(null <= observed + gamma), np.mean(null >= observed - gamma)
        return float(min(1.0, 2 * min(less, greater)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every difference zero: scipy warns
        try:
            return _finite(stats.wilcoxon(values).pvalue)
        except ValueError:  # older scipy: every difference zero
            return None


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values that are not None (the family); None stays.

    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) p_(j)).
    """
    family = [i for i, p in enumerate(p_values) if p is not None]
    p = np.array([p_values[i] for i in family], dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out: list[float | None] = [None] * len(p_values)
    for position, index in enumerate(order):
        out[family[index]] = float(adjusted[position])
    return out


def power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample (paired) t-test at `alpha` with n pairs, for a true mean
    difference of `effect` standard deviations of the differences."""
    from scipy import stats

    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = effect * math.sqrt(n)
    return float(stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift))


def seeds_needed(diffs: list[float]) -> int | None:
    """The fewest seeds with POWER power to detect the observed mean difference, with the observed
    standard deviation of the differences; None with fewer than two differences, none spread or a
    zero mean (nothing to detect), or past MAX_SEEDS."""
    diffs_array = np.asarray(diffs, dtype=float)
    if len(diffs_array) < 2:
        return None
    spread = float(np.std(diffs_array, ddof=1))
    mean = float(np.mean(diffs_array))
    if np.ptp(diffs_array) <= _rounding(diffs) or mean == 0:
        return None
    return seeds_for(abs(mean) / spread)


def seeds_for(effect: float, alpha: float = ALPHA) -> int | None:
    """The fewest pairs giving the paired t-test at `alpha` POWER power for a mean difference of
    `effect` standard deviations; None past MAX_SEEDS."""
    low, high = 1, 2  # power(low) < POWER <= power(high); one pair has no t-test
    while power(effect, high, alpha) < POWER:
        low, high = high, high * 2
        if high > MAX_SEEDS:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if power(effect, middle, alpha) < POWER else (low, middle)
    return high


def _seeds_to_settle(record: dict[str, Any], family: int) -> int:
    """About how many seeds would settle a row over `family` rows: the t-test's 80% power at Holm's
    strictest level (ALPHA / family) for the observed effect (its standard deviation read back
    from the interval), and, for a row the rank test decides, the fewest seeds at which it can
    reach ALPHA at all."""
    from scipy import stats

    needed = record["seeds_needed"] or 0
    n, low, high = record["n_pairs"], record["ci_low"], record["ci_high"]
    if needed and n >= 2 and high > low and record["mean_diff"]:
        spread = (high - low) / 2 / stats.t.ppf(1 - ALPHA / 2, n - 1) * math.sqrt(n)
        needed = seeds_for(abs(record["mean_diff"]) / spread, ALPHA / max(family, 1)) or needed
    return max(needed, rank_floor(family) if by_rank(record) else 2)


def by_rank(record: dict[str, Any]) -> bool:
    """Whether a row is decided by its rank test: when a seed diverged on one side only, the
    t-test sees the survivors alone, and only the rank test counts every seed. Otherwise both tests
    see the same pairs and the t-test decides: the exact signed-rank test cannot reach 0.05 with
    fewer than 6 seeds at all (its smallest two-sided p is 2/2**n), so it would leave every 5-seed
    row undecided however large and consistent the difference."""
    return record["n_pairs"] < record["n_seeds"]


def settled(record: dict[str, Any]) -> bool:
    """Whether a row's Holm-adjusted test excludes no difference at ALPHA (see `by_rank`)."""
    p = record["p_adjusted"] if by_rank(record) else record.get("p_value_adjusted")
    return p is not None and p < ALPHA


@functools.lru_cache(maxsize=64)
def rank_floor(family: int) -> int:
    """The fewest seeds at which the signed-rank test can reach ALPHA after Holm's adjustment over
    `family` rows at all (every seed on one side; Holm's first step is Bonferroni's)."""
    from scipy import stats

    n = 1
    while stats.wilcoxon(np.arange(1.0, n + 1)).pvalue * family >= ALPHA:
        n += 1
    return n


def default_baseline(variants: list[str]) -> str:
    """The variant named like no_bn (no_bn, none, baseline...), else the first."""
    return next((v for v in variants if BASELINE_NAMES.fullmatch(v)), variants[0])


# ---- rows ---------------------------------------------------------------------------------------


def check_metric(results: Results, metric: str, tune: str | None = None) -> None:
    """BadFilter when no usable run recorded `metric` (or, with --tune, the metric it selects on)."""
    if metric in FINAL_ONLY:
        if not any(is_number((run.metrics.get("final") or {}).get(metric))
                   for e in results.experiments for c in e.conditions for run in c.runs):
            raise BadFilter(f"--metric {metric!r}: no run recorded it (record.test: true evaluates "
                            f"the test split at the end of training)")
    else:
        check_history_metric(results, metric)
    if tune is not None and selected_on(metric) != metric:
        check_history_metric(results, selected_on(metric))


def selected_on(metric: str) -> str:
    """The metric --tune selects on: the validation counterpart of a test metric, else the metric."""
    return "val_" + metric.removeprefix("test_") if metric in FINAL_ONLY else metric


def rows(results: Results, metric: str = "val_accuracy", reduction: Reduction = Reduction("final"),
         baseline: str | None = None, tune: str | None = None) -> list[dict[str, Any]]:
    """One flat record per experiment, condition and non-baseline variant (see the module docstring).

    With `tune` (a swept key), each variant is taken at its own best value of that key (`best_setting`).
    """
    if baseline is not None and baseline not in results.variants:
        raise BadFilter(f"--baseline {baseline!r}: no such variant (variants: {', '.join(results.variants)})")
    tuned = tune_key(results, tune) if tune is not None else None
    keys = [key for key in condition_keys(results) if key != tuned]
    records = []
    for experiment in results.experiments:
        base = baseline or default_baseline(experiment.variants)
        if base not in experiment.variants:
            continue  # --baseline names a variant of another experiment
        for facets, conditions in experiment.groups(without=(tuned,) if tuned else ()):
            by_variant = _choose(conditions, tuned, metric, reduction)
            if base not in by_variant:
                continue
            for variant in experiment.variants:
                if variant == base or variant not in by_variant:
                    continue
                mine, theirs = by_variant[variant], by_variant[base]
                record: dict[str, Any] = {"experiment": experiment.name}
                record.update({key: _value(results, mine, facets, key) for key in keys})
                record.update(variant=variant, baseline=base, metric=metric, reduce=str(reduction))
                if tuned:
                    record.update(tuned=tuned, variant_value=dict(mine.facets)[tuned],
                                  baseline_value=dict(theirs.facets)[tuned],
                                  selected_on=selected_on(metric))
                record.update(_pair(mine, theirs, metric, reduction))
                records.append(record)
    for record, adjusted in zip(records, holm([r["p_rank"] for r in records])):
        record["p_adjusted"] = adjusted
    for record, adjusted in zip(records, holm([r["p_value"] for r in records])):
        record["p_value_adjusted"] = adjusted
    return records


def tune_key(results: Results, key: str) -> str:
    """The swept key --tune names (a full key, or its last part when that is unambiguous); BadFilter
    when an experiment did not sweep it."""
    swept = list(dict.fromkeys(k for e in results.experiments for k in e.facet_keys))
    matches = [k for k in swept if k == key] or [k for k in swept if k.endswith("." + key)]
    if len(matches) != 1:
        hint = f"one of {', '.join(matches)}" if matches else f"swept: {', '.join(swept) or 'nothing'}"
        raise BadFilter(f"--tune {key}: not a swept key ({hint})")
    missing = [e.name for e in results.experiments if matches[0] not in e.facet_keys]
    if missing:
        raise BadFilter(f"--tune {key}: experiment {', '.join(missing)} did not sweep {matches[0]} "
                        f"(choose the others with --experiment)")
    return matches[0]


def _choose(conditions: list[Condition], tuned: str | None, metric: str,
            reduction: Reduction) -> dict[str, Condition]:
    """Variant -> the condition it is compared in: its only one, or with --tune its best setting."""
    if tuned is None:
        return {c.variant: c for c in conditions}
    by_variant: dict[str, list[Condition]] = {}
    for condition in conditions:
        by_variant.setdefault(condition.variant, []).append(condition)
    return {variant: best_setting(options, selected_on(metric), reduction)
            for variant, options in by_variant.items()}


def best_setting(conditions: list[Condition], metric: str, reduction: Reduction) -> Condition:
    """The condition (one value of the tuned key) with the best mean over seeds of `metric`.

    A setting at which seeds diverged is never chosen over one at which fewer did: a mean over the
    survivors would reward losing the bad seeds. Settings without any value come last.
    """
    def rank(condition: Condition) -> tuple:
        values = [v for v in _by_seed(condition, metric, reduction).values() if v is not None]
        diverged = condition.statuses.get("diverged", 0) / max(len(condition.runs), 1)
        if not values:
            return (diverged, 1, 0.0)
        mean = float(np.mean(values))
        return (diverged, 0, mean if lower_is_better(metric) else -mean)

    return min(conditions, key=rank)  # the first of equals: the lowest value of the key


def _value(results: Results, condition: Condition, facets: tuple, key: str) -> Any:
    """A condition key's value: from the facets, or for a --where key from the runs' params."""
    found = dict(facets)
    if key in found or key not in results.where:
        return found.get(key)
    return condition.runs[0].metrics["params"].get(key)


def _pair(variant: Condition, baseline: Condition, metric: str, reduction: Reduction) -> dict[str, Any]:
    """The row's statistics: every seed finished in both, then the pairs both trained."""
    mine, theirs = _by_seed(variant, metric, reduction), _by_seed(baseline, metric, reduction)
    seeds = [seed for seed in mine if seed in theirs]
    lower = lower_is_better(metric)
    counted = ranked([mine[s] for s in seeds], [theirs[s] for s in seeds], lower)
    trained = [s for s in seeds if mine[s] is not None and theirs[s] is not None]
    stats = paired([mine[s] for s in trained], [theirs[s] for s in trained], lower)
    return {"n_seeds": counted.n_seeds, "wins": counted.wins, "losses": counted.losses,
            "p_rank": counted.p_rank, "p_adjusted": None, "n_pairs": stats.n_pairs, "mean_diff": stats.mean_diff,
            "ci_low": stats.ci_low, "ci_high": stats.ci_high, "p_value": stats.p_value,
            "seeds_needed": seeds_needed([mine[s] - theirs[s] for s in trained]),
            "better": "lower" if lower else "higher",
            "n_seeds_variant": len(variant.runs), "n_seeds_baseline": len(baseline.runs),
            "n_diverged_variant": variant.statuses.get("diverged", 0),
            "n_diverged_baseline": baseline.statuses.get("diverged", 0)}


def _by_seed(condition: Condition, metric: str, reduction: Reduction) -> dict[str, float | None]:
    """Seed -> reduced metric of each finished seed: a finite value when it completed, None when it
    diverged. Completed runs without a value (and, with --include-running, running ones) are left out."""
    found: dict[str, float | None] = {}
    for run in condition.runs:
        seed = json.dumps(run.metrics["params"].get("train.seed"))
        if run.status == "diverged":
            found[seed] = None
        elif run.status == "completed":
            value = _reduced(run, metric, reduction)
            if value is not None:
                found[seed] = value
    return found


def _reduced(run, metric: str, reduction: Reduction) -> float | None:
    """One run's number: its test score (evaluated once, at the end), or its reduced history series."""
    if metric in FINAL_ONLY:
        value = (run.metrics.get("final") or {}).get(metric)
        return float(value) if is_number(value) and math.isfinite(value) else None
    return reduction.of(series(run, ("history", metric)), metric)


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
        table.add_column(column, overflow="fold", no_wrap=column in ("p (t-test; Holm)", "p (rank; Holm)"))
    for line in body:
        table.add_row(*line)
    return table


CAPTION = ("difference: variant − baseline, mean over the seeds both trained, with its 95% t-interval "
           "and two-sided paired t-test; better/worse in k/n seeds: every seed finished in both, a "
           "diverged run worse than any trained one, and (N seeds run) when some did not finish on one side; "
           "p (rank; Holm): two-sided Wilcoxon signed-rank test over those seeds, then Holm's "
           "adjustment over the rows; cannot tell: the Holm-adjusted p is not below 0.05 (the t-test's "
           "when every seed trained in both, else the rank test's, which counts diverged seeds), and "
           "about N seeds would give the t-test 80% power at the observed difference (and, when "
           "seeds diverged, let the rank test reach 0.05 over this many rows)")


def title(records: list[dict[str, Any]]) -> str:
    """What every row compares, in words."""
    first = records[0]
    reduction = Reduction.parse(first["reduce"])
    better = "lower" if first["better"] == "lower" else "higher"
    text = (f"paired comparison by seed: {reduction.describe(first['metric'])} {first['metric']} "
            f"({better} is better)")
    if "tuned" in first:
        chosen = first["selected_on"]
        text += (f", each variant at its best {first['tuned']} by mean "
                 f"{reduction.describe(chosen)} {chosen}")
        if chosen == first["metric"]:
            text += (" (selected and reported on the same data: optimistic; record.test and "
                     "--metric test_accuracy report on the test split)")
    return text


def sentence(record: dict[str, Any], family: int = 1) -> str:
    """'bn − no_bn: +0.0120 [+0.0040, +0.0200], better in 5/5 seeds', then, unless the row's
    Holm-adjusted rank test settles it, '; cannot tell at 5 seeds (about 9 would)'.

    `family`: the rows Holm adjusted over (how many seeds the rank test needs depends on it).
    """
    head = f"{_side(record, 'variant')} − {_side(record, 'baseline')}: "
    n = record["n_seeds"]
    if n == 0:
        return head + "no seed finished in both"
    if record["mean_diff"] is None:
        text = "no seed trained in both"
    else:
        text = _difference(record)
        if record["n_pairs"] < n:
            text += f" over the {_seeds(record['n_pairs'])} both trained"
    if record["wins"] == record["losses"] == 0:  # equal, or diverged in both, at every seed
        return head + text + f", tied in {n}/{_seeds(n)}"
    worse = record["losses"] > record["wins"]
    text += f", {'worse' if worse else 'better'} in {record['losses' if worse else 'wins']}/{_seeds(n)}"
    if settled(record):
        return head + text
    needed = _seeds_to_settle(record, family)
    return head + text + f"; cannot tell at {_seeds(n)} (about {needed} would)"


def _side(record: dict[str, Any], side: str) -> str:
    """'bn', or with --tune 'bn (learning_rate 0.1)'."""
    if "tuned" not in record:
        return record[side]
    return f"{record[side]} ({record['tuned'].split('.')[-1]} {format_value(record[side + '_value'])})"


def _seeds(n: int) -> str:
    return f"{n} seed{'s' * (n != 1)}"


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
    keys = [key for key in condition_keys(results) if key != records[0].get("tuned")]
    several = len({r["experiment"] for r in records}) > 1
    family = sum(r["p_rank"] is not None for r in records)
    header = (["experiment"] * several + keys
              + ["variant − baseline: difference [95% CI], seeds better", "p (t-test; Holm)",
                 "p (rank; Holm)", "diverged (variant/baseline)"])
    body = []
    for r in records:
        body.append([r["experiment"]] * several
                    + [_facet_cell(results, r, k) for k in keys]
                    + [sentence(r, family) + _dropped(r), f"{_p(r['p_value'])}; {_p(r['p_value_adjusted'])}",
                       f"{_p(r['p_rank'])}; {_p(r['p_adjusted'])}",
                       f"{r['n_diverged_variant']}/{r['n_diverged_baseline']}"])
    return header, body


def _dropped(record: dict[str, Any]) -> str:
    """' (5 seeds run)' when seeds did not finish on one side, so n is never silently smaller."""
    total = max(record["n_seeds_variant"], record["n_seeds_baseline"])
    return f" ({_seeds(total)} run)" if record["n_seeds"] < total else ""


def _facet_cell(results: Results, record: dict[str, Any], key: str) -> str:
    experiment: ExperimentResults = next(e for e in results.experiments if e.name == record["experiment"])
    known = key in experiment.facet_keys or key in results.where
    return format_value(record[key]) if known else ""


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "<1e-6" if value < 1e-6 else f"{value:.2g}" if value < 0.001 else f"{value:.3f}"
