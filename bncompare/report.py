"""`bncompare report`: one self-contained HTML page that answers "what does BN change here, and how
sure are we?", to send as a single file.

Per experiment: status counts, what each variant sets, `compare`'s rows in words, as a table and as
a forest plot, warnings (BN's moving-average lag, diverged and skipped runs), the figures `plot`
draws, the summary table, the shared settings, the environment and the commands that reproduce it.

Self-contained and inert: figures are SVG data URIs in <img> (an image cannot run script or load
anything, whatever text a figure holds), there is no script at all, and a Content-Security-Policy
allows only those images and the page's own style (by hash), so opening the page makes no network
request. Everything read from results is untrusted: every string goes through `html.escape`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import shlex
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from bncompare import __version__, compare, summary
from bncompare.aggregate import (ExperimentResults, Reduction, Results, condition_keys, facet_label,
                                 format_value)
from bncompare.config import ConfigError, load_runs
from bncompare.results import now, write_atomic

STYLE = """
:root { color-scheme: light; --line: #d0d7de; --muted: #57606a; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.45;
       color: #1f2328; margin: 0 auto; max-width: 72rem; padding: 1rem 1.5rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { border-bottom: 2px solid var(--line); }
h2, h3 { margin-top: 2rem; } h3 { font-size: 1.1rem; }
.muted, figcaption, caption { color: var(--muted); font-size: .9rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
caption { text-align: left; padding: .3rem 0; }
th, td { border: 1px solid var(--line); padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; white-space: nowrap; }
tr.sure td { font-weight: 600; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; height: auto; display: block; }
dl.settings { columns: 3 17rem; font-size: .9rem; margin: .5rem 0 1rem; }
dl.settings div { break-inside: avoid; display: flex; gap: .5rem; padding: .1rem 0; }
dl.settings dt { min-width: 50%; } dl.settings dd { margin: 0; }
pre { background: #f6f8fa; padding: .75rem; overflow-x: auto; font-size: .85rem; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
ul.words li { margin-bottom: .3rem; } .warn { color: #9a6700; }
@media (max-width: 40rem) { body { padding: .5rem .75rem; } h1 { font-size: 1.3rem; }
                            table { font-size: .8rem; } }
@media print { body { max-width: none; padding: 0; } .scroll, pre { overflow: visible; }
               pre { white-space: pre-wrap; } figure, table, pre { break-inside: avoid; }
               h2 { break-before: page; } section:first-of-type h2 { break-before: auto; } }
"""
# Figures are sized for a paper (plots.PANEL); on screen they read at about this scale.
PIXELS_PER_INCH = 110
Image = tuple[str, str, tuple[int, int]]  # data URI, alt text, (width, height) in CSS pixels
# The compare fields the table shows in its own columns; any other field (added by a later release,
# or by --tune) gets a column of its own, so new statistics show without a change here.
SHOWN = {"experiment", "variant", "baseline", "metric", "reduce", "better", "n_pairs", "mean_diff",
         "ci_low", "ci_high", "p_value", "wins", "n_seeds_variant", "n_seeds_baseline",
         "n_diverged_variant", "n_diverged_baseline"}


def escape(value: Any) -> str:
    """Any value as HTML text: formatted like the tables (format_value), then escaped, quotes too
    (it may go in an attribute). Everything read from results goes through here."""
    return html.escape(value if isinstance(value, str) else format_value(value), quote=True)


def write(results: Results, out: Path, metric: str = "val_accuracy", command: str = "") -> int:
    """Write the page for `results` to `out` atomically; return the number of figures in it."""
    page, figures = build(results, metric, command)
    write_atomic(out, page)
    return figures


def build(results: Results, metric: str = "val_accuracy", command: str = "") -> tuple[str, int]:
    """The page as text, and how many figures it holds. `command` is the one that made it."""
    sections, figures = [], 0
    for number, experiment in enumerate(results.experiments, start=1):
        text, count = _experiment(results, experiment, f"e{number}", metric)
        sections.append(text)
        figures += count
    names = ", ".join(experiment.name for experiment in results.experiments)
    contents = ""
    if len(results.experiments) > 1:
        contents = ("<nav aria-label=\"experiments\"><ul>" + "".join(
            f'<li><a href="#e{n}">{escape(x.name)}</a></li>' for n, x in enumerate(results.experiments, 1))
            + "</ul></nav>")
    skipped = _skipped(results)
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    policy = (f"default-src 'none'; img-src data:; style-src 'sha256-{digest}'; base-uri 'none'; "
              "form-action 'none'")
    head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="referrer" content="no-referrer">\n<link rel="icon" href="data:,">\n'
            f"<title>bncompare report: {escape(names)}</title>\n<style>{STYLE}</style></head>\n")
    intro = (f"<header><h1>What does BatchNorm change? {escape(names)}</h1>"
             f'<p class="muted">{results.runs} runs from <code>{escape(str(results.root))}</code>'
             f"{_where(results)}; written {escape(now())} by bncompare {escape(__version__)}"
             f"{f' with <code>{escape(command)}</code>' if command else ''}.</p>"
             f"{skipped}{contents}</header>\n")
    return head + "<body><main>\n" + intro + "\n".join(sections) + "</main></body></html>\n", figures


def _where(results: Results) -> str:
    if not results.where:
        return ""
    return ", only runs with " + ", ".join(f"<code>{escape(k)}={escape(v)}</code>"
                                          for k, v in results.where.items())


# ---- one experiment ---------------------------------------------------------------------------------


def _experiment(results: Results, experiment: ExperimentResults, anchor: str,
                metric: str) -> tuple[str, int]:
    """The section of one experiment, and its number of figures."""
    # Tables and statistics of this experiment alone, through the same code as the commands.
    one = replace(results, experiments=[experiment], variants=list(experiment.variants))
    runs = [run for c in experiment.conditions for run in c.runs]
    statuses = Counter(run.status for run in runs)
    skipped = [item for item in results.skipped if _belongs(item[0], experiment)]
    counts = ", ".join(f"{n} {status}" for status, n in statuses.most_common())
    counts += f", {len(skipped)} skipped" if skipped else ""
    records = compare.rows(one, metric) if len(experiment.variants) > 1 else []
    notes: list[str] = []
    forest, figures = _figures(one, experiment, records, metric, notes)
    parts = [f'<section aria-labelledby="{anchor}"><h2 id="{anchor}">{escape(experiment.name)}</h2>',
             f'<p class="muted">{len(runs)} run{"s" * (len(runs) != 1)}: {escape(counts)}.</p>',
             _compared(experiment, runs),
             _comparison(one, experiment, records, forest),
             # The caveats next to the numbers they qualify, before the figures.
             _warnings(experiment, runs, skipped, notes),
             _figure_list(figures),
             _summary(one, metric),
             _settings(experiment, runs),
             _reproduce(results, experiment, runs, metric),
             "</section>"]
    return "\n".join(part for part in parts if part), len(forest) + len(figures)


def _belongs(path: Path, experiment: ExperimentResults) -> bool:
    return path.parent == experiment.directory or path.parent.name == experiment.name


def variant_settings(experiment: ExperimentResults) -> dict[str, dict[str, Any]]:
    """What each variant sets: the params that differ between variants and not within one."""
    runs = [run for c in experiment.conditions for run in c.runs]
    keys = dict.fromkeys(key for run in runs for key in run.metrics["params"])
    own = [key for key in keys if key not in experiment.shared and key != "train.seed"
           and key not in experiment.facet_keys]
    first = {}
    for condition in experiment.conditions:
        first.setdefault(condition.variant, condition.runs[0].metrics["params"])
    return {variant: {key: first[variant].get(key) for key in own} for variant in experiment.variants}


def _compared(experiment: ExperimentResults, runs: list) -> str:
    """What was compared, one line per variant, then what varied besides and the seeds."""
    baseline = compare.default_baseline(experiment.variants)
    lines = []
    for variant, settings in variant_settings(experiment).items():
        sets = ", ".join(f"<code>{escape(k)}: {escape(v)}</code>" for k, v in settings.items())
        role = " (baseline)" if variant == baseline and len(experiment.variants) > 1 else ""
        lines.append(f"<li><strong>{escape(variant)}</strong>{role}{': ' + sets if sets else ''}</li>")
    seeds = sorted({format_value(run.metrics["params"].get("train.seed")) for run in runs},
                   key=lambda s: (len(s), s))
    varied = "".join(f"<li>each at <code>{escape(key)}</code> = "
                     f"{escape(', '.join(format_value(v) for v in experiment.values(key)))}</li>"
                     for key in experiment.facet_keys)
    from bncompare.plots import caption

    shared = caption(experiment)
    return (f"<h3>What was compared</h3><ul>{''.join(lines)}{varied}"
            f"<li>seeds: {escape(', '.join(seeds))}</li>"
            f"{f'<li>all runs: {escape(shared)}</li>' if shared else ''}</ul>")


def _comparison(one: Results, experiment: ExperimentResults, records: list[dict[str, Any]],
                forest: list[Image]) -> str:
    """`compare`'s rows in words, as a table and as a forest plot."""
    if not records:
        why = ("one variant only" if len(experiment.variants) == 1 else
               f"no condition has {compare.default_baseline(experiment.variants)} and another variant")
        return (f"<h3>Paired comparison</h3><p>Nothing to compare: {escape(why)} "
                f"({escape(', '.join(experiment.variants))}).</p>")
    keys = condition_keys(one)
    words = "".join(f"<li>{_in_words(record, keys)}</li>" for record in records)
    extra = list(dict.fromkeys(k for r in records for k in r if k not in SHOWN and k not in keys))
    header = keys + ["comparison", "difference [95% CI]", "p (paired t-test)", "seeds better",
                     "diverged (variant/baseline)"] + extra
    body = []
    for r in records:
        sure = r["ci_low"] is not None and (r["ci_low"] > 0 or r["ci_high"] < 0)
        cells = ([f"<td>{escape(r.get(k))}</td>" for k in keys]
                 + [f"<td>{escape(r['variant'])} − {escape(r['baseline'])}</td>",
                    _num("-" if r["mean_diff"] is None else compare._difference(r)),
                    _num("-" if r["p_value"] is None else compare._p(r["p_value"])),
                    _num(f"{r['wins']}/{r['n_pairs']}{compare._dropped(r)}"),
                    _num(f"{r['n_diverged_variant']}/{r['n_diverged_baseline']}")]
                 + [_num(_field(r.get(k))) for k in extra])
        body.append(f'<tr{" class=sure" if sure else ""}>{"".join(cells)}</tr>')
    table = _table(compare.title(records), header, body,
                   f"Bold: the interval excludes 0. {compare.CAPTION}.")
    return (f"<h3>Paired comparison: is the difference real?</h3><ul class=\"words\">{words}</ul>"
            f"{_figure_list(forest)}{table}")


def _facets(record: dict[str, Any], keys: list[str]) -> list[tuple[str, Any]]:
    """The condition a row is about, as (key, value)."""
    return [(k, record.get(k)) for k in keys]


def _in_words(record: dict[str, Any], keys: list[str]) -> str:
    """'At learning_rate=0.01: bn − no_bn: +0.0240 [...], better in 5/5 seeds (p = 0.016); the
    interval excludes 0: bn's final val_accuracy is higher.'"""
    where = facet_label(tuple(_facets(record, keys)))
    text = (f"At {where}: " if where else "") + compare.sentence(record) + compare._dropped(record)
    if record["p_value"] is not None:
        text += f" (paired t-test p = {compare._p(record['p_value'])})"
    low, high = record["ci_low"], record["ci_high"]
    what = f"{record.get('reduce', 'final')} {record['metric']}"
    if record["mean_diff"] is None:
        text += "."
    elif low is None and record["n_pairs"] < 2:
        text += "; one pair has no interval: run more seeds."
    elif low is None:
        text += "; every pair differs by the same amount, so there is no spread to make an interval of."
    elif low > 0 or high < 0:
        direction = "higher" if low > 0 else "lower"
        text += (f"; the interval excludes 0: {record['variant']}'s {what} is {direction} than "
                 f"{record['baseline']}'s.")
    else:
        text += "; the interval contains 0: these seeds cannot tell them apart (run more seeds)."
    return escape(text)


def _field(value: Any) -> str:
    """A compare field shown generically: numbers to 4 significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return format_value(value)


def _num(text: str) -> str:
    return f'<td class="num">{escape(text)}</td>'


def _table(caption: str, header: list[str], body: list[str], note: str = "") -> str:
    """`caption` and `note` text, `header` text, `body` rows of HTML. The note goes above the
    scrolling box, so on a phone it wraps at the screen's width, not the table's."""
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in header)
    return (f'{f"<p class=muted>{escape(note)}</p>" if note else ""}<div class="scroll"><table>'
            f'<caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _figures(one: Results, experiment: ExperimentResults, records: list[dict[str, Any]], metric: str,
             notes: list[str]) -> tuple[list[Image], list[Image]]:
    """(data URI, alt text) of the forest plot (none when nothing is compared), and of every
    figure `plot` draws, as SVG."""
    from matplotlib import rc_context

    from bncompare import plots

    forest, figures = [], []
    keys = condition_keys(one)
    with rc_context(plots.STYLE):
        if len(records) > plots.MAX_PANELS:
            notes.append(f"the forest plot shows the first {plots.MAX_PANELS} of {len(records)} "
                         "rows (the table has them all); choose with --where KEY=VALUE")
            records = records[:plots.MAX_PANELS]
        if records:
            labels = [", ".join(filter(None, [f"{r['variant']} − {r['baseline']}",
                                              facet_label(tuple(_facets(r, keys)))]))
                      for r in records]
            forest.append(_image(plots.forest_figure(experiment, records, labels)))
        for _, figure in plots.figures(experiment, metric, _x_axis(experiment), note=notes.append):
            figures.append(_image(figure))
    return forest, figures


def _x_axis(experiment: ExperimentResults) -> str:
    """Curves against optimizer steps when the runs count their length in steps, else epochs."""
    counted = {c.runs[0].metrics["params"].get("train.steps") is not None for c in experiment.conditions}
    return "step" if counted == {True} else "epoch"


def _image(figure) -> Image:
    """An SVG data URI, the alt text (the figure's title) and the size to show it at."""
    from bncompare import plots

    svg = plots.render(figure, "svg")
    alt = " ".join(figure.get_suptitle().split()) or "figure"
    width, height = figure.get_size_inches()
    size = (round(width * PIXELS_PER_INCH), round(height * PIXELS_PER_INCH))
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode(), alt, size


def _figure_list(figures: list[Image]) -> str:
    # The size sets the aspect ratio before the image decodes; CSS shrinks it to a phone's width.
    return "".join(f'<figure><img src="{uri}" alt="{escape(alt)}" width="{w}" height="{h}"></figure>'
                   for uri, alt, (w, h) in figures)


def _summary(one: Results, metric: str) -> str:
    header, body, notes = summary.cells(one, metric)
    numeric = set(header[header.index("seeds"):-1])
    rows = ["<tr>" + "".join(_num(cell) if column in numeric else f"<td>{escape(cell)}</td>"
                             for column, cell in zip(header, line)) + "</tr>" for line in body]
    caption = (f"One row per condition: final and best {metric}, mean ± std over seeds (diverged "
               f"seeds excluded)")
    return "<h3>Summary</h3>" + _table(caption, header, rows, " ".join(notes))


def _warnings(experiment: ExperimentResults, runs: list, skipped: list[tuple[Path, str]],
              notes: list[str]) -> str:
    """BN's moving-average lag (as the runs recorded it), diverged and skipped runs, figure notes."""
    items = []
    said: dict[str, list[str]] = {}
    for run in runs:
        recorded = run.metrics.get("warnings")
        for text in recorded if isinstance(recorded, list) else []:
            if isinstance(text, str):
                said.setdefault(text, []).append(run.run_id)
    for text, ids in said.items():
        items.append(f"<li>{len(ids)} run{'s' * (len(ids) != 1)} ({escape(_few(ids))}): {escape(text)}</li>")
    diverged = [run for run in runs if run.status == "diverged"]
    if diverged:
        where = []
        for run in diverged:
            at = run.metrics.get("diverged_at")
            step = at.get("step") if isinstance(at, dict) else None
            where.append(f"{run.run_id}{f' at step {format_value(step)}' if step is not None else ''}")
        items.append(f"<li>{len(diverged)} run{'s' * (len(diverged) != 1)} diverged (loss NaN/inf "
                     f"or exploded; left out of means and pairs): {escape(_few(where, 12))}</li>")
    for path, reason in skipped:
        items.append(f"<li>skipped <code>{escape(path.name)}</code>: {escape(reason)}</li>")
    items += [f"<li>{escape(note)}</li>" for note in notes]
    if not items:
        return "<h3>Warnings</h3><p>None.</p>"
    return f'<h3>Warnings</h3><ul class="warn">{"".join(items)}</ul>'


def _few(items: list[str], shown: int = 3) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _skipped(results: Results) -> str:
    """Skipped runs outside every experiment's directory (an unreadable experiment, say)."""
    lost = [(p, r) for p, r in results.skipped
            if not any(_belongs(p, x) for x in results.experiments)]
    if not lost:
        return ""
    return ('<p class="warn">Skipped: '
            + "; ".join(f"<code>{escape(str(path))}</code>: {escape(reason)}" for path, reason in lost)
            + "</p>")


def _settings(experiment: ExperimentResults, runs: list) -> str:
    """The settings every run shares, and the environment the runs trained in."""
    shared = "".join(f"<div><dt><code>{escape(k)}</code></dt><dd>{escape(v)}</dd></div>"
                     for k, v in experiment.shared.items())
    environment: dict[str, Counter] = {}
    for run in runs:
        for key, value in (run.metrics.get("environment") or {}).items():
            environment.setdefault(key, Counter())[format_value(value)] += 1
        engine = run.metrics.get("engine")
        if isinstance(engine, dict):
            members = engine.get("members")
            text = f"{format_value(engine.get('name'))}" + (
                f" ({format_value(members)} runs together)" if members not in (None, 1) else "")
            environment.setdefault("engine", Counter())[text] += 1
    env_rows = []
    for key, values in environment.items():
        text = ", ".join(v if len(values) == 1 else f"{v} ({n} runs)" for v, n in values.most_common())
        env_rows.append(f'<tr><th scope="row">{escape(key)}</th><td>{escape(text)}</td></tr>')
    started = sorted(run.metrics["started_at"] for run in runs if run.metrics.get("started_at"))
    finished = sorted(run.metrics["finished_at"] for run in runs if run.metrics.get("finished_at"))
    if started:
        env_rows.append(f'<tr><th scope="row">trained</th><td>{escape(started[0])} to '
                        f'{escape(finished[-1] if finished else "?")}</td></tr>')
    return ("<h3>Shared settings and environment</h3><p>Every run has these settings:</p>"
            f'<dl class="settings">{shared}</dl>'
            + _table("Environment (values that differ between runs: with their counts)",
                     ["what", "value"], env_rows))


# ---- reproducing it ---------------------------------------------------------------------------------


def reconstruct(experiment: ExperimentResults) -> dict[str, Any] | None:
    """A config that expands to exactly the experiment's runs (same run ids), or None when none
    can be made from what the runs recorded (e.g. a shell loop that did not cross every value)."""
    runs = [run for c in experiment.conditions for run in c.runs]
    settings = variant_settings(experiment)
    # The variants and the sweep set their keys; the base names only what they share.
    params = {key: value for key, value in runs[0].metrics["params"].items()
              if key != "train.seed" and key not in experiment.facet_keys
              and not any(key in own for own in settings.values())}
    config: dict[str, Any] = {"name": experiment.name}
    for key, value in params.items():
        if "." not in key:
            return None
        section, option = key.split(".", 1)
        config.setdefault(section, {})[option] = value
    seeds = sorted({run.metrics["params"].get("train.seed") for run in runs},
                   key=lambda s: (str(type(s)), s))
    config.setdefault("train", {})["seeds"] = seeds
    config["variants"] = settings
    if experiment.facet_keys:
        config["sweep"] = {key: experiment.values(key) for key in experiment.facet_keys}
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, allow_unicode=True)
    with tempfile.TemporaryDirectory(prefix="bncompare-report-") as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            expanded = {run.run_id for run in load_runs([path])}
        except (ConfigError, ValueError, TypeError, KeyError):
            return None
    return config if expanded == {run.run_id for run in runs} else None


def _reproduce(results: Results, experiment: ExperimentResults, runs: list, metric: str) -> str:
    root = experiment.directory.parent
    config = reconstruct(experiment)
    backends = {str((run.metrics.get("environment") or {}).get("backend") or "tensorflow") for run in runs}
    backend = f" --backend {shlex.quote(backends.pop())}" if len(backends) == 1 and \
        backends != {"tensorflow"} else ""
    name = f"{experiment.name}.yaml"
    if config is not None:
        text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, allow_unicode=True)
        train = (f"<p>This config expands to exactly these {len(runs)} runs (the same run ids). Save it "
                 f"as <code>{escape(name)}</code>, then:</p><pre>bncompare run {escape(shlex.quote(name))}"
                 f" --out {escape(shlex.quote(str(root)))}{escape(backend)} --force</pre>"
                 f"<pre>{escape(text)}</pre>")
    else:
        train = ("<p>Each run's directory holds its resolved config, which reproduces that run:</p>"
                 f"<pre>bncompare run {escape(shlex.quote(str(experiment.directory)))}/*/config.yaml"
                 f"{escape(backend)}</pre>")
    selection = f" --experiment {shlex.quote(experiment.name)}" + "".join(
        f" --where {shlex.quote(f'{k}={format_value(v)}')}" for k, v in results.where.items())
    where = shlex.quote(str(results.root))
    analysis = "\n".join(f"bncompare {command} {where}{selection} --metric {shlex.quote(metric)}"
                         for command in ("compare", "summary", "plot"))
    return (f"<h3>Reproduce</h3>{train}<p>The tables and figures above:</p><pre>{escape(analysis)}</pre>")
