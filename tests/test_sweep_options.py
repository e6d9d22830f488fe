"""`run`/`validate` --sweep KEY=V1,V2 and --variants A,B: the command line a sweep user expects."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bncompare.cli import app
from bncompare.config import load_runs

runner = CliRunner()


def ids(result) -> list[str]:
    return [line.split()[0] for line in result.output.splitlines() if line.startswith("tiny/")]


def test_sweep_option_is_the_files_sweep(tiny_config: Path, tmp_path: Path):
    swept = tmp_path / "swept.yaml"
    swept.write_text(tiny_config.read_text().replace("name: tiny", "name: tiny\nsweep:\n"
                     "  train.learning_rate: [0.01, 0.1]\n  model.hidden: [[8], [8, 8]]"))
    from_file = [r.run_id for r in load_runs([swept])]
    result = runner.invoke(app, ["validate", str(tiny_config), "--sweep", "train.learning_rate=0.01,0.1",
                                 "--sweep", "model.hidden=[8],[8,8]"])
    assert result.exit_code == 0, result.output
    assert sorted(ids(result)) == sorted(f"tiny/{i}" for i in from_file) and len(from_file) == 8
    # A --sweep of a key the file sweeps replaces that axis.
    replaced = load_runs([swept], sweeps=["train.learning_rate=1.0"])
    assert len(replaced) == 4 and {r["train.learning_rate"] for r in replaced} == {1.0}


def test_variants_option_keeps_the_run_ids(tiny_config: Path, tmp_path: Path):
    every = {r.run_id for r in load_runs([tiny_config])}
    result = runner.invoke(app, ["run", str(tiny_config), "--variants", "bn", "--dry-run",
                                 "--out", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    (only,) = ids(result)
    assert only.startswith("tiny/bn-") and only[len("tiny/"):] in every
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("option, message", [
    (["--variants", "bn,batch"], "error: --variants bn,batch: no variant 'batch' (variants: no_bn, bn)"),
    (["--sweep", "train.learning_rate"], "error: --sweep train.learning_rate: expected KEY=V1,V2,..."),
    (["--sweep", "train.learning_rate=0.1,x"], "error: --sweep train.learning_rate=0.1,x: "
     "sweep.train.learning_rate[2]: expected a number > 0, got 'x'"),
    (["--sweep", "train.lr=0.1", "--set", "train.learning_rate=0.1"], "error: --sweep train.lr=0.1: "
     "sweep.train.lr: unknown key (did you mean train.learning_rate?"),
    (["--sweep", "train.learning_rate=0.1,1", "--set", "train.learning_rate=0.2"],
     "error: --sweep train.learning_rate=0.1,1: train.learning_rate is also given by --set"),
])
def test_bad_sweep_or_variants_exit_2_with_one_line(tiny_config: Path, tmp_path: Path, option, message):
    for command in ("validate", "run"):
        args = [command, str(tiny_config), *option]
        args += ["--out", str(tmp_path / "results")] if command == "run" else []
        result = runner.invoke(app, args)
        assert result.exit_code == 2
        assert result.output.startswith(message) and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "results").exists()
