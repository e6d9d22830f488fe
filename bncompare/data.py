"""Datasets by name: local copies in $BNCOMPARE_DATA_DIR first, then Keras's downloaders.

Every dataset comes back as float32 images in [0, 1] with a channel axis (N, H, W, C) and integer
labels, so an MLP and a CNN read the same arrays.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bncompare.callables import is_reference

DATA_DIR_VARIABLE = "BNCOMPARE_DATA_DIR"
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 2_000, 500

# What to put where, per dataset, for the error shown when neither a local copy nor a download works.
LOCAL_LAYOUT = {
    "mnist": "mnist.npz (a NumPy archive with arrays x_train, y_train, x_test, y_test)",
    "fashion_mnist": "fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "
                     "(the four original IDX files)",
    "cifar10": "cifar-10-batches-py/ (the extracted CIFAR-10 python version: data_batch_1..5, "
               "test_batch)",
}


class DataError(RuntimeError):
    """A dataset cannot be found or read; the message says what to put where."""


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_dataset(name: str, validation: str | float = "test", train_limit: int | None = None,
                 params: dict[str, Any] | None = None) -> Dataset:
    """The named dataset split into training and validation data as the config asks.

    A researcher's own dataset (`data.dataset: "module:function"`) is called with `params`, the
    resolved config of the first run that asks for it in this process; runs with the same data.*
    keys share its arrays, as they share a built-in dataset's.
    """
    if is_reference(name) and name not in _OWN:
        _OWN[name] = _own_dataset(name, params or {})
    return _split(name, validation, train_limit)


@functools.lru_cache(maxsize=8)
def _split(name: str, validation: str | float, train_limit: int | None) -> Dataset:
    """Cached: every run of a process that asks for the same split gets the same object (the splits
    are views of one copy), so per-dataset work keyed on it, such as the tensors train.py keeps,
    is done once per process, not once per run.
    """
    x_train, y_train, x_test, y_test = _OWN[name] if name in _OWN else _raw(name)
    if validation == "test":
        x_val, y_val = x_test, y_test
    else:
        # The last fraction of the training split, as Keras's validation_split does.
        cut = len(x_train) - int(round(len(x_train) * float(validation)))
        x_train, y_train, x_val, y_val = x_train[:cut], y_train[:cut], x_train[cut:], y_train[cut:]
    if is_reference(name) and (len(x_train) == 0 or len(x_val) == 0):
        raise DataError(f"data.dataset: {name}: data.validation {validation:g} of its "
                        f"{len(_OWN[name][0])} training examples leaves "
                        f"{'no validation' if len(x_val) == 0 else 'no training'} examples")
    if train_limit is not None:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    classes = int(max(y_train.max(), y_val.max())) + 1
    return Dataset(name, x_train, y_train, x_val, y_val, classes)


def test_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The named dataset's test split (x, y), for `record.test` when validation is held out."""
    return _raw(name)[2:]


@functools.lru_cache(maxsize=4)
def _raw(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) as float32 NHWC in [0, 1] and int32 labels."""
    if name == "synthetic":
        return synthetic()
    arrays = _local(name)
    source = f"the local copy {local_path(name)}" if arrays is not None else "Keras's download"
    if arrays is None:
        arrays = _download(name)
    x_train, y_train, x_test, y_test = arrays
    _check_splits(name, source, x_train, y_train, x_test, y_test)
    return _images(x_train), _labels(y_train), _images(x_test), _labels(y_test)


_OWN: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def clear_caches() -> None:
    """Drop this process's datasets (the parent of --jobs workers needs none)."""
    _split.cache_clear()
    _raw.cache_clear()
    _OWN.clear()


def _own_dataset(name: str, params: dict[str, Any]):
    """A researcher's dataset function's arrays, checked and converted as a built-in dataset's are
    (float32 images, int32 labels); a DataError naming the key and the function's file if not."""
    from bncompare.callables import CallableError, load, one_line

    try:
        function = load("data.dataset", name)
    except CallableError as e:
        raise DataError(str(e)) from None
    try:
        made = function(params)
    except Exception as e:  # noqa: BLE001 - the user's function raised: say where, in one line
        raise DataError(f"data.dataset: {name}: raised {one_line(e)}") from None
    where = f"data.dataset: {name}"
    expected = "(x_train, y_train, x_val, y_val) NumPy arrays with integer labels"
    if not isinstance(made, (tuple, list)) or len(made) != 4:
        raise DataError(f"{where}: returned {type(made).__name__}"
                        f"{f' of {len(made)}' if isinstance(made, (tuple, list)) else ''}; "
                        f"expected {expected}")
    arrays = []
    for label, value in zip(("x_train", "y_train", "x_val", "y_val"), made):
        if not isinstance(value, np.ndarray):
            raise DataError(f"{where}: {label} is {type(value).__name__}; expected {expected}")
        arrays.append(value)
    x_train, y_train, x_val, y_val = arrays
    for label, y in (("y_train", y_train), ("y_val", y_val)):
        if not np.issubdtype(y.dtype, np.integer) or y.size and y.min() < 0:
            raise DataError(f"{where}: {label} holds {y.dtype} values"
                            f"{' below 0' if np.issubdtype(y.dtype, np.integer) else ''}; "
                            f"expected integer class labels 0, 1, ...")
    for split, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
        if x.ndim < 2 or len(x) == 0 or y.size != len(x):
            raise DataError(f"{where}: x_{split} {x.shape} and y_{split} {y.shape}: expected N "
                            f"examples and N labels, N > 0")
    if x_train.shape[1:] != x_val.shape[1:]:
        raise DataError(f"{where}: x_train {x_train.shape} and x_val {x_val.shape} differ in shape")
    return (x_train.astype(np.float32, copy=False), _labels(y_train),
            x_val.astype(np.float32, copy=False), _labels(y_val))


