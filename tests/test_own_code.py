"""A researcher's own model and dataset (`model.kind` / `data.dataset` as "file.py:function"):
trained on every engine that accepts them, named by the function and its file's content, and every
way they can be wrong is a one-line error, exit 2, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bncompare
from bncompare.cli import app
from bncompare.config import load_runs

runner = CliRunner()

# A tiny CNN that calls norm() twice (one function serves both variants), and a 3-class dataset.
MINE = """\
import keras
import numpy as np


def tiny_cnn(input_shape, num_classes, norm, params):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = norm()(x)
    x = keras.layers.Activation("relu", name="act_1")(x)  # measured by record.activations
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = norm()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def blobs(params):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 160)
    x = rng.normal(size=(160, 8, 8, 1)).astype("float32") + y[:, None, None, None]
    return x[:128], y[:128], x[128:], y[128:]


def wrong_logits(input_shape, num_classes, norm, params):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, keras.layers.Dense(num_classes + 1)(keras.layers.Flatten()(inputs)))


def softmax_out(input_shape, num_classes, norm, params):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def not_a_model(input_shape, num_classes, norm, params):
    return "a model"


def two_arrays(params):
    return blobs(params)[:2]


def float_labels(params):
    x_train, y_train, x_val, y_val = blobs(params)
    return x_train, y_train.astype("float32"), x_val, y_val


def broken(params):
    raise RuntimeError("no such table")


def two_arguments(input_shape, num_classes):
    pass
