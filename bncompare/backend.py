"""Importing Keras quietly and choosing the device, before the first (slow) import of the backend.

Keras's backend is chosen by KERAS_BACKEND (tensorflow by default); everything else in bncompare
uses Keras 3 APIs only, so the same code trains on JAX or PyTorch too.
"""

from __future__ import annotations

import importlib
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


def backend_name() -> str:
    """The Keras backend this process trains on, or will once it imports Keras, without importing
    it: planning a sweep needs only the name, and the parent of --jobs workers must not start a
    backend (it would hold GPU memory that the workers need)."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    return os.environ.get("KERAS_BACKEND") or "tensorflow"


def select_device(device: str) -> None:
    """Hide GPUs for `cpu`; must run before Keras is imported to take effect."""
    # TensorFlow prints pages of C++ log lines (oneDNN, CUDA probing) at import; users need none.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if device == "cpu":
        # Hide any GPUs from every backend; otherwise TF/JAX reserve GPU memory they won't use.
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        os.environ["JAX_PLATFORMS"] = "cpu"


# Threads per process for the operations inside a layer (matmul, reductions). One, always: how a
# framework splits a sum across threads changes its rounding, and BN training amplifies rounding
# differences about 2,000x (docs/guide.md, "Engines and reproducibility"), so a run must not learn something else
# because it ran beside others (--jobs, Ray) or on a machine with more cores. Independent
# operations still run in parallel (TensorFlow's inter-op pool: the members of a pack).
# BNCOMPARE_THREADS overrides it, e.g. for one big CNN alone on a many-core machine.
THREADS_VARIABLE = "BNCOMPARE_THREADS"


def threads() -> int:
    """Intra-op threads each training process uses."""
    try:
        return max(1, int(os.environ.get(THREADS_VARIABLE, "1")))
    except ValueError:
        return 1


# oneDNN's x86 CPU ISA levels, narrowest first, and the /proc/cpuinfo flags each needs (on top of the
# level before it). TensorFlow's oneDNN kernels and XLA (JAX) pick their code paths from these at run
# time, so two CPUs of different levels run a BN network's sums in different orders: its numbers
# agree bit for bit only on CPUs of one kind.
ISA_LEVELS = (("sse41", {"sse4_1"}), ("avx", {"avx"}), ("avx2", {"avx2", "fma"}),
              ("avx512_core", {"avx512f", "avx512bw", "avx512vl", "avx512dq"}),
              ("avx512_core_vnni", {"avx512_vnni"}), ("avx512_core_bf16", {"avx512_bf16"}),
              ("avx512_core_amx", {"amx_tile", "amx_bf16", "amx_int8"}))
# Caps a user may set on oneDNN's dispatch (ONEDNN_MAX_CPU_ISA=AVX2): the kernels then stop there.
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cpu(cpuinfo: str | None = None) -> dict[str, str | None]:
    """{"cpu": model name and id, "cpu_isa": the widest instruction set the math libraries may use}
    for metrics.json's environment, from /proc/cpuinfo (no framework import); None where unknown."""
    import platform

    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
                cpuinfo = file.read(1 << 20)
        except OSError:
            cpuinfo = ""
    first = cpuinfo.split("\n\n", 1)[0]  # one logical CPU is enough: they are alike
    fields = {key.strip(): value.strip() for key, _, value in
              (line.partition(":") for line in first.splitlines()) if key.strip()}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    name = fields.get("model name") or fields.get("Model name") or platform.processor() or None
    if "vendor_id" in fields:  # x86: the name alone is often generic under virtualisation
        name = (f"{name} ({fields['vendor_id']} family {fields.get('cpu family')} model "
                f"{fields.get('model')} stepping {fields.get('stepping')})")
    elif "CPU part" in fields:  # Arm: no model name; the implementer and part identify the core
        name = f"{name or 'Arm'} (implementer {fields.get('CPU implementer')} part {fields['CPU part']})"
    isa = None
    for level, needs in ISA_LEVELS:
        if not needs <= flags:
            break
        isa = level
    if isa is None and flags & {"asimd", "sve"}:
        isa = "sve" if "sve" in flags else "asimd"
    levels = [level for level, _ in ISA_LEVELS]
    cap = next((os.environ[v].lower() for v in ISA_CAPS if os.environ.get(v)), None)
    if isa in levels and cap in levels and levels.index(cap) < levels.index(isa):
        isa = f"{cap} ({isa} capped by {next(v for v in ISA_CAPS if os.environ.get(v))})"
    return {"cpu": name, "cpu_isa": isa}


def import_keras():
    """Import Keras (and so its backend) with the quiet, reproducible settings above."""
    global _configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" not in sys.modules:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        n = str(threads())
        # Set before the framework starts its thread pools (TensorFlow reads TF_NUM_INTRAOP_THREADS
        # when it creates its context); _configure below sets them again through the APIs.
        os.environ.setdefault("OMP_NUM_THREADS", n)
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", n)
        if backend == "jax":  # XLA's CPU client only; a GPU's kernels are not affected
            flags = os.environ.get("XLA_FLAGS", "")
            if "intra_op_parallelism_threads" not in flags:
                os.environ["XLA_FLAGS"] = (f"{flags} --xla_cpu_multi_thread_eigen=false "
                                           f"intra_op_parallelism_threads={n}").strip()
        try:
            with _without_native_logs():
                importlib.import_module("keras")
        except ImportError as e:  # e.g. KERAS_BACKEND=jax without jax installed
            raise DeviceError(f"the Keras backend {backend!r} cannot be imported ({e}); "
                              f"install it (pip install {backend}) or choose another "
                              f"with --backend") from None
    import keras

    if not _configured:  # once per process, also when something imported Keras before us
        _configure(keras.backend.backend(), threads())
        _configured = True
    return keras


_configured = False


def _configure(backend: str, n: int) -> None:
    """Pin intra-op threads and silence the framework's Python-side warnings (retracing notes)."""
    if backend == "tensorflow":
        import logging

        import tensorflow as tf

        tf.get_logger().setLevel(logging.ERROR)  # "N out of the last N calls ... retracing"
        # Grappler rewrites each graph as a whole (fusions, folding), so the same layer computes
        # differently inside a packed loop and inside fit's step: measured on a BN CNN, 1e-7 after
        # 3 steps, then amplified by BN's chaos. Without it, every path runs the same kernels.
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
        except RuntimeError:  # TensorFlow already ran an op in this process: too late to change
            pass
    elif backend == "torch":
        import torch

        torch.set_num_threads(n)


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
