"""The vmap engine's model variants: CNN (with and without BN), every normaliser, the residual
networks, noisy BN and mixed_float16, each member against its solo run (Keras fit on JAX, the same
batches) under the issue's contract; and which shipped configs the engine admits.

Like tests/test_vmap.py, whose helpers it uses, `test_vmap_models_under_jax` runs this module again
in a JAX subprocess from the TensorFlow-backend CI run; there the other tests run and it is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from test_vmap import ON_JAX, jax_only, make_run, relative, train_alone, train_vmapped

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RELATIVE = 1e-4  # the contract's floor for final losses
ACCURACY = 0.002  # ...and for final validation accuracy
CHAOS = 3.0  # or CHAOS x the larger change a -/+1e-6 relative learning rate makes alone
PERTURBATION = 1e-6


@pytest.mark.slow
@pytest.mark.skipif(ON_JAX, reason="this process is the JAX run")
def test_vmap_models_under_jax():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" in done.stdout  # the JAX tests ran, this one not


def assert_within_contract(run, recorder) -> None:
    """Final training and validation loss within RELATIVE of the solo run, or within CHAOS x the
    larger change a +/-PERTURBATION relative learning rate makes to it (computed only if needed);
    validation accuracy likewise, floor ACCURACY."""
    alone = train_alone(run)
    assert [p["step"] for p in recorder.points] == [p["step"] for p in alone]
    mine, theirs = recorder.points[-1], alone[-1]
    floors = {"loss": RELATIVE * abs(theirs["loss"]), "val_loss": RELATIVE * abs(theirs["val_loss"]),
              "val_accuracy": ACCURACY}
    missed = [key for key, floor in floors.items() if abs(mine[key] - theirs[key]) > floor]
    if missed:
        moved = [train_alone(run, 1 + sign * PERTURBATION)[-1] for sign in (1, -1)]
        for key in missed:
            chaos = CHAOS * max(abs(other[key] - theirs[key]) for other in moved)
            assert abs(mine[key] - theirs[key]) <= max(floors[key], chaos), (
                key, mine[key], theirs[key], chaos)


# Tiny sizes (a few units or filters, 16 steps of the synthetic set). Each case compiles its own
# programs and two solo fits, so features are paired where they are independent: every kind, every
# normaliser, noisy BN and mixed_float16 appear at least once.
MLP = dict(model__hidden=[16, 8], data__train_limit=512, train__epochs=1)
CNN = dict(model__kind="cnn", model__hidden=[4, 8], data__train_limit=256, train__batch_size=16,
           train__epochs=1)
CASES: dict[str, dict[str, Any]] = {
    "cnn": dict(CNN, train__optimizer="sgd"),
    "rescnn_group": dict(CNN, model__kind="rescnn", model__hidden=[4, 4], model__norm="group",
                         model__groups=2),
    "resmlp_layer": dict(MLP, model__kind="resmlp", model__hidden=[16, 16, 8, 8],
                         model__norm="layer"),
    "resmlp_skip_init_rms": dict(MLP, model__kind="resmlp", model__hidden=[16, 16],
                                 model__skip_init=True, model__norm="rms"),
    "renorm_noise": dict(MLP, model__norm="renorm", model__bn_noise={"mean": 0.5, "std": 1.0}),
    "ghost_float16": dict(MLP, model__norm="ghost", model__ghost_batch_size=8,
                          train__precision="mixed_float16"),
}


@jax_only
@pytest.mark.parametrize("case", list(CASES))
def test_members_learn_what_they_learn_alone(case: str):
    runs = [make_run(seed, train__learning_rate=rate, **CASES[case])
            for seed, rate in [(0, 3e-3), (1, 1e-2)]]
    for run, recorder in zip(runs, train_vmapped(runs)):
        assert recorder.active and recorder.diverged_at is None
        assert_within_contract(run, recorder)


@jax_only
def test_every_shipped_model_is_admitted():
    """`--dry-run --backend jax` over configs/: no run trains alone but the CNN with BN, measured
    outside the contract (docs/vmap.md)."""
    from bncompare.config import load_runs
    from bncompare.engines.vmap import CONVOLUTION_WITH_BATCH_STATISTICS, VmapEngine

    engine, reasons = VmapEngine(), {}
    runs = load_runs(sorted(CONFIGS.glob("*.yaml")))
    assert len(runs) > 300
    for run in runs:
        reason = engine.refuses(run)
        if reason:
            reasons[(run.experiment, run.variant, run.seed)] = reason
    cnn_bn = f"model.kind=cnn with model.norm=batch: {CONVOLUTION_WITH_BATCH_STATISTICS}"
    assert set(reasons.values()) == {cnn_bn}, reasons
    assert sorted(reasons) == [("fashion_cnn", "bn", seed) for seed in range(3)]


@jax_only
def test_admission_is_an_allow_list():
    from bncompare.engines.vmap import VmapEngine

    refuses = VmapEngine().refuses
    assert refuses(make_run()) is None
    run = make_run()
    run.params["record.new_probe"] = False  # a key the engine was never told about, even off
    assert "record.new_probe: not a setting the vmap engine handles" == refuses(run)
    assert "model.kind=my.module:net" in refuses(make_run(model__kind="my.module:net"))
    for conv in ("cnn", "rescnn"):  # batch statistics in a convolutional model: measured outside
        for norm in ("batch", "renorm", "ghost"):
            assert "chaos floor" in refuses(make_run(model__kind=conv, model__norm=norm))
    assert refuses(make_run(model__kind="cnn", model__norm="group")) is None
    # Eval-time features are handled at eval points (tests/test_vmap_eval.py).
    assert refuses(make_run(record__activations=True)) is None
    assert refuses(make_run(record__bn_eval=["moving", "batch"])) is None
    assert refuses(make_run(model__bn_variance="unbiased")) is None
