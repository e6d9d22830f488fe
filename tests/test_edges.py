"""The edges of issue 20, each run as a user meets it: hostile YAML in configs, --set and --where,
configs that would fail a whole pack at run time, symbolic links planted in a results directory,
and what a new user trips on. Every case is one line on stderr and an exit code, never a traceback
or a file written outside the directory the user named."""

from __future__ import annotations

import pytest
from results_fixtures import runs_from, sweep_results
from typer.testing import CliRunner

from bncompare.cli import app
from tests.conftest import TINY

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error(result, code: int = 2) -> str:
    """The single error line of a refused command."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# ---- YAML tags PyYAML cannot convert: configs, --set and --where ----------------------------------

BAD_TAGS = ["!!int abc", "!!float abc", "!!bool maybe", "!!timestamp 2001-13-45", "!!int", "2001-13-45"]


@pytest.mark.parametrize("value", BAD_TAGS)
def test_a_tag_that_cannot_convert_its_value_is_one_line_naming_the_key(tmp_path, value):
    config = tmp_path / "c.yaml"
    config.write_text(f"train:\n  batch_size: {value}\n")
    line = one_error(invoke("validate", config))
    assert line.startswith(f"error: {config}:2: train.batch_size: ") and "is not a valid" in line
    config.write_text(TINY)
    line = one_error(invoke("validate", config, "--set", f"train.batch_size={value}"))
    assert f"--set train.batch_size={value}" in line and "is not a valid" in line


HOSTILE_WHERE = {
    "tag": ("!!int abc", "is not a valid int"),
    "recursive alias": ("&a [*a]", "recursive alias"),
    "deep nesting": ("[" * 3000, "nested more than 32 levels"),
    "long number": ("1" + "0" * 400, "401 digits"),
    "5,000 digits": ("9" * 5000, "5,000 digits"),
    # 8 levels of 9 aliases each: 9**8 values once expanded, from 400 bytes
    "alias bomb": ("[&a0 [x,x,x,x,x,x,x,x,x], " + ", ".join(
        f"&a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)) + "]", "100,000 values"),
}


@pytest.mark.parametrize("name", HOSTILE_WHERE)
def test_hostile_where_values_are_refused_within_config_bounds(tmp_path, name):
    value, expected = HOSTILE_WHERE[name]
    results = sweep_results(tmp_path)
    commands = ("summary", "plot", "compare") if name == "tag" else ("summary",)
    for command in commands:
        line = one_error(invoke(command, results, "--where", f"learning_rate={value}"))
        assert line.startswith("error: --where learning_rate: ") and expected in line, line


# ---- configs that would fail every run of a pack at run time ----------------------------------------

PACK_BREAKERS = {
    "unbiased at batch 1": (["model.batch_norm=true", "model.bn_variance=unbiased",
                             "train.batch_size=1"], "model.bn_variance: unbiased multiplies"),
    "ghost with precise": (["model.norm=ghost", "model.ghost_batch_size=32",
                            "record.bn_eval=[moving, precise]"], "ghost cannot be evaluated"),
    "ghost with batch": (["model.norm=ghost", "record.bn_eval=[moving, batch]"],
                         "ghost cannot be evaluated"),
    "ghost with train_eval": (["model.norm=ghost", "record.train_eval=64"], "ghost cannot be evaluated"),
    "30-digit batch": (["train.batch_size=" + "1" * 30], "more than the 512 training examples"),
    "batch larger than the data": (["train.batch_size=513"], "513 is more than the 512 training"),
    "20,000 landscape factors": (["record.landscape_factors=[" + ",".join(["1"] * 20000) + "]"],
                                 "at most 32 items"),
    "duplicate seed": (["train.seeds=[0, 0]"], "duplicate seed 0"),
}


@pytest.mark.parametrize("name", PACK_BREAKERS)
def test_configs_that_fail_at_run_time_are_refused_by_validate(tmp_path, name):
    overrides, expected = PACK_BREAKERS[name]
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("variants", "x") + "variants: {a: {}}\n")
    line = one_error(invoke("validate", config, *[a for o in overrides for a in ("--set", o)]))
    assert expected in line, line


def test_what_a_new_user_trips_on_in_a_config(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert "the config is empty" in one_error(invoke("validate", empty))
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    line = one_error(invoke("validate", config, "--set", "train.learning_rate=0.01,0.1"))
    assert line.endswith("sweep them: --set sweep.train.learning_rate=[0.01,0.1]")
    for name in (".hidden", "a"):
        (tmp_path / "named.yaml").write_text(TINY.replace("name: tiny", f"name: {name}"))
        result = invoke("validate", tmp_path / "named.yaml")
        if name.startswith("."):
            assert "not starting with a dot" in one_error(result)
        else:
            assert result.exit_code == 0


# ---- nothing is written through a symbolic link planted under --out ----------------------------------


def test_planted_symlinks_under_out_are_not_followed(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    first, second = runs_from(tmp_path, TINY)
    out, outside, victim = tmp_path / "out", tmp_path / "outside", tmp_path / "victim"
    outside.mkdir()
    victim.write_text("keep")
    (out / "tiny" / first.run_id).mkdir(parents=True)
    (out / "tiny" / first.run_id / ".claim").symlink_to(victim)
    (out / "tiny" / second.run_id).symlink_to(outside)
    done = invoke("run", config, "--out", out)
    assert done.exit_code == 1 and done.output.count("is a symbolic link") == 2, done.output
    assert victim.read_text() == "keep" and not list(outside.iterdir())

    (tmp_path / "plotted").mkdir()
    results = sweep_results(tmp_path / "plotted")
    (results / "sweep" / "plots").symlink_to(outside)
    line = one_error(invoke("plot", results))
    assert "is a symbolic link" in line and not list(outside.iterdir())
