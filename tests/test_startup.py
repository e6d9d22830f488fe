"""Start-up on JAX and PyTorch: no TensorFlow in the process, no TensorFlow log lines, and a --jobs
parent that plans without importing a backend; seeding draws exactly what Keras's own function draws,
and a vmap group starts each member from exactly the state its solo run starts from.

Each case runs `bncompare` in a fresh process (what a process imported is only visible from inside
it): the command is run in-process there by a small script that then reports its `sys.modules`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bncompare.backend import NATIVE_LOG_LINE

CONFIG = """\
name: startup
data: {dataset: synthetic, train_limit: 256}
model: {hidden: [16], dropout: 0.1}
train: {epochs: 1, batch_size: 64, seeds: [0]}
sweep: {train.learning_rate: [0.001, 0.01]}
"""
# A vmap group whose members differ in everything a member may: seed, learning rate, weight decay,
# initializer (BN and dropout add non-trainable state).
GROUP = """\
name: group
data: {dataset: synthetic, train_limit: 256}
model: {hidden: [16], dropout: 0.1, batch_norm: true}
train: {epochs: 1, batch_size: 64, seeds: [0, 1], weight_decay: 0.001}
sweep: {train.learning_rate: [0.001, 0.1], model.init: [glorot_uniform, he_normal]}
variants: {bn: {}, bn_decay_2: {train.weight_decay: 0.002}}
"""
# The same in mixed_float16: a LossScaleOptimizer's `build` adds its loss-scale variables between its
# own and its inner optimizer's constructor variables.
GROUP_FLOAT16 = GROUP.replace("name: group", "name: group_float16").replace(
    "train: {", "train: {precision: mixed_float16, ")
# Runs `bncompare ARGS` in this process, then prints which frameworks it imported, and what the
# checks after it find: bncompare's seeding against Keras's own; on JAX, the vmap engine's initial
# state against every member built alone.
SCRIPT = """
import json, os, random, sys


def same_initial_state(config):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from types import SimpleNamespace
    from bncompare.config import load_runs
    from bncompare.engines import vmap
    from bncompare.engines.common import make_optimizer
    from bncompare.models import build_model
    from bncompare.seeding import set_random_seed

    data = SimpleNamespace(input_shape=(8, 8, 1), classes=10)
    members = [SimpleNamespace(run=run) for run in load_runs([config])]
    assert len({vmap.VmapEngine().group_key(m.run) for m in members}) == 1
    _, _, states = vmap._Group._initial_states(members, data)
    ours = jax.device_put(jax.tree.map(lambda *values: np.stack(values), *states))
    alone = []
    for member in members:  # what each member's solo run starts from
        set_random_seed(member.run.seed)
        model = build_model(member.run.params, data.input_shape, data.classes)
        optimizer = make_optimizer(member.run.params)
        optimizer.build(model.trainable_variables)
        alone.append(([v.value for v in model.trainable_variables],
                      [v.value for v in model.non_trainable_variables],
                      [v.value for v in optimizer.variables]))
    alone = jax.tree.map(lambda *values: jnp.stack(values), *alone)
    return (jax.tree.structure(ours) == jax.tree.structure(alone) and
            all(a.aval == b.aval and np.array_equal(a, b)
                for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(alone))))


if __name__ == "__main__":  # --jobs workers re-import this script under another name
    checks = sys.argv.pop(1) == "--checks"
    sys.argv[0] = "bncompare"
    from bncompare.__main__ import main
    try:
        main()
    except SystemExit as e:
        code = e.code
    print("END OF BNCOMPARE", file=sys.stderr, flush=True)
    report = {"code": code, "imported": sorted(m for m in ("keras", "jax", "tensorflow", "torch")
                                               if m in sys.modules)}
    if checks:
        import numpy as np
        from bncompare.backend import import_keras
        from bncompare.seeding import set_random_seed

        keras = import_keras()

        def draws():
            layer = keras.layers.Dense(3)
            layer.build((None, 2))
            dropout = keras.layers.Dropout(0.5)(np.ones((1, 8), "float32"), training=True)
            values = [random.random(), np.random.rand(), keras.random.normal((2,)),
                      layer.kernel, dropout]
            if keras.backend.backend() == "torch":
                import torch

                values.append(torch.rand(2))
            return [np.asarray(keras.ops.convert_to_numpy(v)).tolist() for v in values]

        set_random_seed(7)
        ours = draws()
        # Keras's own function, with TensorFlow seen as absent (importing it costs seconds).
        from types import SimpleNamespace
        from keras.src.utils import rng_utils

        rng_utils.tf = SimpleNamespace(available=False)
        keras.utils.set_random_seed(7)
        report["same_draws_as_keras"] = ours == draws()
        if keras.backend.backend() == "jax":
            report["same_initial_state"] = all(same_initial_state(config) for config in
                                               os.environ["GROUP_CONFIG"].split(os.pathsep))
    print("REPORT " + json.dumps(report))
