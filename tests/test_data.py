"""Broken local dataset copies give a DataError naming the file, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest

from bncompare import data
from bncompare.data import DataError


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BNCOMPARE_DATA_DIR", str(tmp_path))
    data.clear_caches()
    yield tmp_path
    data.clear_caches()


def save_mnist(path, train: int, test: int = 5) -> None:
    np.savez(path, x_train=np.zeros((train, 28, 28), np.uint8), y_train=np.zeros(train, np.uint8),
             x_test=np.zeros((test, 28, 28), np.uint8), y_test=np.zeros(test, np.uint8))


def test_a_truncated_npz_names_the_file(data_dir):
    save_mnist(data_dir / "whole.npz", 200)
    (data_dir / "mnist.npz").write_bytes((data_dir / "whole.npz").read_bytes()[:3000])
    with pytest.raises(DataError, match=rf"mnist: the local copy {data_dir / 'mnist.npz'} is "
                                        r"unreadable \(BadZipFile"):
        data.load_dataset("mnist")


@pytest.mark.parametrize("train, test, problem", [(0, 5, "its train split is empty"),
                                                  (5, 0, "its test split is empty")])
def test_an_empty_split_names_the_file(data_dir, train, test, problem):
    save_mnist(data_dir / "mnist.npz", train, test)
    with pytest.raises(DataError, match=rf"{data_dir / 'mnist.npz'} is unusable: {problem}"):
        data.load_dataset("mnist")


def test_a_good_copy_loads(data_dir):
    save_mnist(data_dir / "mnist.npz", 20)
    assert data.load_dataset("mnist").x_train.shape == (20, 28, 28, 1)


def test_images_are_scaled_to_the_bits_of_dividing_by_255():
    """The in-place scaling gives what `x.astype(float32) / 255.0` gives, to the last bit: every
    recorded number depends on it."""
    pixels = np.arange(256, dtype=np.uint8).repeat(7).reshape(-1, 4, 7)
    scaled = data._images(pixels)
    expected = pixels[..., None].astype(np.float32) / 255.0
    assert scaled.shape == (64, 4, 7, 1) and scaled.dtype == np.float32
    assert np.array_equal(scaled.view(np.int32), expected.view(np.int32))
