"""Importing Keras quietly and choosing the device, before the first (slow) import of the backend.

Keras's backend is chosen by KERAS_BACKEND (tensorflow by default); everything else in bncompare
uses Keras 3 APIs only, so the same code trains on JAX or PyTorch too.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager

# absl's log format ("I0000 00:00:1795483760.901 2710 port.cc:153] ...") and its preamble.
NATIVE_LOG_LINE = re.compile(r"^([IWE]\d{4} [\d:.]+\s+\d+ \S+:\d+\]|WARNING: All log messages before absl)")

class DeviceError(RuntimeError):
    """The requested device is not available."""


BACKENDS = ("tensorflow", "jax", "torch")


def select_backend(name: str | None) -> None:
    """Choose Keras's backend; must run before Keras is imported (default: $KERAS_BACKEND, else
    tensorflow)."""
    if name is None:
        return
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != name:
        raise DeviceError(f"--backend {name}: Keras is already running on "
                          f"{sys.modules['keras'].backend.backend()} in this process")
    os.environ["KERAS_BACKEND"] = name


def select_device(device: str) -> None:
    """Hide GPUs for `cpu`; must run before Keras is imported to take effect."""
    # TensorFlow prints pages of C++ log lines (oneDNN, CUDA probing) at import; users need none.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if device == "cpu":
        # Hide any GPUs from every backend; otherwise TF/JAX reserve GPU memory they won't use.
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        os.environ["JAX_PLATFORMS"] = "cpu"


def import_keras():
    """Import Keras (and so its backend) with the quiet settings above."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" not in sys.modules:
        try:
            with _without_native_logs():
                import keras  # noqa: F401
        except ImportError as e:  # e.g. KERAS_BACKEND=jax without jax installed
            backend = os.environ.get("KERAS_BACKEND", "tensorflow")
            raise DeviceError(f"the Keras backend {backend!r} cannot be imported ({e}); "
                              f"install it (pip install {backend}) or choose another "
                              f"with --backend") from None
    import keras

    return keras


@contextmanager
def _without_native_logs():
    """Drop TensorFlow's C++ start-up log lines, which ignore TF_CPP_MIN_LOG_LEVEL in recent
    releases; anything else written to stderr meanwhile (a real error) is passed through."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if not NATIVE_LOG_LINE.match(line):
                    sys.stderr.write(line + "\n")


def gpu_names() -> list[str]:
    """Names of the GPUs the active Keras backend can see."""
    keras = import_keras()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_logical_devices("GPU")]
    if backend == "jax":
        import jax

        return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def check_device(device: str) -> str:
    """Confirm the device choice after import; return a description for the environment block."""
    gpus = gpu_names() if device != "cpu" else []
    if device == "gpu" and not gpus:
        backend = import_keras().backend.backend()
        raise DeviceError(f"--device gpu: no GPU is visible to the {backend} backend "
                          "(check the CUDA driver and CUDA_VISIBLE_DEVICES, or use --device cpu)")
    return f"GPU ({gpus[0]})" if gpus else "CPU"