"""
CONFIG = """\
name: own
data: {dataset: "code/mine.py:blobs"}
model: {kind: "code/mine.py:tiny_cnn"}
train: {steps: 4, batch_size: 32, seeds: [0]}
record: {eval_every: 2}
"""


@pytest.fixture
def own(tmp_path: Path) -> Path:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "mine.py").write_text(MINE)
    config = tmp_path / "own.yaml"
    config.write_text(CONFIG)
    return config


def histories(out: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(out.glob("own/*/metrics.json")):
        metrics = json.loads(path.read_text())
        assert metrics["status"] == "completed", metrics.get("error")
        found[metrics["run_id"]] = metrics
    return found


def test_every_variant_trains_on_every_engine_that_accepts_it(own: Path, tmp_path: Path):
    trained = {}
    fit = ["--set", "train.pack=off", "--set", "record.tensorboard=true"]  # same ids: speed/record
    for engine, options in (("tf_pack", []), ("fit", fit)):
        out = tmp_path / engine
        result = runner.invoke(app, ["run", str(own), "--out", str(out), "--quiet", *options,
                                     "--set", "record.activations=true"])
        assert result.exit_code == 0, result.output
        trained[engine] = histories(out)
        assert len(trained[engine]) == 2  # no_bn and bn
        assert {m["engine"]["name"] for m in trained[engine].values()} == {engine}
    # The same runs (ids) on both engines, and the same numbers: tf_pack learns what fit learns.
    assert trained["fit"].keys() == trained["tf_pack"].keys()
    for run_id, metrics in trained["fit"].items():
        assert metrics["history"]["val_loss"] == trained["tf_pack"][run_id]["history"]["val_loss"]
    bn = next(m for m in trained["fit"].values() if m["variant"] == "bn")
    assert list(bn["activations"]) == ["layer_1"] and len(bn["activations"]["layer_1"]["p50"]) == 2
    assert bn["params"]["model.kind"] == str(own.parent / "code" / "mine.py") + ":tiny_cnn"
    # Each run's run.log holds what the terminal shows for it (even under --quiet), its warning
    # (BN's moving averages lag at step 2) included.
    log = (tmp_path / "fit" / "own" / bn["run_id"] / "run.log").read_text().splitlines()
    assert log[0].startswith(f"bncompare {bncompare.__version__}: [2/2] {bn['run_id']} started at")
    assert log[1].startswith(f"warning: {bn['run_id']}: at step 2, BN's moving averages")
    assert [line.split(" step ")[1].split()[0] for line in log[2:4]] == ["2/4", "4/4"]
    assert log[4].startswith(f"[2/2] {bn['run_id']} completed val_acc") and len(log) == 5
    # Figures name the functions, without bncompare's own sizes.
    from bncompare.aggregate import load
    from bncompare.plots import caption

    assert caption(load(tmp_path / "fit").experiments[0]).startswith("blobs, tiny_cnn, adam lr")
    # TensorBoard's HParams dashboard: each run's params (start) and final metrics, read back
    # with TensorBoard's own event reader.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(tmp_path / "fit" / "own" / bn["run_id"]))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["variant"].string_value == "bn"
    assert start.hparams["model.batch_norm"].bool_value is True
    assert start.hparams["train.steps"].number_value == 4
    assert start.hparams["model.kind"].string_value.endswith("mine.py:tiny_cnn")
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == 1  # STATUS_SUCCESS
    (final,) = events.Tensors("final/val_accuracy")
    assert final.step == 4
    assert float(tensor_util.make_ndarray(final.tensor_proto)) == pytest.approx(
        bn["final"]["val_accuracy"])
    # A rerun finds them done: the id of an unedited function is stable.
    again = runner.invoke(app, ["run", str(own), "--out", str(tmp_path / "fit"),
                                "--set", "record.activations=true"])
    assert "2 runs: 2 skipped (done before)." in again.output, again.output


@pytest.mark.parametrize("overrides, layers", [
    (["variants={none: {model.batch_norm: false}}"], ["Identity", "Identity"]),
    (["variants={bn: {model.batch_norm: true}}", "model.bn_momentum=0.9"],
     ["BatchNormalization", "BatchNormalization"]),
    (["variants={layer: {model.norm: layer}}"], ["LayerNormalization", "LayerNormalization"]),
    (["variants={noisy: {model.batch_norm: true}}", "model.bn_noise={mean: 0.1, std: 0.1}"],
     ["Sequential", "Sequential"]),
])
def test_norm_makes_the_runs_normaliser(own: Path, overrides: list[str], layers: list[str]):
    from bncompare.models import build_model

    (run,) = load_runs([own], overrides)
    model = build_model(run.params, (8, 8, 1), 3)
    made = [layer for layer in model.layers if layer.name.startswith(("bn_", "identity_", "noisy_"))]
    assert [type(layer).__name__ for layer in made] == layers
    if layers[0] == "BatchNormalization":
        assert [layer.name for layer in made] == ["bn_1", "bn_2"] and made[0].momentum == 0.9
    if layers[0] == "Sequential":  # BN, then its noise
        assert [type(layer).__name__ for layer in made[0].layers] == ["BatchNormalization",
                                                                      "NoiseAfterNorm"]


def test_editing_the_file_renames_the_run_and_moving_it_does_not(own: Path, tmp_path: Path):
    before = [run.run_id for run in load_runs([own])]
    source = own.parent / "code" / "mine.py"
    source.write_text(MINE + "\n# tried a wider layer\n")
    edited = [run.run_id for run in load_runs([own])]
    assert all(a != b for a, b in zip(before, edited))
    source.write_text(MINE)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "mine.py").write_text(MINE)
    moved = own.with_name("moved.yaml")
    moved.write_text(CONFIG.replace("code/mine.py", "elsewhere/mine.py"))
    assert [run.run_id for run in load_runs([moved])] == before
    # A swept function shows its name in the readable part of the id, not its path.
    swept = load_runs([own], sweeps=["model.kind=code/mine.py:tiny_cnn,code/mine.py:wrong_logits"])
    assert {run.run_id.split("-")[1] for run in swept} == {"kindtiny_cnn", "kindwrong_logits"}


def test_a_module_on_the_python_path_works_too(own: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(own.parent / "code"))
    by_module = load_runs([own], ["model.kind=mine:tiny_cnn", "data.dataset=mine:blobs"])
    # The same function in the same file: the same hash (the --set adds `kindtiny_cnn` in front).
    assert ([r.run_id.rsplit("-", 1)[1] for r in by_module]
            == [r.run_id.rsplit("-", 1)[1] for r in load_runs([own])])


# Found when the config loads (validate too): nothing of the user's code is imported.
CONFIG_ERRORS = [
    ("model.kind=code/nope.py:tiny_cnn", "model.kind: code/nope.py:tiny_cnn: no such file"),
    ("model.kind=no_such_package.models:tiny_cnn", "model.kind: no_such_package.models:tiny_cnn: "
     "cannot find module no_such_package.models"),
    ("model.kind=code/mine.py:missing", "model.kind: code/mine.py:missing: "),
    ("model.kind=code/mine.py:two_arguments", "model.kind: code/mine.py:two_arguments: "),
    ("data.dataset=code/mine.py:tiny_cnn", "data.dataset: code/mine.py:tiny_cnn: "),
    ("model.kind=mine.py", '--set model.kind=mine.py: expected one of mlp, cnn, resmlp, rescnn, or '
     'a function as "package.module:function" or "file.py:function"'),
    ("record.test=true", "record.test: data.dataset is a function, which has no test split"),
]
# Found before anything trains: the import, and what the functions return.
RUN_ERRORS = [
    ("model.kind=code/mine.py:wrong_logits", "wrong_logits: outputs (None, 4); expected (None, 3)"),
    ("model.kind=code/mine.py:softmax_out", "softmax_out: its last layer applies softmax"),
    ("model.kind=code/mine.py:not_a_model", "not_a_model: returned str, not a keras.Model"),
    ("data.dataset=code/mine.py:two_arrays", "two_arrays: returned tuple of 2; expected (x_train"),
    ("data.dataset=code/mine.py:float_labels", "float_labels: y_train holds float32 values"),
    ("data.dataset=code/mine.py:broken", "broken: raised RuntimeError: no such table"),
]


@pytest.mark.parametrize("override, message", CONFIG_ERRORS)
def test_config_errors_exit_2_with_one_line(own: Path, tmp_path: Path, override: str, message: str):
    for command in (["validate"], ["run", "--out", str(tmp_path / "results")]):
        result = runner.invoke(app, [command[0], str(own), "--set", override, *command[1:]])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert result.output.startswith("error: ") and message in result.output, result.output
        assert str(own) in result.output or message.startswith("--set")  # the config, line and key
    assert not (tmp_path / "results").exists()


def test_a_syntax_error_names_the_file_and_line(own: Path):
    (own.parent / "code" / "mine.py").write_text(MINE + "\ndef oops(:\n")
    result = runner.invoke(app, ["validate", str(own)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"mine.py:{MINE.count(chr(10)) + 2}: syntax error" in result.output


@pytest.mark.slow  # a child process imports the backend to build the model
def test_with_jobs_the_model_is_checked_before_the_workers_start(own: Path, tmp_path: Path):
    result = runner.invoke(app, ["run", str(own), "--set", "model.kind=code/mine.py:wrong_logits",
                                 "--jobs", "2", "--out", str(tmp_path / "results")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "wrong_logits: outputs (None, 4); expected (None, 3)" in result.output
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("override, message", RUN_ERRORS)
def test_what_the_functions_return_is_checked_before_anything_is_written(
        own: Path, tmp_path: Path, override: str, message: str):
    result = runner.invoke(app, ["run", str(own), "--set", override, "--out", str(tmp_path / "results")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: ") and message in result.output, result.output
    assert not (tmp_path / "results").exists()
