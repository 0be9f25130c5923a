"""The MNIST task family of Wang et al. (2021), Sec. 5: a fresh problem per draw.

Each meta-training problem of the paper's code is ``n`` digits drawn from the training
split, with a fraction ``p`` of their labels replaced by uniform random digits; for
train-by-validation the ``n`` digits are split into training and validation rows. A draw
(:class:`MnistDraw`) holds only the indices of the ``n`` digits in the pool and their
(noisy) labels, so a meta-batch of ``B`` problems costs ``B * n`` integers, not ``B``
copies of the images; :class:`MnistView` gathers the rows a minibatch needs from the
shared pool.

``split_pool`` divides a source's training digits into a meta-training pool and a
disjoint evaluation pool (Fig. 4a/4b), so no evaluation task holds a digit that
meta-training saw.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax.data import mnist as mnist_data
from l2l_jax.tasks.mnist import PAPER_SIZES, MnistMLP, cross_entropy, init_mlp

Array = jax.Array
NUM_CLASSES = 10


@chex.dataclass(frozen=True)
class MnistDraw:
    """One problem of the family: ``rows[i]`` is the pool index of digit ``i`` and
    ``labels[i]`` its label after the noise. The first ``n - n_valid`` are the training
    rows, the last ``n_valid`` the validation rows (the draw is in random order)."""

    rows: Array
    labels: Array


def noisy_labels(labels: Array, fraction: float, key: chex.PRNGKey) -> Array:
    """``labels`` with exactly ``round(fraction * n)`` positions (chosen without
    replacement) redrawn uniformly from the 10 digits, traceable (the distribution of
    :func:`l2l_jax.data.mnist.noisy_labels`; the new digit may equal the old one)."""
    n = labels.shape[0]
    m = round(fraction * n)
    if m == 0:
        return labels
    k_pos, k_digit = jax.random.split(key)
    positions = jax.random.permutation(k_pos, n)[:m]
    digits = jax.random.randint(k_digit, (m,), 0, NUM_CLASSES, labels.dtype)
    return labels.at[positions].set(digits)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MnistFamily:
    """``n`` digits from a pool, labels noised at rate ``label_noise``, ``n_valid`` of them
    held out for validation (train-by-validation; 0 for train-by-train and evaluation).

    Leaves: ``images (N, 784)`` and ``labels (N,)`` of the pool (clean labels), and
    ``pool_index (N,)``: each pool digit's row in the source's training split (so the
    digits of a draw are ``pool_index[draw.rows]``, comparable across pools). Static:
    ``n``, ``n_valid``, ``label_noise``, ``sizes`` (the MLP) and ``name`` (recorded in
    results). ``n == N`` draws every digit of the pool (in a random order).
    """

    images: Array
    labels: Array
    pool_index: Array
    n: int = dataclasses.field(metadata={"static": True})
    n_valid: int = dataclasses.field(default=0, metadata={"static": True})
    label_noise: float = dataclasses.field(default=0.0, metadata={"static": True})
    sizes: tuple[int, ...] = dataclasses.field(default=PAPER_SIZES, metadata={"static": True})
    name: str = dataclasses.field(default="mnist", metadata={"static": True})

    def __post_init__(self) -> None:
        if isinstance(self.images, jax.core.Tracer | jax.ShapeDtypeStruct) or not hasattr(
            self.images, "shape"
        ):
            return  # unflattened inside a transformation: checked when built
        pool = int(self.images.shape[0])
        for field, value, low in (("n", self.n, 1), ("n_valid", self.n_valid, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"MnistFamily.{field} must be an integer >= {low}, got {value!r}.")
        if self.n > pool:
            raise ValueError(
                f"MnistFamily.n = {self.n} digits per task, but the pool has {pool}: use at "
                f"most {pool}, or a bigger source (source='tfds' or 'idx': 60,000)."
            )
        if self.n_valid >= self.n:
            raise ValueError(
                f"MnistFamily.n_valid = {self.n_valid} leaves no training rows out of "
                f"n = {self.n}: use at most {self.n - 1}."
            )
        if not isinstance(self.label_noise, numbers.Real) or not 0 <= self.label_noise <= 1:
            raise ValueError(
                f"MnistFamily.label_noise must be in [0, 1] (e.g. 0.2 for 20%), got "
                f"{self.label_noise!r}."
            )
        for field in ("labels", "pool_index"):
            shape = tuple(getattr(self, field).shape)
            if shape != (pool,):
                raise ValueError(f"MnistFamily.{field} must have shape ({pool},), got {shape}.")

    @classmethod
    def from_data(
        cls,
        data: mnist_data.MnistData,
        n: int | None = None,
        *,
        n_valid: int = 0,
        label_noise: float = 0.0,
        sizes: Sequence[int] = PAPER_SIZES,
        rows: np.ndarray | None = None,
        name: str = "mnist",
    ) -> MnistFamily:
        """The family over ``data``'s training digits (or the subset ``rows`` of them);
        ``n=None``: every digit of the pool."""
        x, y = np.asarray(data.train_images), np.asarray(data.train_labels, np.int32)
        index = np.arange(x.shape[0], dtype=np.int32)
        if rows is not None:
            index = np.asarray(rows, np.int32)
            x, y = x[index], y[index]
        return cls(
            images=jnp.asarray(x),
            labels=jnp.asarray(y),
            pool_index=jnp.asarray(index),
            n=int(x.shape[0] if n is None else n),
            n_valid=n_valid,
            label_noise=float(label_noise),
            sizes=tuple(int(s) for s in sizes),
            name=name,
        )

    def replace(self, **changes) -> MnistFamily:
        """The same pool with other static settings (e.g. ``n_valid=0`` for evaluation)."""
        return dataclasses.replace(self, **changes)

    @property
    def pool_size(self) -> int:
        return int(self.images.shape[0])

    def sample(self, key: chex.PRNGKey) -> MnistDraw:
        """``n`` distinct pool rows in random order and their noisy labels."""
        k_rows, k_noise = jax.random.split(key)
        rows = jax.random.permutation(k_rows, self.pool_size)[: self.n].astype(jnp.int32)
        labels = noisy_labels(self.labels[rows], self.label_noise, k_noise)
        return MnistDraw(rows=rows, labels=labels)

    def task(self, draw: MnistDraw) -> MnistView:
        return MnistView(family=self, draw=draw)

    def materialize(self, draw: MnistDraw, init_key: chex.PRNGKey) -> MnistMLP:
        """The draw as a standalone :class:`~l2l_jax.tasks.MnistMLP` (copies its rows;
        traceable, for evaluation runs that report accuracies on all training rows)."""
        t = self.n - self.n_valid
        images = self.images[draw.rows]
        info = {
            "family": self.name,
            "n_train": t,
            "n_valid": self.n_valid,
            "label_noise": self.label_noise,
            "sizes": list(self.sizes),
        }
        return MnistMLP.tree_unflatten(
            (tuple(self.sizes), json.dumps(info, sort_keys=True)),
            (images[:t], draw.labels[:t], images[t:], draw.labels[t:], init_key),
        )

    def digits(self, draw: MnistDraw) -> Array:
        """The source rows (training split) of the draw's digits."""
        return self.pool_index[draw.rows]

    def info(self) -> dict:
        """JSON-friendly description for results files."""
        return {
            "family": self.name,
            "pool": self.pool_size,
            "n": self.n,
            "n_valid": self.n_valid,
            "label_noise": self.label_noise,
            "sizes": list(self.sizes),
        }


