"""`bncompare export` and `bncompare.load`: every eval point of every run as one table that pandas
reads back (csv, parquet, jsonl). Nothing trains: results come from tests/results_fixtures.py."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import bncompare
from bncompare.cli import app
from tests.results_fixtures import runs_from, sweep_results, write_run

runner = CliRunner()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """The fixture sweep, plus a failed run and a killed one (left out with a warning each)."""
    tmp_path = tmp_path_factory.mktemp("export")
    out = sweep_results(tmp_path)
    extra = runs_from(tmp_path, "name: sweep\ndata: {dataset: synthetic}\n"
                      "train: {seeds: [7], optimizer: sgd, learning_rate: 0.5}\n")
    write_run(out, extra[0], [0.4], status="failed")
    write_run(out, extra[1], [0.4, 0.6], status=None)
    return out


def eval_points(results: Path, statuses=("completed", "diverged")) -> int:
    total = 0
    for path in results.glob("*/*/metrics.json"):
        metrics = json.loads(path.read_text())
        if metrics["status"] in statuses:
            total += len(metrics["history"]["step"])
    return total


def test_load_has_a_row_per_run_and_eval_point(results: Path):
    with pytest.warns(UserWarning) as warned:
        table = bncompare.load(results)
    messages = sorted(str(w.message) for w in warned)  # the killed bn run, the failed no_bn run
    assert len(messages) == 2 and messages[0].endswith(": interrupted") and ": failed" in messages[1]
    assert len(table) == eval_points(results) == 27  # 12 runs x 2 points, 3 x bn lr50 1, no_bn lr50 0
    assert list(table.columns[:5]) == ["experiment", "run_id", "variant", "status", "seed"]
    assert {"train.learning_rate", "model.batch_norm", "step", "epoch", "val_accuracy",
            "val_loss", "seconds"} <= set(table.columns)
    final = table.groupby(["variant", "train.learning_rate", "seed"])["val_accuracy"].last()
    assert final[("bn", 0.1, 2)] == pytest.approx(0.75)
    assert set(table["status"]) == {"completed", "diverged"}
    # --where filters as plot's does.
    assert len(bncompare.load(results, where=["variant=bn", "learning_rate=0.01"])) == 6
    with pytest.warns(UserWarning, match="interrupted"):  # the killed bn run: kept out, named
        assert len(bncompare.load(results, where="variant=bn", experiment="sweep")) == 15


def test_export_csv_parquet_and_jsonl_read_back_as_load_gives(results: Path, tmp_path: Path):
    with pytest.warns(UserWarning):
        table = bncompare.load(results)
    printed = runner.invoke(app, ["export", str(results)])
    assert printed.exit_code == 0, printed.output
    assert "warning: skipped" in printed.output  # CliRunner mixes stderr in
    csv_text = printed.stdout[printed.stdout.index("experiment,run_id"):]
    from_csv = pd.read_csv(io.StringIO(csv_text))
    pd.testing.assert_frame_equal(from_csv, table, check_dtype=False)

    written = runner.invoke(app, ["export", str(results), "--out", str(tmp_path / "all.parquet")])
    assert written.exit_code == 0 and "27 rows (18 runs) written to" in written.output, written.output
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "all.parquet"), table)

    lines = runner.invoke(app, ["export", str(results), "--format", "jsonl", "--out",
                                str(tmp_path / "all.jsonl")])
    assert lines.exit_code == 0, lines.output
    text = (tmp_path / "all.jsonl").read_text()
    assert "NaN" not in text and len(text.splitlines()) == 27
    from_jsonl = pd.read_json(tmp_path / "all.jsonl", lines=True)
    pd.testing.assert_frame_equal(from_jsonl, table, check_dtype=False)
    first = json.loads(text.splitlines()[0])
    assert math.isnan(table.iloc[0]["data.train_limit"]) and first["data.train_limit"] is None


def test_export_errors_exit_2_with_one_line(results: Path, tmp_path: Path):
    for args, message in (
            (["--format", "parquet"], "error: --format parquet is binary: give a file with --out"),
            (["--where", "model.depht=3"], "error: --where model.depht="),
            (["--out", str(tmp_path / "missing" / "x.csv")], f"error: --out {tmp_path}/missing/x.csv: "
             f"cannot write")):
        result = runner.invoke(app, ["export", str(results), *args])
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(message), result.output


def test_parquet_without_pyarrow_names_the_extra(results: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what `import pyarrow` finds uninstalled
    result = runner.invoke(app, ["export", str(results), "--out", str(tmp_path / "all.parquet")])
    assert result.exit_code == 2 and not (tmp_path / "all.parquet").exists()
    assert result.output.splitlines()[-1] == ('error: --format parquet needs pyarrow: pip install '
                                              '"bncompare[parquet]"')
