"""What every engine shares: optimizers, compile settings, the start loss, an eval point, and a
member's training state for its checkpoint (bncompare/checkpoint.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bncompare.backend import import_keras
from bncompare.config import Run
from bncompare.data import Dataset
from bncompare.engines.contract import EVAL_BATCH_SIZE, START_PROBE
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
    plain run learns (docs/guide.md, "Engines and reproducibility"). Graph mode without XLA gives the plain path's
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


def training_variables(model, optimizer) -> list:
    """Every variable training reads or writes, in the checkpoint's order (checkpoint.py)."""
    return [*model.trainable_variables, *model.non_trainable_variables, *optimizer.variables]


def training_state(model, optimizer) -> tuple[list[np.ndarray], np.ndarray | None]:
    """A member's state for its checkpoint: its variables' values and torch's global generator."""
    keras = import_keras()
    values = [keras.ops.convert_to_numpy(v.value) for v in training_variables(model, optimizer)]
    return values, _torch_rng()


def _torch_rng() -> np.ndarray | None:
    """PyTorch's global generator state: unseeded Dropout and Keras's torch data loaders draw from it."""
    if import_keras().backend.backend() != "torch":
        return None
    import torch

    return torch.get_rng_state().numpy()


def restore(member, model, optimizer) -> int:
    """Load the member's checkpoint (if any) into its model and optimizer; the step it resumes at.

    Called after the start loss is measured: that is the untrained model's, in either case."""
    saved = member.resume
    if saved is None:
        return 0
    if not optimizer.built:  # fit builds it in its first call; the slots must exist to be loaded
        optimizer.build(model.trainable_variables)
    variables = training_variables(model, optimizer)
    check_shapes([tuple(v.shape) for v in variables], saved.variables, member.run.run_id)
    for variable, value in zip(variables, saved.variables):
        variable.assign(value)
    restore_torch_rng(saved)
    return saved.step


def check_shapes(expected: list[tuple], saved: list[np.ndarray], run_id: str) -> None:
    """A checkpoint that passed its identity checks yet does not fit the model is a bug, not bad
    input: fail the run loudly rather than train something else."""
    if [tuple(s) for s in expected] != [tuple(a.shape) for a in saved]:
        raise ValueError(f"{run_id}: its checkpoint does not match the model it builds "
                         f"(rerun with --restart to train it from step 0)")


def restore_torch_rng(saved) -> None:
    if saved.torch_rng is not None and import_keras().backend.backend() == "torch":
        import torch

        torch.set_rng_state(torch.from_numpy(saved.torch_rng.copy()))