def _check_splits(name: str, source: str, x_train, y_train, x_test, y_test) -> None:
    """A DataError for a copy that reads but cannot be trained on (an empty split, lengths apart)."""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        problem = None
        if len(x) == 0 or len(y) == 0:
            problem = f"its {split} split is empty"
        elif len(x) != len(y):
            problem = f"its {split} split has {len(x)} images but {len(y)} labels"
        elif np.ndim(x) not in (3, 4):
            problem = f"its {split} images have shape {np.shape(x)}, not (N, H, W[, C])"
        if problem:
            raise DataError(f"{name}: {source} is unusable: {problem}; expected "
                            f"{LOCAL_LAYOUT.get(name, 'the dataset')}")


def _images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8:
        return x.astype(np.float32)
    # In place: `x.astype(np.float32) / 255.0` gives the same bits but allocates a second copy
    # (188 MB for MNIST), whose page faults cost most of a process's data loading
    # (docs/guide.md, "Speed").
    images = x.astype(np.float32)
    images /= np.float32(255.0)
    return images


def _labels(y: np.ndarray) -> np.ndarray:
    return np.asarray(y).reshape(-1).astype(np.int32)


def data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_VARIABLE)
    return Path(value).expanduser() if value else None


LOCAL_NAMES = {"mnist": "mnist.npz", "fashion_mnist": "fashion-mnist", "cifar10": "cifar-10-batches-py"}


def local_path(name: str) -> Path | None:
    """Where the local copy of `name` is looked for."""
    root = data_dir()
    return root / LOCAL_NAMES[name] if root is not None and name in LOCAL_NAMES else None


def _local(name: str):
    """Arrays from $BNCOMPARE_DATA_DIR in Keras's file layout, or None when no copy is there."""
    root = data_dir()
    if root is None:
        return None
    try:
        if name == "mnist" and (root / "mnist.npz").is_file():
            # Read with NumPy, not Keras: Keras's loader checks the download's hash, which a
            # re-packed copy of the same data does not match.
            with np.load(root / "mnist.npz", allow_pickle=False) as f:
                return f["x_train"], f["y_train"], f["x_test"], f["y_test"]
        if name == "fashion_mnist" and (root / "fashion-mnist").is_dir():
            folder = root / "fashion-mnist"
            return (_idx(folder / "train-images-idx3-ubyte.gz"), _idx(folder / "train-labels-idx1-ubyte.gz"),
                    _idx(folder / "t10k-images-idx3-ubyte.gz"), _idx(folder / "t10k-labels-idx1-ubyte.gz"))
        if name == "cifar10" and (root / "cifar-10-batches-py").is_dir():
            return _cifar10(root / "cifar-10-batches-py")
    except (OSError, KeyError, ValueError, EOFError, IndexError, pickle.UnpicklingError,
            zipfile.BadZipFile, zlib.error) as e:  # a truncated mnist.npz is a BadZipFile
        raise DataError(f"{name}: the local copy {local_path(name)} is unreadable "
                        f"({type(e).__name__}: {e}); expected {LOCAL_LAYOUT[name]}") from None
    return None


def _idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the format MNIST and Fashion-MNIST are published in)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _cifar10(folder: Path):
    def batch(file: str):
        with open(folder / file, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        return d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.array(d[b"labels"])

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = batch("test_batch")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_test, y_test)


def _download(name: str):
    """Keras's own loader (downloads to ~/.keras/datasets); a DataError saying what to do if it fails."""
    from bncompare.backend import import_keras

    keras = import_keras()
    loader = getattr(keras.datasets, name)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as e:  # noqa: BLE001 - any failure here means "no data"; say what to do
        root = data_dir()
        where = (f"${DATA_DIR_VARIABLE} ({root}) has no copy" if root
                 else f"${DATA_DIR_VARIABLE} is not set")
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{name} is not available: {where} and the download failed ({reason}). "
                        f"Put {LOCAL_LAYOUT[name]} in a folder and set {DATA_DIR_VARIABLE} to "
                        f"that folder.") from None
    return x_train, y_train, x_test, y_test


def synthetic(seed: int = 0):
    """A small, learnable, MNIST-shaped dataset: 10 blurry class prototypes plus noise.

    Generated from a fixed seed, so every run of an experiment sees the same data, as with a real
    dataset; the run's own seed then varies only initialisation and batch order.
    """
    rng = np.random.default_rng(seed)
    classes = 10
    coarse = rng.random((classes, 7, 7))
    prototypes = np.kron(coarse, np.ones((4, 4)))  # 7x7 -> 28x28 blocks: structure a CNN can use

    def sample(n: int):
        labels = rng.integers(0, classes, n)
        contrast = rng.uniform(0.2, 0.6, (n, 1, 1))
        noise = rng.normal(0.0, 0.6, (n, 28, 28))
        x = np.clip(prototypes[labels] * contrast + noise, 0.0, 1.0)
        return x[..., None].astype(np.float32), labels.astype(np.int32)

    x_train, y_train = sample(SYNTHETIC_TRAIN)
    x_test, y_test = sample(SYNTHETIC_TEST)
    return x_train, y_train, x_test, y_test
