"""`bncompare summary`: one row per condition, as a rich table, CSV, JSON or Markdown.

Rows come from one builder, so every format carries the same numbers: machine formats (csv, json)
keep mean and std as separate fields; human formats (table, markdown) print `mean ± std`.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.table import Table

from bncompare.aggregate import Results, Stats, format_value

METRIC = "val_accuracy"
STATUS_ORDER = ("completed", "diverged")


def condition_keys(results: Results) -> list[str]:
    """Facet keys of every experiment, in order of first appearance."""
    return list(dict.fromkeys(key for e in results.experiments for key in e.facet_keys))


def rows(results: Results) -> list[dict[str, Any]]:
    """One flat record per condition: experiment, condition keys, variant, seeds, metrics, statuses."""
    keys = condition_keys(results)
    records = []
    for experiment in results.experiments:
        for condition in experiment.conditions:
            facets = dict(condition.facets)
            record: dict[str, Any] = {"experiment": experiment.name}
            record.update({key: facets.get(key) for key in keys})
            record.update(variant=condition.variant, seeds=len(condition.runs))
            for name, stats in ((f"final_{METRIC}", condition.final(METRIC)),
                                (f"best_{METRIC}", condition.best(METRIC)),
                                ("train_seconds", condition.train_seconds())):
                record[f"{name}_mean"], record[f"{name}_std"] = stats.mean, stats.std
            statuses = condition.statuses
            record.update({status: statuses.get(status, 0) for status in STATUS_ORDER})
            records.append(record)
    return records


def render(results: Results, fmt: str) -> str | Table:
    """The summary in `fmt` (table | csv | json | markdown); a rich Table for `table`."""
    records = rows(results)
    if fmt == "json":
        return json.dumps(records, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in r.items()} for r in records)
        return buffer.getvalue().rstrip("\n")
    header, body = _human(results, records)
    if fmt == "markdown":
        lines = [header, ["---"] * len(header), *body]
        return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |"
                         for line in lines)
    table = Table(title=_title(results), title_justify="left", header_style="bold")
    for column in header:
        numeric = column in ("seeds", "final val acc", "best val acc", "train (s)")
        # Numbers never wrap (a split "0.97 ±" misreads); long param values may fold instead.
        table.add_column(column, justify="right" if numeric else "left", no_wrap=numeric,
                         overflow="ellipsis" if numeric else "fold")
    for line in body:
        table.add_row(*line)
    return table


def _human(results: Results, records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells for people: only the columns that say something."""
    keys = condition_keys(results)
    several = len(results.experiments) > 1
    header = (["experiment"] * several + keys
              + ["variant", "seeds", "final val acc", "best val acc", "train (s)", "status"])
    body = []
    for r in records:
        stats = {name: Stats(r[f"{name}_mean"], r[f"{name}_std"], 0)
                 for name in (f"final_{METRIC}", f"best_{METRIC}", "train_seconds")}
        status = ", ".join(f"{r[s]} {s}" for s in STATUS_ORDER if r[s])
        body.append([r["experiment"]] * several
                    + ["" if r[k] is None and k not in _keys_of(results, r["experiment"])
                       else format_value(r[k]) for k in keys]
                    + [r["variant"], str(r["seeds"]), _pm(stats[f"final_{METRIC}"]),
                       _pm(stats[f"best_{METRIC}"]), _pm(stats["train_seconds"], 1), status])
    return header, body


def _keys_of(results: Results, name: str) -> list[str]:
    return next(e.facet_keys for e in results.experiments if e.name == name)


def _pm(stats: Stats, digits: int = 4) -> str:
    """'0.9712 ± 0.0021'; no ± with a single seed; '-' when every seed diverged."""
    if stats.mean is None:
        return "-"
    if stats.std is None:
        return f"{stats.mean:.{digits}f}"
    return f"{stats.mean:.{digits}f} ± {stats.std:.{digits}f}"


def _csv_value(value: Any) -> Any:
    return "" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else value


def _title(results: Results) -> str:
    return (f"{results.root}: {results.runs} runs, val acc mean ± std over seeds "
            f"(diverged seeds excluded)")