"""


def bncompare(tmp_path: Path, backend: str, *args: str, checks: bool = False):
    """(report, its stderr) of `bncompare run` on the tiny config in a fresh process."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[test]' installs it)")
    config = tmp_path / "startup.yaml"
    config.write_text(CONFIG)
    (tmp_path / "group.yaml").write_text(GROUP)
    (tmp_path / "group_float16.yaml").write_text(GROUP_FLOAT16)
    script = tmp_path / "bncompare_in_process.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")}
    env["GROUP_CONFIG"] = os.pathsep.join(str(tmp_path / name)
                                          for name in ("group.yaml", "group_float16.yaml"))
    done = subprocess.run([sys.executable, str(script), "--checks" if checks else "--", "run",
                           str(config), "--out", str(tmp_path / "results"), "--backend", backend,
                           "--quiet", *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.split("REPORT ", 1)[1])
    assert report["code"] == 0, done.stdout + done.stderr
    return report, done.stderr.split("END OF BNCOMPARE", 1)[0]


@pytest.fixture(scope="module", params=["jax", "torch"])
def checked(request, tmp_path_factory):
    """A tiny run on JAX or PyTorch in one process, and the checks after it."""
    return request.param, *bncompare(tmp_path_factory.mktemp(request.param), request.param,
                                     "--jobs", "1", checks=True)


@pytest.mark.slow
def test_a_run_on_jax_or_torch_imports_no_tensorflow(checked):
    backend, report, stderr = checked
    assert "tensorflow" not in report["imported"], report
    # TensorFlow's C++ start-up lines (oneDNN, cudart_stub) used to appear even with --quiet.
    assert not [line for line in stderr.splitlines() if NATIVE_LOG_LINE.match(line)], stderr
    assert "oneDNN" not in stderr and "tensorflow" not in stderr.lower(), stderr


@pytest.mark.slow
def test_seeding_draws_what_keras_draws(checked):
    """Keras's set_random_seed differs only by seeding TensorFlow, which nothing here reads: the
    same Python, NumPy, SeedGenerator (Dropout, keras.random) and torch draws, and weights."""
    backend, report, _ = checked
    assert report["same_draws_as_keras"], backend


@pytest.mark.slow
def test_vmap_members_start_from_what_they_start_from_alone(checked):
    """The group shares weight draws between members and copies optimizer slots: its stacked
    initial state equals, bit for bit and type for type, every member built alone."""
    backend, report, _ = checked
    if backend != "jax":
        pytest.skip("the vmap engine is JAX's")
    assert report["same_initial_state"]


@pytest.mark.slow
def test_the_jobs_parent_plans_a_jax_sweep_without_importing_a_backend(tmp_path):
    """The parent of --jobs workers reads device memory nowhere and may share a GPU with them: it
    plans from the params and the backend's name alone (the workers split a group by memory)."""
    # One vmap group: the second worker finds no work and exits before importing anything.
    report, stderr = bncompare(tmp_path, "jax", "--jobs", "2", "--variants", "bn")
    assert report["imported"] == [], report
    assert not [line for line in stderr.splitlines() if NATIVE_LOG_LINE.match(line)], stderr
    finished = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("startup/*/metrics.json")]
    assert [(m["status"], m["engine"]) for m in finished] == [("completed", {"name": "vmap", "members": 2})] * 2
