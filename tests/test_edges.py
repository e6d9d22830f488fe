"""The edges of issue 20, each run as a user meets it: hostile YAML in configs, --set and --where,
configs that would fail a whole pack at run time, symbolic links planted in a results directory,
and what a new user trips on. Every case is one line on stderr and an exit code, never a traceback
or a file written outside the directory the user named."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from results_fixtures import runs_from, sweep_results, write_run
from typer.testing import CliRunner

from bncompare import plots
from bncompare.aggregate import load
from bncompare.cli import app
from bncompare.config import on_backend
from bncompare.results import METRICS_FILE, Claim, MetricsFile
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

BAD_TAGS = ["!!int abc", "!!float abc", "!!bool maybe", "!!timestamp 2001-13-45", "!!int", "!!timestamp",
            "2001-13-45"]


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
    "deep nesting": ("[" * 1500, "nested more than 32 levels"),  # past Python's recursion limit
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
    "30-digit batch": (["train.batch_size=" + "1" * 30], "expected an integer from 1 to 2,147,483,647"),
    "batch larger than the data": (["train.batch_size=513"], "513 is more than the 512 training"),
    "40 landscape factors": (["record.landscape_factors=[" + ",".join(["1"] * 40) + "]"],
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
    (out / "tiny" / first.run_id / "run.log").symlink_to(victim)
    (out / "tiny" / second.run_id).symlink_to(outside)
    done = invoke("run", config, "--out", out)
    assert done.exit_code == 1 and done.output.count("is a symbolic link") == 2, done.output
    assert victim.read_text() == "keep" and not list(outside.iterdir())

    (tmp_path / "plotted").mkdir()
    results = sweep_results(tmp_path / "plotted")
    (results / "sweep" / "plots").symlink_to(outside)
    line = one_error(invoke("plot", results))
    assert "is a symbolic link" in line and not list(outside.iterdir())


# ---- what a new user trips on at the command line -----------------------------------------------------


def test_usage_errors_are_one_line_like_every_other_error(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    cases = {("run", tmp_path / "missing.yaml"): "does not exist",
             ("run", tmp_path): "is a directory",
             ("run", config, "--bogus"): "No such option: --bogus",
             ("summary",): "Missing argument 'RESULTS_DIR'",
             ("frob",): "No such command 'frob'"}
    for args, expected in cases.items():
        line = one_error(invoke(*args))
        assert expected in line and line.endswith("--help)"), line
    # --jobs takes auto or a number, read by bncompare itself: one line too.
    assert one_error(invoke("run", config, "--jobs", "0")) == (
        "error: --jobs 0: give auto or a number of worker processes (1 or more)")
    assert "not a directory; give a results directory" in one_error(invoke("summary", config))


def test_no_finished_runs_points_at_include_running(tmp_path):
    (run,) = runs_from(tmp_path, TINY.replace("train:", "variants: {a: {}}\ntrain:"))
    write_run(tmp_path / "out", run, [], status=None)  # a run that has not reached its first eval
    claim = Claim.acquire(tmp_path / "out" / run.experiment / run.run_id)  # its trainer is alive
    try:
        result = invoke("summary", tmp_path / "out")
        assert result.exit_code == 2
        assert result.output.strip().splitlines()[-1].endswith(
            "1 still running: add --include-running to use their curves so far")
        results = load(tmp_path / "out", include_running=True)
        figures = dict(plots.figures(results.experiments[0], "val_accuracy", "epoch"))
    finally:
        claim.release()
    texts = [t.get_text() for f in figures.values() for ax in f.axes for t in ax.texts]
    assert "no eval point yet:\nstill training" in texts


def test_one_eval_point_tells_bn_evaluation_modes_apart_by_marker(tmp_path):
    (run,) = runs_from(tmp_path, TINY.replace("train:", "variants: {a: {model.batch_norm: true}}\n"
                                              "record: {bn_eval: [moving, precise]}\ntrain:"))
    out = tmp_path / "out"
    run_dir = write_run(out, run, [])
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    metrics["history"].update({key: [value] for key, value in {
        "epoch": 1, "step": 8, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.6, "val_accuracy": 0.7,
        "seconds": 1.0, "val_loss_precise": 0.5, "val_accuracy_precise": 0.75}.items()})
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics))
    figure = plots.curves_figure(load(out).experiments[0], "val_accuracy", "epoch")
    markers = {line.get_linestyle(): line.get_marker() for line in figure.axes[0].lines}
    assert markers["-"] != markers["--"], markers


def test_plot_titles_stay_short_with_thousands_of_params(tmp_path):
    runs = runs_from(tmp_path, TINY.replace("seeds: [0]", "seeds: [0, 1]"))
    out = tmp_path / "out"
    for n, run in enumerate(runs):  # the last two (one variant) differ in 2,000 params
        junk = {f"junk.k{i}": i + n for i in range(2000)} if n >= len(runs) - 2 else {}
        write_run(out, dataclasses.replace(run, params={**run.params, **junk}), [0.3, 0.5])
    result = invoke("plot", out)
    assert result.exit_code == 0, result.output
    figure = plots.curves_figure(load(out).experiments[0], "val_accuracy", "epoch")
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles and max(t.count("\n") + 1 for t in titles) <= plots.MAX_TITLE_LINES


# ---- paths: long names, an empty --out, unreadable run directories ---------------------------------


def test_a_300_character_name_and_an_empty_out_are_one_line_errors(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    long = tmp_path / ("x" * 300)
    assert "File name too long" in one_error(invoke("run", config, "--out", long / "inner"))
    for command in ("summary", "plot", "compare"):
        assert "File name too long" in one_error(invoke(command, long))
    assert "--out '': empty" in one_error(invoke("run", config, "--out", ""))
    assert "--out '': empty" in one_error(invoke("plot", sweep_results(tmp_path), "--out", ""))
    assert not list(Path.cwd().glob("tiny"))


def test_reduce_takes_any_number_of_last_points(tmp_path):
    results = sweep_results(tmp_path)
    result = invoke("summary", results, "--reduce", "last:9999999999", "--format", "json")
    assert result.exit_code == 0, result.output
    every = json.loads(invoke("summary", results, "--reduce", "last:2", "--format", "json").output)
    assert [row["last9999999999_val_accuracy_mean"] for row in json.loads(result.output)] == [
        row["last2_val_accuracy_mean"] for row in every]  # 2 points each: all of them


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode-000 directories")
def test_a_mode_000_run_directory_is_a_warning_not_silence(tmp_path):
    results = sweep_results(tmp_path)
    hidden = next((results / "sweep").iterdir())
    hidden.chmod(0)
    try:
        result = invoke("summary", results)
    finally:
        hidden.chmod(0o755)
    assert f"skipped {hidden}" in result.output


# ---- identity: the backend, and a member's own failure ------------------------------------------------


def test_the_backend_enters_the_run_id_except_tensorflows(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    ids = {}
    for backend in ("tensorflow", "jax", "torch"):
        result = runner.invoke(app, ["validate", str(config)], env={"KERAS_BACKEND": backend})
        assert result.exit_code == 0, result.output
        ids[backend] = [line.split()[0].split("/")[1] for line in result.output.splitlines()[1:]]
    assert ids["tensorflow"] == [run.run_id for run in runs_from(tmp_path, TINY)]  # release 1-2 ids
    for backend in ("jax", "torch"):
        assert [i.rsplit("-", 2)[1] for i in ids[backend]] == [backend] * 2
        assert not set(ids[backend]) & set(ids["tensorflow"])


def test_a_member_that_fails_alone_leaves_its_pack_mates_training(tmp_path, monkeypatch):
    """One member's evaluation raising (a config validate cannot foresee) fails that member only."""
    from bncompare import bn_eval

    real = bn_eval.extra_history

    def extra_history(model, data, params, moving=None):
        if params["train.learning_rate"] == 0.01:
            raise ValueError("this member's own evaluation broke")
        return real(model, data, params, moving)

    monkeypatch.setattr(bn_eval, "extra_history", extra_history)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("epochs: 2", "steps: 8") + "record: {eval_every: 4, train_eval: 64}\n"
                      "sweep: {train.learning_rate: [0.001, 0.01]}\nvariants: {bn: {model.norm: batch}}\n")
    result = invoke("run", config, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 1, result.output
    found = {json.loads(p.read_text())["params"]["train.learning_rate"]: json.loads(p.read_text())
             for p in (tmp_path / "out" / "tiny").glob("*/metrics.json")}
    assert {lr: m["engine"]["members"] for lr, m in found.items()} == {0.001: 2, 0.01: 2}
    for lr, metrics in found.items():
        if lr == 0.01:
            assert metrics["status"] == "failed" and "own evaluation broke" in metrics["error"]
        else:
            assert metrics["status"] == "completed" and metrics["history"]["step"] == [4, 8]


# ---- a signal while the interpreter exits ----------------------------------------------------------

# The command runs as the console script does; an exit hook registered after bncompare's own (so
# run before it, as TensorFlow's and Ray's are) signals the process while it shuts down.
LATE_SIGNAL = """\
import atexit, os, signal, sys, time
from bncompare import __main__ as command, interrupts
interrupts.install()
atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.3)))
sys.argv = ["bncompare", *sys.argv[1:]]
command.main()
"""


@pytest.mark.parametrize("command", ["validate", "summary"])
def test_a_signal_while_exiting_exits_130_not_0_or_by_the_signal(tmp_path, command):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    target = config if command == "validate" else sweep_results(tmp_path)
    done = subprocess.run([sys.executable, "-c", LATE_SIGNAL, command, str(target)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, (done.returncode, done.stdout[-500:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_help_texts_wrap_between_words_at_80_columns():
    for command in ("run", "summary", "compare", "plot", "validate"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
        assert result.exit_code == 0
        text = result.output
        assert "markdow\n" not in text.replace("│", "").replace(" ", ""), command
        # a docstring's own line break used to leave a two-word fragment ("when every run")
        description = text.split("╭")[0].strip().splitlines()[2:]
        lines = [line.strip() for line in description if line.strip()]
        assert all(len(line) > 40 or line.endswith(".") for line in lines), (command, lines)


def test_runs_of_two_backends_are_two_conditions_not_more_seeds(tmp_path):
    runs = runs_from(tmp_path, TINY.replace("seeds: [0]", "seeds: [0, 1]") + "variants: {a: {}}\n")
    out = tmp_path / "out"
    for backend in ("tensorflow", "jax"):
        for run in on_backend(runs, backend):
            (out / run.experiment / run.run_id).mkdir(parents=True)
            metrics = MetricsFile(out / run.experiment / run.run_id, experiment=run.experiment,
                                  run_id=run.run_id, variant=run.variant, params=run.params,
                                  environment={"backend": backend})
            metrics.add_point({"epoch": 1, "step": 8, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0,
                               "val_accuracy": 0.9 if backend == "jax" else 0.5, "seconds": 1.0})
            metrics.finish("completed")
    result = invoke("summary", out, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {row["backend"]: row for row in json.loads(result.output)}
    assert sorted(rows) == ["jax", "tensorflow"] and {r["seeds"] for r in rows.values()} == {2}
    assert rows["jax"]["final_val_accuracy_mean"] == 0.9


def test_a_run_of_one_compiled_call_reports_its_compile_time(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("epochs: 2", "steps: 8") + "variants: {a: {}}\n")
    result = invoke("run", config, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "out" / "tiny").glob("*/metrics.json")
    metrics = json.loads(path.read_text())
    assert metrics["engine"]["name"] == "tf_pack"
    assert metrics["final"]["compile_seconds"] > 0  # 8 steps: one call, nothing after it to compare
    assert 0 <= metrics["history"]["seconds"][-1] == metrics["final"]["train_seconds"]
