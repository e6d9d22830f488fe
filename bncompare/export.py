"""Every eval point of every run as one table: `bncompare export` and `bncompare.load`.

One row per run and eval point: experiment, run_id, variant, status, seed, every param (dotted
name), step, epoch, then every history series (loss, val_accuracy, seconds, val_loss_precise...).
The runs are those `plot` and `summary` use (aggregate.load: finished runs, `--where`,
`--experiment`, `--include-running`), so a table and a figure made with the same filters agree.

Cells are what pandas can group and store: a list or mapping param (`model.hidden`, `model.init`)
is its JSON text, as is every value of a param whose values mix text and numbers across the runs
(`record.eval_every`: "epoch" or 100); a missing or non-finite metric is NaN.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

from bncompare.aggregate import Results

FORMATS = ("csv", "parquet", "jsonl")
IDENTITY_COLUMNS = ("experiment", "run_id", "variant", "status", "seed")
POSITION_COLUMNS = ("step", "epoch")


class ExportError(ValueError):
    """A table that cannot be written as asked; the message says what to do."""


def import_pandas():
    try:
        import pandas
    except ImportError:
        raise ExportError("bncompare export needs pandas: pip install pandas") from None
    return pandas


def records(results: Results) -> list[dict[str, Any]]:
    """The table's rows, in experiment, run id and step order."""
    rows = []
    runs = sorted((run for e in results.experiments for c in e.conditions for run in c.runs),
                  key=lambda run: (str(run.metrics.get("experiment")), run.run_id))
    for run in runs:
        metrics, params = run.metrics, run.metrics.get("params") or {}
        history = metrics.get("history") or {}
        identity = {"experiment": metrics.get("experiment") or run.path.parent.name,
                    "run_id": run.run_id, "variant": metrics.get("variant"),
                    "status": run.status, "seed": params.get("train.seed")}
        cells = {key: _cell(value) for key, value in params.items()}
        series = [key for key in POSITION_COLUMNS if key in history]
        series += [key for key in history if key not in POSITION_COLUMNS]
        for i in range(len(history.get("step") or [])):
            row = dict(identity, **cells)
            for key in series:
                values = history[key] if isinstance(history[key], list) else []
                row[key] = _number(values[i]) if i < len(values) else math.nan
            rows.append(row)
    return rows


def _cell(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _number(value: Any) -> Any:
    return math.nan if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def frame(results: Results):
    """The rows as a pandas DataFrame, columns in the order the module docstring gives."""
    pandas = import_pandas()
    rows = records(results)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = pandas.DataFrame.from_records(rows, columns=columns)
    for column in columns:
        if table[column].dtype == object:
            kinds = {type(v) for v in table[column] if v is not None and v == v}
            # "epoch" and 100: one type, or parquet refuses the column; null is NaN, as a csv
            # read back has it, whatever the column's type.
            text = str in kinds and len(kinds) > 1
            values = [math.nan if v is None else json.dumps(v) if text and not isinstance(v, str)
                      else v for v in table[column]]
            table[column] = pandas.Series(values, index=table.index).infer_objects()
    return table


def load(results_dir: str | Path, *, include_running: bool = False,
         where: str | Iterable[str] = (), experiment: str | None = None):
    """Every eval point of every finished run under `results_dir` as a pandas DataFrame: the rows
    of `bncompare export`. Runs that cannot be used are left out with a warning naming them;
    `where` takes `KEY=VALUE` texts as `--where` does."""
    import warnings

    from bncompare.aggregate import load as load_results

    where = [where] if isinstance(where, str) else list(where)  # one filter given as a string
    results = load_results(Path(results_dir), include_running=include_running, where=where,
                           experiment=experiment)
    for path, reason in results.skipped:
        warnings.warn(f"skipped {path}: {reason}", stacklevel=3)  # the caller of bncompare.load
    return frame(results)


def render(table, fmt: str) -> bytes:
    """The DataFrame in `fmt` (csv, parquet, jsonl) as the bytes of a file."""
    if fmt == "csv":
        return table.to_csv(index=False).encode()
    if fmt == "jsonl":  # strict JSON, one object per line: NaN is null
        lines = (json.dumps({k: _plain(v) for k, v in row.items()}, allow_nan=False)
                 for row in table.to_dict(orient="records"))
        return "".join(line + "\n" for line in lines).encode()
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401 - pandas writes parquet through it
        except ImportError:
            raise ExportError('--format parquet needs pyarrow: pip install "bncompare[parquet]"') from None
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        return buffer.getvalue()
    raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def _plain(value: Any) -> Any:
    """A DataFrame cell as JSON has it: NumPy scalars as Python numbers, NaN as null."""
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value
