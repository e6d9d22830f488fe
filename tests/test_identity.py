"""Results written by the first release (commit ae3ef5b) keep their run ids after an upgrade.

`tests/data/release1_run_ids.json` holds the run ids that release gave every shipped config (and two
command lines from its README). A new key with a default must never rename these runs: a renamed run
is retrained from scratch and its old results are orphaned.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bncompare.config import load_runs

ROOT = Path(__file__).resolve().parents[1]
RELEASE1 = json.loads((ROOT / "tests" / "data" / "release1_run_ids.json").read_text())


@pytest.mark.parametrize("command", sorted(RELEASE1))
def test_release1_run_ids_are_unchanged(command: str) -> None:
    config, *rest = command.split(" --set ")
    runs = load_runs([ROOT / "configs" / config], rest)
    assert [run.run_id for run in runs] == RELEASE1[command]
