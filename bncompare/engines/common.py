"""What every engine shares: optimizers, compile settings, the start loss and an eval point."""

from __future__ import annotations

from typing import Any

from bncompare.backend import import_keras
from bncompare.config import Run
from bncompare.data import Dataset
from bncompare.lifecycle import EVAL_BATCH_SIZE, START_PROBE
from bncompare.schedule import Schedule

# `train.steps_per_execution: auto`. One compiled call per step costs ~2 ms of Python and dispatch
# on CPU, more than a small MLP's arithmetic; 128 steps per call measured 2x faster (benchmarks/)
# while progress and NaN checks still come several times per MNIST epoch.
AUTO_STEPS_PER_EXECUTION = 128


def data_key(run: Run) -> tuple:
    """Runs with equal keys train on the same arrays."""
    return (run["data.dataset"], run["data.validation"], run["data.train_limit"])


def make_optimizer(params: dict[str, Any]):
    """The run's optimizer; wrapped for loss scaling under mixed_float16, as Keras's compile does."""
    keras = import_keras()
    name, rate = params["train.optimizer"], params["train.learning_rate"]
    # Keras 3 applies weight_decay decoupled from the gradient (as AdamW does) for every optimizer.
    decay = params["train.weight_decay"] or None
    if name in ("sgd", "momentum"):
        momentum = params["train.momentum"] if name == "momentum" else 0.0
        optimizer = keras.optimizers.SGD(rate, momentum=momentum, weight_decay=decay)
    elif name == "adam":
        optimizer = keras.optimizers.Adam(rate, weight_decay=decay)
    else:
        optimizer = keras.optimizers.RMSprop(rate, weight_decay=decay)
    if params.get("train.precision") == "mixed_float16":  # float16 gradients underflow unscaled
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def steps_per_execution(params: dict[str, Any], backend: str) -> int:
    """Optimizer steps per compiled call (`train.steps_per_execution`); Keras's PyTorch trainer
    supports one step per call only."""
    if backend == "torch":
        return 1
    value = params.get("train.steps_per_execution", "auto")
    return AUTO_STEPS_PER_EXECUTION if value == "auto" else value


def jit_compile(params: dict[str, Any], backend: str) -> bool | str:
    """XLA for training (`train.jit_compile`).

    auto is off on TensorFlow: XLA reorders float sums (inside BN's moments, among others), and BN
    training amplifies such rounding differences about 2,000x, so an XLA run would not learn what the
    plain run learns (README, "Reproducibility"). Graph mode without XLA gives the plain path's
    numbers bit for bit, and measured as fast on CPU. Other backends: Keras's own choice (JAX always
    compiles with XLA; it is its only path).
    """
    value = params.get("train.jit_compile", "auto")
    if value == "auto":
        return False if backend == "tensorflow" else "auto"
    return value


def start_loss(model, data: Dataset) -> float:
    """The untrained model's mean loss on the first START_PROBE training examples."""
    return float(model.evaluate(data.x_train[:START_PROBE], data.y_train[:START_PROBE],
                                batch_size=EVAL_BATCH_SIZE, verbose=0, return_dict=True)["loss"])


def evaluate_point(model, data: Dataset, schedule: Schedule, step: int, loss: float | None,
                   accuracy: float | None, seconds: float) -> dict[str, Any]:
    """An eval point: the training means since the last one and the validation scores now."""
    scores = model.evaluate(data.x_val, data.y_val, batch_size=EVAL_BATCH_SIZE, verbose=0,
                            return_dict=True)
    return {"epoch": schedule.epoch_of(step), "step": step, "loss": loss, "accuracy": accuracy,
            "val_loss": float(scores["loss"]), "val_accuracy": float(scores["accuracy"]),
            "seconds": round(seconds, 3)}
