"""`bncompare summary`: one row per condition, as a rich table, CSV, JSON, Markdown or LaTeX.

Rows come from one builder, so every format carries the same numbers: machine formats (csv, json)
keep mean and std as separate fields, rounded to 6 significant digits; human formats (table,
markdown, latex) print `mean ± std`.

Row order: experiments by name; within one, conditions by their facet values (numbers ascending),
then variants in the experiments' variant order (the baseline, e.g. no_bn, first; then in the order
their first run started, which is the config's order when runs train one after another).
"""

from __future__ import annotations

from typing import Any

from bncompare.aggregate import (Reduction, Results, Stats, condition_keys, format_value,
                                 lower_is_better, machine_readable)

STATUS_ORDER = ("completed", "diverged", "running")
SHORT = {"val_accuracy": "val acc", "accuracy": "train acc", "val_loss": "val loss", "loss": "train loss"}


def rows(results: Results, metric: str = "val_accuracy",
         reduction: Reduction = Reduction("final")) -> list[dict[str, Any]]:
    """One flat record per condition: experiment, condition keys, variant, seeds, metrics, statuses.

    Fields: `<reduce>_<metric>_mean/_std` (e.g. final_val_accuracy_mean), `best_<metric>_mean/_std`,
    `train_seconds_mean/_std`, `packed_members` (>1: the seconds are the shared time of runs trained
    together), and one count per status.
    """
    keys = condition_keys(results)
    name = str(reduction).replace(":", "")  # last:3 -> last3_val_accuracy
    measures = [(f"{name}_{metric}", lambda c: c.reduced(metric, reduction))]
    if reduction.how != "best":
        measures.append((f"best_{metric}", lambda c: c.best(metric)))
    measures.append(("train_seconds", lambda c: c.train_seconds()))
    records = []
    for experiment in results.experiments:
        for condition in experiment.conditions:
            facets = dict(condition.facets)
            params = condition.runs[0].metrics["params"]
            record: dict[str, Any] = {"experiment": experiment.name}
            record.update({key: params.get(key) if key in results.where and key not in facets
                           else facets.get(key) for key in keys})
            record.update(variant=condition.variant, seeds=len(condition.runs))
            for field, measure in measures:
                stats = measure(condition)
                record[f"{field}_mean"], record[f"{field}_std"] = stats.mean, stats.std
            record["packed_members"] = condition.packed_members()
            statuses = condition.statuses
            record.update({status: statuses.get(status, 0) for status in STATUS_ORDER})
            records.append(record)
    return records


def render(results: Results, fmt: str, metric: str = "val_accuracy",
           reduction: Reduction = Reduction("final")):
    """The summary in `fmt` (table | csv | json | markdown | latex); a rich Table for `table`."""
    records = rows(results, metric, reduction)
    if fmt in ("json", "csv"):
        return machine_readable(records, fmt)
    header, body, notes = _human(results, records, metric, reduction)
    if fmt == "markdown":
        lines = [header, ["---"] * len(header), *body]
        text = "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |"
                         for line in lines)
        return text + "".join(f"\n\n{note}" for note in notes)
    if fmt == "latex":
        return _latex(header, body, notes)
    from rich.table import Table

    table = Table(title=_title(results, metric, reduction), title_justify="left", header_style="bold",
                  caption="\n".join(notes) or None, caption_justify="left")
    numeric = set(header[header.index("seeds"):-1])
    for column in header:
        # Numbers never wrap (a split "0.97 ±" misreads); long param values may fold instead.
        table.add_column(column, justify="right" if column in numeric else "left",
                         no_wrap=column in numeric, overflow="ellipsis" if column in numeric else "fold")
    for line in body:
        table.add_row(*line)
    return table


def cells(results: Results, metric: str = "val_accuracy",
          reduction: Reduction = Reduction("final")) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, cells and footnotes of the human formats, for tables drawn elsewhere (the report)."""
    return _human(results, rows(results, metric, reduction), metric, reduction)


def _human(results: Results, records: list[dict[str, Any]], metric: str,
           reduction: Reduction) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, cells and footnotes for people: only the columns that say something."""
    keys = condition_keys(results)
    several = len(results.experiments) > 1
    short = SHORT.get(metric, metric)
    name = str(reduction).replace(":", "")
    label = f"mean of last {reduction.k}" if reduction.how == "last" else reduction.describe(metric)
    fields = [(f"{name}_{metric}", f"{label} {short}")]
    if reduction.how != "best":
        fields.append((f"best_{metric}", f"{'lowest' if lower_is_better(metric) else 'best'} {short}"))
    packed = any(r["packed_members"] > 1 for r in records)
    header = (["experiment"] * several + keys + ["variant", "seeds"] + [label for _, label in fields]
              + ["train (s)" + " *" * packed, "status"])
    body = []
    digits = 4
    for r in records:
        status = ", ".join(f"{r[s]} {s}" for s in STATUS_ORDER if r[s])
        seconds = _pm(Stats(r["train_seconds_mean"], r["train_seconds_std"], 0), 1)
        if r["packed_members"] > 1 and seconds != "-":
            seconds += " *"
        body.append([r["experiment"]] * several
                    + ["" if r[k] is None and k not in _keys_of(results, r["experiment"])
                       and k not in results.where else format_value(r[k]) for k in keys]
                    + [r["variant"], str(r["seeds"])]
                    + [_pm(Stats(r[f"{field}_mean"], r[f"{field}_std"], 0), digits) for field, _ in fields]
                    + [seconds, status])
    notes = []
    if packed:
        notes.append("* trained together with other runs (packed): the seconds are the whole "
                     "group's shared training time, not this run's alone")
    return header, body, notes


def _keys_of(results: Results, name: str) -> list[str]:
    return next(e.facet_keys for e in results.experiments if e.name == name)


def _pm(stats: Stats, digits: int = 4) -> str:
    """'0.9712 ± 0.0021'; no ± with a single seed; '-' when every seed diverged."""
    if stats.mean is None:
        return "-"
    if stats.std is None:
        return f"{stats.mean:.{digits}f}"
    return f"{stats.mean:.{digits}f} ± {stats.std:.{digits}f}"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _latex(header: list[str], body: list[list[str]], notes: list[str]) -> str:
    """A booktabs tabular (\\usepackage{booktabs}); ± as $\\pm$, every other character escaped."""
    def cell(text: str) -> str:
        escaped = "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)
        return escaped.replace(" ± ", r" $\pm$ ").replace("−", "--")

    align = "".join("r" if column in header[header.index("seeds"):-1] else "l" for column in header)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(cell(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {note}" for note in notes]
    return "\n".join(lines)



def _title(results: Results, metric: str, reduction: Reduction) -> str:
    return (f"{results.root}: {results.runs} runs, {reduction.describe(metric)} {metric}, "
            f"mean ± std over seeds (diverged seeds excluded)")
