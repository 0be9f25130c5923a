"""The MNIST inner task of Wang et al. (2021), Section 5.

An MLP 784-100-20-10 with ReLU activations and softmax cross-entropy, trained with
minibatches of 32 (``inner.sgd(batch_size=32)``). The task holds the training data and
an optional validation set (train-by-validation, Eq. 4) as pytree leaves, plus the key of
its parameter initialization, so that ``inner.unroll(task, ...)`` (which calls
``task.init_params()`` without arguments) starts every run from the task's own ``w_0``
and a meta-batch of tasks that differ in initialization is a ``vmap`` over that key.
"""

from __future__ import annotations

import functools
import json
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax.data import mnist as mnist_data
from l2l_jax.tasks import log_space

Array = jnp.ndarray
Params = dict[str, dict[str, Array]]

PAPER_SIZES = (784, 100, 20, 10)
_LEAVES = ("train_images", "train_labels", "valid_images", "valid_labels", "init_key")


@jax.tree_util.register_pytree_node_class
class MnistMLP:
    """MLP classification task on MNIST-like data (Sec. 5).

    Leaves: ``train_images (n, 784)`` float, ``train_labels (n,)`` int32, ``valid_images
    (m, 784)``, ``valid_labels (m,)`` (``m = 0`` without validation) and ``init_key``, the
    PRNG key of :meth:`init_params`. Static (not leaves): the layer ``sizes`` and ``info``
    (source, sizes, label noise; a JSON-friendly dict recorded in results).

    Parameters are a plain dict ``{"dense_0": {"w": (784, 100), "b": (100,)}, "dense_1":
    ..., "dense_2": ...}``; ``w`` is He-normal (variance ``2 / fan_in``, for the ReLU
    layers) or LeCun-normal (variance ``1 / fan_in``, for the softmax layer), ``b = 0``.
    """

    def __init__(
        self,
        train_images,
        train_labels,
        valid_images=None,
        valid_labels=None,
        *,
        init_key: jax.Array,
        sizes: Sequence[int] = PAPER_SIZES,
        info: dict[str, Any] | None = None,
    ):
        sizes = _check_sizes(sizes)
        x, y = _check_split("train", train_images, train_labels, sizes, least=1)
        if (valid_images is None) != (valid_labels is None):
            raise ValueError("pass both valid_images and valid_labels, or neither.")
        if valid_images is None:
            valid_images = np.zeros((0, sizes[0]), np.asarray(x).dtype)
            valid_labels = np.zeros((0,), np.int32)
        xv, yv = _check_split("valid", valid_images, valid_labels, sizes, least=0)
        if not _is_key(init_key):
            raise TypeError(
                f"init_key must be a JAX PRNG key, e.g. jax.random.key(0), got {init_key!r}."
            )
        if not jnp.issubdtype(init_key.dtype, jax.dtypes.prng_key):
            init_key = jax.random.wrap_key_data(init_key)  # raw uint32[2] -> typed key
        dtype = jax.dtypes.canonicalize_dtype(np.result_type(x.dtype, xv.dtype))
        self.train_images, self.train_labels = jnp.asarray(x, dtype), jnp.asarray(y)
        self.valid_images, self.valid_labels = jnp.asarray(xv, dtype), jnp.asarray(yv)
        self.init_key = init_key
        self.sizes = sizes
        self._info = json.dumps(info or {}, sort_keys=True)

    # -- pytree -----------------------------------------------------------------------
    def tree_flatten(self):
        return tuple(getattr(self, n) for n in _LEAVES), (self.sizes, self._info)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        for name, child in zip(_LEAVES, children, strict=True):
            setattr(obj, name, child)
        obj.sizes, obj._info = aux
        return obj

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_data(
        cls,
        data: mnist_data.MnistData,
        n_train: int | None = None,
        n_valid: int = 0,
        label_noise: float = 0.0,
        key: jax.Array | None = None,
        *,
        noisy_valid: bool = True,
        sizes: Sequence[int] = PAPER_SIZES,
    ) -> MnistMLP:
        """A task from ``data``'s training split (Sec. 5 settings).

        Draws ``n_train + n_valid`` distinct training examples (``n_train=None``: all that
        remain after the validation rows), replaces a fraction ``label_noise`` of their
        labels by uniform random digits (:func:`l2l_jax.data.mnist.noisy_labels`; with
        ``noisy_valid=False`` only the training rows get noise, otherwise the validation
        set is drawn from the same noisy distribution, as in Sec. 4), and splits them into
        ``n_train`` training and ``n_valid`` validation rows. ``key`` fixes all of this
        and the initialization key; ``info`` records the source, sizes and noise.
        """
        if key is None or not _is_key(key):
            raise TypeError(
                f"key must be a JAX PRNG key, e.g. jax.random.key(0), got {key!r}: it fixes "
                "the subset, the label noise, the train/validation split and init_params."
            )
        n_valid = _non_negative_int("n_valid", n_valid)
        if n_train is None:
            n_train = data.num_train - n_valid
            if n_train < 1:
                raise ValueError(
                    f"n_valid = {n_valid} leaves no training rows out of {data.num_train}."
                )
        n_train = _positive_int("n_train", n_train)
        total = n_train + n_valid
        if total > data.num_train:
            raise ValueError(
                f"n_train + n_valid = {n_train} + {n_valid} = {total} is larger than the "
                f"{data.num_train} training examples of source {data.source!r}; reduce them, "
                "or use a bigger source (source='tfds' or 'idx' have 60,000)."
            )
        k_sub, k_noise, k_split, k_init = jax.random.split(key, 4)
        subset = mnist_data.subsample(data, total, k_sub)
        x, clean = subset.train_images, subset.train_labels
        y, replaced = mnist_data.noisy_labels(clean, label_noise, k_noise)
        if not noisy_valid:
            y = clean
        if n_valid:
            xt, yt, xv, yv = mnist_data.split(x, y, n_valid, k_split)
            _, clean_t, _, clean_v = mnist_data.split(x, clean, n_valid, k_split)
        else:
            xt, yt, clean_t = x, y, clean
            xv, yv, clean_v = x[:0], y[:0], clean[:0]
        if not noisy_valid:  # noise on the training rows only
            yt, replaced = mnist_data.noisy_labels(clean_t, label_noise, k_noise)
        changed = int(np.sum(yt != clean_t) + np.sum(yv != clean_v))
        info = {
            "source": data.source,
            "data": data.info,
            "n_train": n_train,
            "n_valid": n_valid,
            "n_test": data.num_test,
            "label_noise": float(label_noise),
            "noisy_valid": bool(noisy_valid and n_valid > 0),
            "labels_replaced": int(replaced.sum()),
            "labels_changed": changed,
            "sizes": list(_check_sizes(sizes)),
        }
        return cls(
            xt,
            yt,
            xv,
            yv,
            init_key=k_init,
            sizes=sizes,
            info=info,
        )

    def with_init_key(self, key: jax.Array) -> MnistMLP:
        """The same data with another initialization key (works under ``jit``/``vmap``)."""
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)
        children, aux = self.tree_flatten()
        return MnistMLP.tree_unflatten(aux, (*children[:-1], key))

    def astype(self, dtype) -> MnistMLP:
        """Images (and so the parameters of :meth:`init_params`) in another float dtype."""
        return MnistMLP.tree_unflatten(
            (self.sizes, self._info),
            (
                self.train_images.astype(dtype),
                self.train_labels,
                self.valid_images.astype(dtype),
                self.valid_labels,
                self.init_key,
            ),
        )

    # -- shapes and metadata ----------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        """Source, sizes and label noise (a fresh JSON-friendly dict)."""
        return json.loads(self._info)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch axes of ``init_key`` (``()`` for one task)."""
        return tuple(jnp.shape(self.init_key))

    @property
    def dtype(self):
        return self.train_images.dtype

    @property
    def num_examples(self) -> int:
        """Training rows (SGD samples minibatches from them)."""
        return self.train_images.shape[-2]

    @property
    def num_valid(self) -> int:
        return self.valid_images.shape[-2]

    # -- the task protocol (one task) ---------------------------------------------------------
    def init_params(self, key: jax.Array | None = None) -> Params:
        """Initial MLP parameters from ``key`` (default: the task's ``init_key``)."""
        return init_mlp(self.init_key if key is None else key, self.sizes, self.dtype)

    def logits(self, params: Params, images: Array) -> Array:
        """``(n, 10)`` class scores of the MLP."""
        return mlp_logits(params, images)

    def loss(self, params: Params) -> Array:
        """Mean cross-entropy on all training rows (train-by-train, Eq. 3 per task)."""
        return cross_entropy(params, self.train_images, self.train_labels)

    def batch_loss(self, params: Params, indices: Array) -> Array:
        """Mean cross-entropy on the training rows ``indices`` (an unbiased SGD estimate)."""
        return cross_entropy(params, self.train_images[indices], self.train_labels[indices])

    def valid_loss(self, params: Params) -> Array:
        """Mean cross-entropy on the validation rows (train-by-validation, Eq. 4 per task)."""
        self._require_valid("valid_loss")
        return cross_entropy(params, self.valid_images, self.valid_labels)

    def log_loss(self, params: Params) -> Array:
        """``log`` of :meth:`loss` from the logits, in log space
        (:func:`~l2l_jax.tasks.log_space.log_mean_cross_entropy`): finite wherever the
        logits' differences are, including where the mean cross-entropy underflows to 0
        (margins above about ``17 + log 9`` in float32) or overflows. Not covered: the MLP's own
        activations or logits overflowing."""
        return log_cross_entropy(params, self.train_images, self.train_labels)

    def log_valid_loss(self, params: Params) -> Array:
        """``log`` of :meth:`valid_loss` in log space, as :meth:`log_loss`."""
        self._require_valid("log_valid_loss")
        return log_cross_entropy(params, self.valid_images, self.valid_labels)

    def _require_valid(self, name: str) -> None:
        if self.num_valid == 0:
            raise ValueError(
                f"{name} needs validation data, but n_valid = 0: build the task with "
                "MnistMLP.from_data(..., n_valid=N) (train-by-validation, Eq. 4)."
            )

    def valid_batch_loss(self, params: Params, indices: Array) -> Array:
        """Mean cross-entropy on the validation rows ``indices``."""
        return cross_entropy(params, self.valid_images[indices], self.valid_labels[indices])

    def accuracy(self, params: Params, images: Array, labels: Array) -> Array:
        """Fraction of ``images`` whose arg-max class is ``labels``."""
        return accuracy(params, images, labels)

    def train_accuracy(self, params: Params) -> Array:
        return accuracy(params, self.train_images, self.train_labels)

    def valid_accuracy(self, params: Params) -> Array:
        return accuracy(params, self.valid_images, self.valid_labels)

    def __repr__(self) -> str:
        batch = f"batch_shape={self.batch_shape}, " if self.batch_shape else ""
        source = self.info.get("source")
        return (
            f"MnistMLP({batch}sizes={self.sizes}, n_train={self.num_examples}, "
            f"n_valid={self.num_valid}, source={source!r}, dtype={self.dtype})"
        )


# -- the model as pure functions ------------------------------------------------------------


def init_mlp(key: jax.Array, sizes: Sequence[int] = PAPER_SIZES, dtype=jnp.float32) -> Params:
    """Jitted :func:`_init_mlp` (eagerly the per-layer draws cost ~1 s of dispatch)."""
    return _init_mlp(key, _check_sizes(sizes), jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("sizes", "dtype"))
def _init_mlp(key: jax.Array, sizes: tuple[int, ...], dtype) -> Params:
    """``{"dense_i": {"w": (sizes[i], sizes[i+1]), "b": (sizes[i+1],)}}``.

    ``w ~ N(0, 2 / fan_in)`` (He) for layers followed by ReLU, ``N(0, 1 / fan_in)``
    (LeCun) for the output layer; ``b = 0``.
    """
    keys = jax.random.split(key, len(sizes) - 1)
    params = {}
    for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        gain = 2.0 if i < len(sizes) - 2 else 1.0
        w = jax.random.normal(k, (fan_in, fan_out), dtype) * jnp.sqrt(gain / fan_in).astype(dtype)
        params[f"dense_{i}"] = {"w": w, "b": jnp.zeros((fan_out,), dtype)}
    return params


def mlp_logits(params: Params, images: Array) -> Array:
    """ReLU MLP: ``h <- relu(h W_i + b_i)`` for the hidden layers, linear output."""
    n = len(params)
    h = images
    for i in range(n):
        layer = params[f"dense_{i}"]
        h = h @ layer["w"] + layer["b"]
        if i < n - 1:
            h = jax.nn.relu(h)
    return h


def cross_entropy(params: Params, images: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy ``-log softmax(logits)[label]``."""
    logp = jax.nn.log_softmax(mlp_logits(params, images), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))


def log_cross_entropy(params: Params, images: Array, labels: Array) -> Array:
    """``log`` of :func:`cross_entropy`, in log space from the logits
    (:func:`~l2l_jax.tasks.log_space.log_mean_cross_entropy`)."""
    return log_space.log_mean_cross_entropy(mlp_logits(params, images), labels)


def accuracy(params: Params, images: Array, labels: Array) -> Array:
    """Fraction of rows whose arg-max logit is the label (ties: the lowest class)."""
    predicted = jnp.argmax(mlp_logits(params, images), axis=-1)
    return jnp.mean((predicted == labels).astype(jnp.float32))


# -- checks ----------------------------------------------------------------------------------


def _is_key(key) -> bool:
    """A typed key (``jax.random.key``) or a raw ``uint32[2]`` key (``PRNGKey``)."""
    if isinstance(key, jax.Array) or isinstance(key, np.ndarray):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            return True
        return key.dtype == jnp.uint32 and key.shape[-1:] == (2,)
    return False


def _check_sizes(sizes) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if len(sizes) < 2 or any(
        isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes
    ):
        raise ValueError(
            f"sizes must be >= 2 positive integers (input, hidden..., classes), e.g. "
            f"{PAPER_SIZES}, got {sizes!r}."
        )
    return tuple(int(s) for s in sizes)


def _check_split(prefix: str, images, labels, sizes, *, least: int):
    x, y = np.asarray(images), np.asarray(labels)
    if x.ndim != 2 or x.shape[1] != sizes[0]:
        raise ValueError(
            f"{prefix}_images must have shape (n, {sizes[0]}) (flattened images matching "
            f"sizes[0]), got {x.shape}."
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"{prefix}_images must be floats in [0, 1] (mnist.load converts), got {x.dtype}."
        )
    if x.shape[0] < least:
        raise ValueError(f"{prefix}_images must have at least {least} row(s), got {x.shape}.")
    if y.shape != (x.shape[0],):
        raise ValueError(
            f"{prefix}_labels must have shape ({x.shape[0]},) (one per row of "
            f"{prefix}_images), got {y.shape}."
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{prefix}_labels must be integers, got {y.dtype}.")
    if y.size and (y.min() < 0 or y.max() >= sizes[-1]):
        raise ValueError(
            f"{prefix}_labels must be classes 0..{sizes[-1] - 1}, got values in "
            f"[{y.min()}, {y.max()}]."
        )
    return x, y.astype(np.int32)


def _positive_int(name: str, x) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 1:
        raise ValueError(f"{name} must be a positive integer, got {x!r}.")
    return int(x)


def _non_negative_int(name: str, x) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {x!r}.")
    return int(x)