@dataclasses.dataclass(frozen=True)
class MnistView:
    """The task of one draw: the task protocol over the pool rows of the draw, gathering
    only the rows each loss needs (``pool[rows[indices]]``)."""

    family: MnistFamily
    draw: MnistDraw

    @property
    def num_examples(self) -> int:
        return self.family.n - self.family.n_valid

    @property
    def num_valid(self) -> int:
        return self.family.n_valid

    @property
    def dtype(self):
        return self.family.images.dtype

    def init_params(self, key: chex.PRNGKey):
        return init_mlp(key, self.family.sizes, self.dtype)

    def _rows(self, positions: Array) -> tuple[Array, Array]:
        rows = self.draw.rows[positions]
        return self.family.images[rows], self.draw.labels[positions]

    def batch_loss(self, params, indices: Array) -> Array:
        """Cross-entropy on training rows ``indices`` (in ``[0, num_examples)``)."""
        return cross_entropy(params, *self._rows(indices))

    def loss(self, params) -> Array:
        """Cross-entropy on all training rows."""
        return cross_entropy(params, *self._rows(jnp.arange(self.num_examples)))

    def valid_batch_loss(self, params, indices: Array) -> Array:
        """Cross-entropy on validation rows ``indices`` (in ``[0, num_valid)``)."""
        return cross_entropy(params, *self._rows(self.num_examples + indices))

    def valid_loss(self, params) -> Array:
        """Cross-entropy on all validation rows (train-by-validation, Eq. 4)."""
        if self.num_valid == 0:
            raise ValueError("valid_loss needs n_valid > 0: build the family with n_valid=N.")
        return cross_entropy(params, *self._rows(self.num_examples + jnp.arange(self.num_valid)))


def split_pool(
    data: mnist_data.MnistData,
    eval_fraction: float,
    key: chex.PRNGKey,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint ``(meta_train_rows, eval_rows)`` of ``data``'s training digits (or of the
    training ``rows`` given): a random ``eval_fraction`` of them (rounded up) for
    evaluation, the rest for meta-training."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}.")
    rows = np.arange(data.num_train) if rows is None else np.asarray(rows)
    if rows.ndim != 1 or rows.size < 2 or rows.min() < 0 or rows.max() >= data.num_train:
        raise ValueError(
            f"rows must be >= 2 indices of training digits in [0, {data.num_train}), "
            f"got shape {rows.shape}."
        )
    k = math.ceil(eval_fraction * rows.size)
    perm = rows[np.asarray(jax.random.permutation(key, rows.size))]
    return np.sort(perm[k:]), np.sort(perm[:k])
