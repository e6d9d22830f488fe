"""Checkpoints: a killed or interrupted run continues where it stopped and ends exactly as if it had
never stopped (every history series bit for bit, wall-clock seconds aside).

Design
------
- One file per run directory, `checkpoint.npz` beside metrics.json, rewritten at every eval point
  but the last (the last too with `record.keep_checkpoint: true`): a run loses at most one eval
  interval of training. Written like every other file (results.write_bytes_atomic: a temporary file
  in the same directory, fsync, rename), so a kill mid-write leaves the previous checkpoint whole;
  the temporary file is created exclusively and the rename replaces a symlink instead of writing
  through it. It is removed when the run ends completed, diverged or failed (kept with
  `record.keep_checkpoint`), and kept when it ends interrupted.
- Content: a NumPy .npz archive (no pickles; zip checksums catch a corrupted array) with
    header    UTF-8 JSON: format, the bncompare release, backend, engine, run id, a hash of the
              resolved params, the step, whether the lag warning was given, and metrics.json as it
              stood at that step (history, instrument series, warnings, resumes);
    v0..vN    every variable training reads or writes, in the order Keras's stateless calls use:
              model.trainable_variables + model.non_trainable_variables (BN moving statistics,
              the SeedGenerator states dropout and BN noise draw from) + optimizer.variables
              (iteration count, learning rate, slots, the loss scale under mixed_float16);
    torch_rng PyTorch only: torch's global generator, which unseeded Dropout layers and the data
              loaders of Keras's PyTorch trainer draw from.
  The batch order needs nothing: it is a function of (seed, epoch) (schedule.py), and every engine
  resumes at an eval point, which is a chunk boundary, so steps_per_execution blocks line up.
- Trust: the history is taken from the checkpoint, not from metrics.json. metrics.json is written
  before each checkpoint (lifecycle.Recorder._checkpoint flushes the points its pacer held back),
  so after a kill it is never behind the checkpoint but can be ahead of the weights, by the points
  recorded since; the checkpoint's copy is the one that matches them. Resuming needs nothing else
  of metrics.json than a status saying the run did not end (`running` or `interrupted`).
- A checkpoint is used only by a rerun of the run that wrote it: same release, backend, engine, run
  id and params, and only when metrics.json says the run was interrupted (or its process died).
  Anything else (unreadable, truncated, not a regular file, foreign) is never used: the run
  restarts from step 0 and says why in metrics.json (`warnings`) and on the terminal.
- A group (tf_pack, vmap) keeps one checkpoint per member; members that resume at different steps
  (a kill between two members' writes) train in separate groups (lifecycle.train_group).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bncompare import __version__
from bncompare.config import Run
from bncompare.results import write_bytes_atomic

CHECKPOINT_FILE = "checkpoint.npz"
FORMAT = 1
# Keys that cannot change what a run learns, so changing them between the kill and the rerun keeps
# the checkpoint usable.
NOT_TRAINING = ("record.keep_checkpoint",)


@dataclass
class Checkpoint:
    """One run's training state at an eval point."""

    step: int
    variables: list[np.ndarray]  # see the module docstring for the order
    metrics: dict[str, Any]  # metrics.json as it stood at `step`
    lag_warned: bool = False
    torch_rng: np.ndarray | None = None


def identity(run: Run, backend: str, engine: str) -> dict[str, Any]:
    """What a checkpoint must match to be used: the run, and what trains it."""
    params = {k: v for k, v in run.params.items() if k not in NOT_TRAINING}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    return {"format": FORMAT, "bncompare": __version__, "backend": backend, "engine": engine,
            "run_id": run.run_id, "params": digest}


def save(run_dir: Path, ident: dict[str, Any], checkpoint: Checkpoint) -> int:
    """Write the run's checkpoint atomically; return its size in bytes."""
    header = {**ident, "step": checkpoint.step, "lag_warned": checkpoint.lag_warned,
              "variables": len(checkpoint.variables), "metrics": checkpoint.metrics}
    arrays = {f"v{i}": np.asarray(value) for i, value in enumerate(checkpoint.variables)}
    if checkpoint.torch_rng is not None:
        arrays["torch_rng"] = np.asarray(checkpoint.torch_rng)
    text = json.dumps(header, allow_nan=False)  # metrics hold no NaN: results.strict ran on them
    buffer = io.BytesIO()
    np.savez(buffer, header=np.frombuffer(text.encode("utf-8"), np.uint8), **arrays)
    content = buffer.getvalue()
    write_bytes_atomic(Path(run_dir) / CHECKPOINT_FILE, content)
    return len(content)


def load(run_dir: Path, ident: dict[str, Any]) -> tuple[Checkpoint | None, str | None]:
    """The run's checkpoint, or (None, why it cannot be used); (None, None) when there is none."""
    path = Path(run_dir) / CHECKPOINT_FILE
    try:
        # O_NOFOLLOW: a symlink planted in a results directory is refused, not followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None, None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, f"{CHECKPOINT_FILE} is a symbolic link, which is never followed"
        return None, f"{CHECKPOINT_FILE} cannot be read ({e.strerror or e})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, f"{CHECKPOINT_FILE} is not a regular file"
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return _parse(f, ident)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        return None, f"{CHECKPOINT_FILE} is unreadable ({type(e).__name__}: {e})"
    finally:
        if fd >= 0:
            os.close(fd)


def _parse(f, ident: dict[str, Any]) -> tuple[Checkpoint | None, str | None]:
    with np.load(f, allow_pickle=False) as archive:
        header = json.loads(archive["header"].tobytes().decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("no header")
        why = _foreign(header, ident)
        if why:
            return None, f"{CHECKPOINT_FILE} {why}"
        count, step = header["variables"], header["step"]
        if type(count) is not int or type(step) is not int or step < 0:
            raise ValueError("bad header")
        variables = [archive[f"v{i}"] for i in range(count)]  # reading checks each zip CRC
        torch_rng = archive["torch_rng"] if "torch_rng" in archive.files else None
        metrics = header["metrics"]
        if not isinstance(metrics, dict) or not isinstance(metrics.get("history"), dict):
            raise ValueError("no metrics")
        return Checkpoint(step, variables, metrics, bool(header.get("lag_warned")), torch_rng), None


def _foreign(header: dict[str, Any], ident: dict[str, Any]) -> str | None:
    """Why a well-formed checkpoint belongs to something else, or None."""
    if header.get("format") != ident["format"]:
        return f"has format {header.get('format')!r}, not {ident['format']}"
    if header.get("bncompare") != ident["bncompare"]:
        return f"was written by bncompare {header.get('bncompare')}, this is {ident['bncompare']}"
    if header.get("backend") != ident["backend"]:
        return f"is from the {header.get('backend')} backend, this run uses {ident['backend']}"
    if header.get("engine") != ident["engine"]:
        return f"is from the {header.get('engine')} engine, this run trains with {ident['engine']}"
    if header.get("run_id") != ident["run_id"] or header.get("params") != ident["params"]:
        return "belongs to another run or config"
    return None


def remove(run_dir: Path) -> None:
    """Delete the run's checkpoint, if any."""
    try:
        os.unlink(Path(run_dir) / CHECKPOINT_FILE)
    except FileNotFoundError:
        pass
