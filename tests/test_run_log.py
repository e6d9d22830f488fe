"""run.log beside metrics.json: what the terminal shows for one run (the trained case is in
tests/test_own_code.py); here, without training, a failure's traceback and a skipped run."""

from __future__ import annotations

from pathlib import Path

from bncompare.display import RunLog
from bncompare.lifecycle import Listener, Outcome
from tests.results_fixtures import runs_from, write_run


def test_a_failed_runs_log_holds_its_traceback_and_a_skipped_runs_is_untouched(tmp_path: Path):
    failed, skipped = runs_from(tmp_path, "name: log\ndata: {dataset: synthetic}\n")
    out = tmp_path / "results"
    write_run(out, failed, [0.4], status="failed")  # error "RuntimeError: boom\ntraceback..."
    write_run(out, skipped, [0.4, 0.5])
    log = RunLog(Listener(), out)
    log.sweep_started([failed, skipped])
    log.run_finished(Outcome(failed, "failed", note="RuntimeError: boom"))
    log.run_finished(Outcome(skipped, "skipped", note="already completed"))
    lines = (out / "log" / failed.run_id / "run.log").read_text().splitlines()
    assert lines == [f"[1/2] {failed.run_id} failed (RuntimeError: boom)",
                     "    RuntimeError: boom", "    traceback..."]
    assert not (out / "log" / skipped.run_id / "run.log").exists()
