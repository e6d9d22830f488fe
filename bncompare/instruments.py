"""Instruments: what happens inside the network, measured at every eval point (`record:` keys).

- `record.activations`: the 15th, 50th and 85th percentiles, mean and std of the input to each hidden
  layer's nonlinearity (the tensor that feeds layer `act_{i}`), on a fixed probe batch of validation
  data (its first 1,000 examples; 256 for a CNN), in inference mode (BN uses its moving statistics,
  dropout is off: what `evaluate` sees).
  Statistics pool every probe example and every unit of the layer (for a CNN every position and
  channel, through a fixed random subset of 200,000 values);
  Ioffe & Szegedy 2015, Figure 1 (b, c) plot one typical unit, which behaves like the pooled layer.
  What this tensor is depends on `model.bn_placement`:
    before_activation: BN(W x), i.e. gamma * normalised + beta; with BN it is normalised by design.
    after_activation:  W x + b, the raw weighted sum. It is *not* normalised: BN sits after the
                       nonlinearity and normalises the next layer's input x instead. Layer 1's x is
                       the image itself, so `layer_1` is the same kind of quantity with or without BN.
    no BN:             W x + b.
  Stored as metrics["activations"]["layer_1"] = {"p15": [...], "p50": [...], "p85": [...],
  "mean": [...], "std": [...]}, one value per eval point, aligned with history.step.
- `record.gradients`: the L2 norm of the loss gradient for every trainable variable ("dense_1/kernel",
  "bn_1/gamma", "output/bias"...), on the same probe batch, in training mode (BN normalises with the
  probe batch's statistics, dropout is on), as metrics["gradients"][path] = {"norm": [...]}.
  The forward pass is `model.stateless_call`, which returns the updated BN moving statistics and
  dropout seed instead of assigning them: nothing that training reads is changed.
- `record.tensorboard`: event files in the run directory (`tensorboard --logdir results/`): the
  history's scalars at every eval point, plus the activation statistics (and a histogram of the
  probe values) and gradient norms when they are recorded.

Instruments must not change what is trained: they read the model, never write it, and draw no random
numbers from Keras's global generator. tests/test_instruments.py checks that the same seed gives the
same metrics with them on or off.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from bncompare.backend import import_keras
from bncompare.data import Dataset

# The probe batch: the first N validation examples, fixed for the whole run. A CNN layer has ~800x
# more values per example than an MLP layer, so its probe is smaller and its statistics use a fixed
# random subset of at most MAX_VALUES values per layer (percentiles of 25M values cost seconds).
PROBE_EXAMPLES = {"mlp": 1000, "cnn": 256, "resmlp": 1000, "rescnn": 256}
MAX_VALUES = 200_000
PERCENTILES = (15, 50, 85)  # Ioffe & Szegedy 2015, Figure 1 (b, c)
TENSORBOARD_EVENTS = "events.out.tfevents.*"


class Instruments:
    """The instruments one run's `record:` keys ask for; `measure` runs them at an eval point."""

    def __init__(self, params: dict[str, Any], data: Dataset, run_dir: Path):
        self.activations = params["record.activations"]
        self.gradients = params["record.gradients"]
        self.tensorboard = params["record.tensorboard"]
        # A researcher's own model may be convolutional: the smaller probe is safe for either.
        examples = PROBE_EXAMPLES.get(params["model.kind"], PROBE_EXAMPLES["cnn"])
        self.x_probe, self.y_probe = data.x_val[:examples], data.y_val[:examples]
        self._subsets: dict[str, np.ndarray] = {}
        self.seconds = 0.0  # time spent measuring, for cost reports; not part of the run's metrics
        self._probe_model = None
        self._writer = _SummaryWriter(Path(run_dir)) if self.tensorboard else None

    @property
    def on(self) -> bool:
        """Whether any instrument is on (`measure` then needs the model)."""
        return bool(self.activations or self.gradients or self.tensorboard)

    def measure(self, model, point: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
        """Per-layer blocks for `MetricsFile.add_point` (empty when nothing is recorded)."""
        if not self.on:
            return {}
        started = time.perf_counter()
        blocks: dict[str, dict[str, dict[str, float]]] = {}
        values: dict[str, np.ndarray] = {}
        if self.activations:
            values = self._nonlinearity_inputs(model)
            blocks["activations"] = {layer: _statistics(v) for layer, v in values.items()}
        if self.gradients:
            blocks["gradients"] = gradient_norms(model, self.x_probe, self.y_probe)
        if self._writer is not None:
            self._write_summaries(point, blocks, values)
        self.seconds += time.perf_counter() - started
        return blocks

    def start_session(self, run) -> str | None:
        """With record.tensorboard: the run's variant and params as TensorBoard HParams data (the
        dashboard's columns). A warning to show when that cannot be written, else None."""
        if self._writer is None:
            return None
        return self._writer.hparams_start(run)

    def end_session(self, status: str, final: dict[str, Any], step: int) -> None:
        """With record.tensorboard: the run's final metrics (scalars `final/<name>`, the HParams
        dashboard's metric columns) and its end."""
        if self._writer is not None:
            self._writer.hparams_end(status, final, step)

    def _nonlinearity_inputs(self, model) -> dict[str, np.ndarray]:
        """{"layer_1": values, ...}: the inputs of layers act_1, act_2... on the probe batch."""
        keras = import_keras()
        if self._probe_model is None:
            # act_{i} only: a researcher's model may have an `act_out` of its own.
            names = sorted((layer.name for layer in model.layers
                            if re.fullmatch(r"act_\d+", layer.name)),
                           key=lambda name: int(name.split("_")[1]))
            self._layer_keys = [f"layer_{name.split('_')[1]}" for name in names]
            if not names:  # a researcher's model without act_{i} layers: nothing to measure
                return {}
            self._probe_model = keras.Model(model.input,
                                            [model.get_layer(name).input for name in names])
        outputs = self._probe_model(self.x_probe, training=False)
        values = {}
        for key, out in zip(self._layer_keys, outputs):
            flat = keras.ops.convert_to_numpy(out).ravel()
            if flat.size > MAX_VALUES:
                if key not in self._subsets:  # the same values at every eval point; own generator
                    rng = np.random.default_rng(0)
                    self._subsets[key] = np.sort(rng.choice(flat.size, MAX_VALUES, replace=False))
                flat = flat[self._subsets[key]]
            values[key] = flat
        return values

    def _write_summaries(self, point: dict[str, Any], blocks: dict, values: dict) -> None:
        step = point["step"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch"):
            if point.get(key) is not None:
                self._writer.scalar(key, point[key], step)
        for layer, stats in blocks.get("activations", {}).items():
            for stat, value in stats.items():
                self._writer.scalar(f"activations/{layer}/{stat}", value, step)
            self._writer.histogram(f"activations/{layer}", values[layer], step)
        for path, stats in blocks.get("gradients", {}).items():
            self._writer.scalar(f"gradients/{path}", stats["norm"], step)
        self._writer.flush()  # a killed run keeps its curves, as metrics.json does


def _statistics(values: np.ndarray) -> dict[str, float]:
    flat = values.astype(np.float64)
    p15, p50, p85 = np.percentile(flat, PERCENTILES)
    return {"p15": float(p15), "p50": float(p50), "p85": float(p85),
            "mean": float(flat.mean()), "std": float(flat.std())}


def gradient_norms(model, x: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float]]:
    """{variable path: {"norm": L2 norm of d(mean loss)/d(variable)}} on (x, y), in training mode,
    without changing any variable of the model (BN moving statistics included).

    The gradient is the probes' (bncompare.probes): `stateless_call` with each backend's own
    autodiff, compiled once per model, on TensorFlow, JAX and PyTorch.
    """
    from bncompare.probes import current_weights, keras_loss_and_gradients

    _, gradients = keras_loss_and_gradients(model, x, y)(current_weights(model))
    return {v.path: {"norm": float(np.linalg.norm(np.asarray(g, dtype=np.float64)))}
            for v, g in zip(model.trainable_variables, gradients)}


class _SummaryWriter:
    """TensorBoard event files through TensorFlow's low-level `tf.summary.write`.

    tf.summary.scalar/histogram need the separate `tensorboard` package (TensorFlow >= 2.20 no longer
    installs it); the events written here carry the same plugin metadata, so TensorBoard reads them
    as scalars and histograms, and training never needs the viewer installed. TensorFlow writes them
    whatever KERAS_BACKEND is (it is a dependency of bncompare).
    """

    def __init__(self, run_dir: Path):
        try:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2
        except ImportError:
            raise RuntimeError("record.tensorboard writes TensorBoard files with TensorFlow; "
                               "install tensorflow or turn it off") from None
        self._tf = tf

        def metadata(plugin: str):
            return summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))

        self._scalars, self._histograms = metadata("scalars"), metadata("histograms")
        # A retried run (failed, interrupted, --force) starts its curves again, as metrics.json does.
        for stale in run_dir.glob(TENSORBOARD_EVENTS):
            stale.unlink()
        self._writer = tf.summary.create_file_writer(str(run_dir))
        self.hparams_started = False

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self._writer.as_default():
            self._tf.summary.write(tag, self._tf.constant(float(value), self._tf.float32), step=step,
                                   metadata=self._scalars)

    def histogram(self, tag: str, values: np.ndarray, step: int, bins: int = 30) -> None:
        counts, edges = np.histogram(values, bins=bins)
        # TensorBoard's histogram format: one (left edge, right edge, count) row per bucket.
        buckets = np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)
        with self._writer.as_default():
            self._tf.summary.write(tag, self._tf.constant(buckets, self._tf.float64), step=step,
                                   metadata=self._histograms)

    def hparams_start(self, run) -> str | None:
        try:
            from tensorboard.plugins.hparams import summary_v2
        except ImportError:  # the protos of the HParams plugin ship with TensorBoard only
            return ("record.tensorboard: HParams (the sweep's params in TensorBoard's HParams "
                    'dashboard) need the tensorboard package: pip install "bncompare[tensorboard]"')
        self._raw(summary_v2.hparams_pb(hparams_of(run), trial_id=f"{run.experiment}/{run.run_id}"))
        self.hparams_started = True
        return None

    def hparams_end(self, status: str, final: dict[str, Any], step: int) -> None:
        for name, value in final.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.scalar(f"final/{name}", value, step)
        if self.hparams_started:
            from tensorboard.plugins.hparams import api_pb2
            from tensorboard.plugins.hparams import summary as summary_v1

            # TensorBoard's statuses: a diverged run is a finished result, as for bncompare.
            ended = {"completed": api_pb2.STATUS_SUCCESS, "diverged": api_pb2.STATUS_SUCCESS,
                     "failed": api_pb2.STATUS_FAILURE}.get(status, api_pb2.STATUS_UNKNOWN)
            self._raw(summary_v1.session_end_pb(ended))
        self.flush()

    def _raw(self, summary) -> None:
        with self._writer.as_default():
            self._tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)

    def flush(self) -> None:
        self._writer.flush()


def hparams_of(run) -> dict[str, Any]:
    """The HParams of a run: its variant and every param, as TensorBoard takes them (bool, number
    or text: lists and mappings as their JSON text; null params left out)."""
    values = {"variant": run.variant}
    for key, value in run.params.items():
        if value is not None:
            values[key] = json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
    return values
