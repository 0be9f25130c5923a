"""The least-squares task family of Wang et al. (2021), Section 4.

Each task draws ``w*`` uniformly from the unit sphere, inputs ``x ~ N(0, I_d)`` and
labels ``y = <w*, x> + xi`` with ``xi ~ N(0, sigma^2)``; ``n1`` training samples define
the inner loss ``(1/(2 n1)) sum_i (y_i - <w, x_i>)^2`` (the train-by-train meta-loss of
Eq. 3) and ``n2`` validation samples the train-by-validation meta-loss of Eq. 4.
A batch of ``m`` tasks is the same pytree with a leading axis, built by ``jax.vmap``.
"""

from __future__ import annotations

import functools
import numbers

import chex
import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import input_checks
from l2l_jax.closed_forms import spectral_ls
from l2l_jax.tasks import log_space
from l2l_jax.tasks.linear import LinearDynamics

Array = jnp.ndarray

_FIELDS = ("x_train", "y_train", "x_valid", "y_valid", "w_star", "sigma")


@jax.tree_util.register_pytree_node_class
class LeastSquares:
    """One least-squares task, or a batch of them (leading axes ``batch_shape``).

    Fields: ``x_train (n1, d)``, ``y_train (n1,)``, ``x_valid (n2, d)``, ``y_valid (n2,)``,
    ``w_star (d,)`` and the noise level ``sigma ()``, each with the same leading batch axes
    for a batch. Inner optimizers start from ``w0 = 0``. The task methods (``loss``,
    ``valid_loss``, ...) are for a single task; map over a batch with ``jax.vmap`` (or
    ``metagrad.meta_objective(..., batched=True)``, which does that).
    """

    def __init__(
        self,
        x_train: Array,
        y_train: Array,
        x_valid: Array,
        y_valid: Array,
        w_star: Array,
        sigma: Array | float,
    ):
        arrays = {
            name: input_checks.float_array(name, value)
            for name, value in zip(
                _FIELDS, (x_train, y_train, x_valid, y_valid, w_star, sigma), strict=True
            )
        }
        dtype = jnp.result_type(*arrays.values())
        arrays = {name: a.astype(dtype) for name, a in arrays.items()}
        _check_shapes(arrays)
        for name, a in arrays.items():
            input_checks.finite(name, a)
        if input_checks.known_true(jnp.any(arrays["sigma"] < 0)):
            raise ValueError(f"sigma must be >= 0 (the noise standard deviation), got {sigma}.")
        for name in _FIELDS:
            setattr(self, name, arrays[name])

    # -- pytree ---------------------------------------------------------------------
    def tree_flatten(self):
        return tuple(getattr(self, name) for name in _FIELDS), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        for name, child in zip(_FIELDS, children, strict=True):
            setattr(obj, name, child)
        return obj

    # -- constructors -----------------------------------------------------------------
    @classmethod
    def sample(
        cls,
        key: chex.PRNGKey,
        d: int,
        n_train: int,
        n_valid: int,
        sigma: float | Array,
        dtype=jnp.float32,
    ) -> LeastSquares:
        """One random task (Sec. 4): ``w*`` on the unit sphere, ``x ~ N(0, I_d)``,
        ``y = <w*, x> + xi``, ``xi ~ N(0, sigma^2)``.

        ``d``, ``n_train`` and ``n_valid`` are static Python ints; ``sigma`` may be traced.
        Works under ``jit``/``vmap`` (see :meth:`sample_batch`).
        """
        d = input_checks.positive_int("d", d)
        n_train = input_checks.positive_int("n_train", n_train)
        n_valid = _non_negative_int("n_valid", n_valid)
        _check_sigma(sigma)
        input_checks.prng_key("key", key)
        arrays = _sample_arrays(key, jnp.asarray(sigma, dtype), d, n_train, n_valid, dtype)
        return cls(*arrays)

    @classmethod
    def sample_batch(
        cls,
        key: chex.PRNGKey,
        m: int,
        d: int,
        n_train: int,
        n_valid: int,
        sigma: float | Array,
        dtype=jnp.float32,
    ) -> LeastSquares:
        """``m`` independent tasks as one pytree with a leading axis of size ``m``.

        Task ``i`` is ``LeastSquares.sample(jax.random.split(key, m)[i], ...)``: a
        ``jax.vmap`` over the keys, not a loop.
        """
        m = input_checks.positive_int("m", m)
        d = input_checks.positive_int("d", d)
        n_train = input_checks.positive_int("n_train", n_train)
        n_valid = _non_negative_int("n_valid", n_valid)
        _check_sigma(sigma)
        input_checks.prng_key("key", key)
        sigma = jnp.asarray(sigma, dtype)
        arrays = _sample_batch_arrays(key, sigma, m, d, n_train, n_valid, dtype)
        return cls(*arrays)

    def astype(self, dtype) -> LeastSquares:
        """The same task(s) in another float dtype."""
        return jax.tree_util.tree_map(lambda a: a.astype(dtype), self)

    def __getitem__(self, index) -> LeastSquares:
        """Task(s) ``index`` of a batch, e.g. ``batch[0]``."""
        if not self.batch_shape:
            raise IndexError("this LeastSquares is a single task (batch_shape == ()).")
        return jax.tree_util.tree_map(lambda a: a[index], self)

    # -- shapes -----------------------------------------------------------------------
    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch axes: ``()`` for one task, ``(m,)`` for ``sample_batch``."""
        return tuple(self.w_star.shape[:-1])

    @property
    def dtype(self):
        return self.x_train.dtype

    @property
    def dim(self) -> int:
        """``d``."""
        return self.w_star.shape[-1]

    @property
    def num_examples(self) -> int:
        """``n1``, the training rows SGD samples from."""
        return self.x_train.shape[-2]

    @property
    def num_valid(self) -> int:
        """``n2``, the validation rows."""
        return self.x_valid.shape[-2]

    # -- the task protocol (one task) ---------------------------------------------------
    def init_params(self, key: jax.Array | None = None) -> Array:
        """``w0 = 0`` (Sec. 4; every run starts there, ``key`` is ignored)."""
        del key
        return jnp.zeros(self.w_star.shape, self.dtype)

    def loss(self, params: Array) -> Array:
        """Training loss ``(1/(2 n1)) sum_i (y_i - <w, x_i>)^2``: Eq. 3's ``Delta_TbT``."""
        return _half_mse(self.x_train, self.y_train, params)

    def valid_loss(self, params: Array) -> Array:
        """Validation loss ``(1/(2 n2)) sum_i (y'_i - <w, x'_i>)^2``: Eq. 4's ``Delta_TbV``."""
        self._require_valid("valid_loss")
        return _half_mse(self.x_valid, self.y_valid, params)

    def log_loss(self, params: Array) -> Array:
        """``log`` of :meth:`loss` in log space (:func:`~l2l_jax.tasks.log_space.log_half_mse`):
        finite for every finite ``w`` down to residuals with a normal largest entry."""
        return log_space.log_half_mse(self.x_train, self.y_train, params)

    def log_valid_loss(self, params: Array) -> Array:
        """``log`` of :meth:`valid_loss` in log space, as :meth:`log_loss`."""
        self._require_valid("log_valid_loss")
        return log_space.log_half_mse(self.x_valid, self.y_valid, params)

    def batch_loss(self, params: Array, indices: Array) -> Array:
        """Unbiased estimate of :meth:`loss` from the training rows ``indices`` (SGD)."""
        return _half_mse(self.x_train[indices], self.y_train[indices], params)

    def valid_batch_loss(self, params: Array, indices: Array) -> Array:
        """Unbiased estimate of :meth:`valid_loss` from the validation rows ``indices``."""
        return _half_mse(self.x_valid[indices], self.y_valid[indices], params)

    def _require_valid(self, name: str) -> None:
        if self.num_valid == 0:
            raise ValueError(
                f"{name} needs validation data, but n_valid = 0: sample the task with "
                "n_valid >= 1 (train-by-validation, Eq. 4)."
            )

    def test_error(self, params: Array) -> Array:
        """``||w - w*||^2``; the population loss is ``(||w - w*||^2 + sigma^2) / 2``."""
        return jnp.sum((params - self.w_star) ** 2)

    def test_rmse(self, params: Array) -> Array:
        """``||w - w*||`` (the test RMSE of Wang et al.'s Section 4 evaluation)."""
        return jnp.sqrt(self.test_error(params))

    def train_rmse(self, params: Array) -> Array:
        """``sqrt((1/n1) sum_i (y_i - <w, x_i>)^2) = sqrt(2 loss(w))``."""
        return jnp.sqrt(2.0 * self.loss(params))

    def linear_dynamics(self, preconditioner: Array | None = None) -> LinearDynamics:
        """The run from ``w0 = 0`` as the distance to the min-norm ERM solution,
        ``e_0 = -beta`` in the eigenbasis of ``X^T X / n1`` (:func:`spectral_ls.decompose`,
        one eigendecomposition): training loss ``residual + 1/2 sum lambda e^2``, validation
        loss ``||r0 - X_valid U e||^2 / (2 n2)`` with ``r0`` the ERM solution's validation
        residual (none when ``n2 = 0``). With a diagonal ``P``: the features ``X P^(1/2)``
        (the task in ``u = P^(-1/2) w``, whose own ERM solution ``u`` starts from 0 too)."""
        x, xv = self.x_train, self.x_valid
        if preconditioner is not None:
            sqrt_p = jnp.sqrt(jnp.asarray(preconditioner).astype(self.dtype))
            x, xv = x * sqrt_p, xv * sqrt_p
        spec = spectral_ls.decompose(x, self.y_train, xv, self.y_valid)
        start = -spec.coords
        if self.num_valid == 0:
            return LinearDynamics(spec.eigenvalues, start, spec.residual)
        residual0 = spec.y_valid - spec.valid_features @ spec.coords
        return LinearDynamics(
            spec.eigenvalues, start, spec.residual, spec.valid_features, residual0
        )

    def __repr__(self) -> str:
        batch = f"batch_shape={self.batch_shape}, " if self.batch_shape else ""
        return (
            f"LeastSquares({batch}d={self.dim}, n_train={self.num_examples}, "
            f"n_valid={self.num_valid}, dtype={self.dtype})"
        )


@functools.partial(jax.jit, static_argnames=("d", "n_train", "n_valid", "dtype"))
def _sample_arrays(key, sigma, d: int, n_train: int, n_valid: int, dtype) -> tuple[Array, ...]:
    """``(x_train, y_train, x_valid, y_valid, w_star, sigma)`` of one task (jitted).

    One standard normal draw, split into ``w`` (normalized to ``w*``), the ``n1 + n2``
    input rows and their ``n1 + n2`` noise terms (one draw compiles much faster than five).
    """
    n = n_train + n_valid
    z = jax.random.normal(key, (d + n * d + n,), dtype)
    w_star = z[:d] / jnp.linalg.norm(z[:d])
    x = z[d : d + n * d].reshape(n, d)
    y = x @ w_star + sigma * z[d + n * d :]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], w_star, sigma


@functools.partial(jax.jit, static_argnames=("m", "d", "n_train", "n_valid", "dtype"))
def _sample_batch_arrays(key, sigma, m: int, d: int, n_train: int, n_valid: int, dtype):
    """``m`` tasks: :func:`_sample_arrays` vmapped over ``jax.random.split(key, m)``."""
    sample = lambda k: _sample_arrays(k, sigma, d, n_train, n_valid, dtype)
    return jax.vmap(sample)(jax.random.split(key, m))


def _half_mse(x: Array, y: Array, w: Array) -> Array:
    """``(1/(2n)) sum_i (y_i - <w, x_i>)^2``."""
    return 0.5 * jnp.mean((y - x @ w) ** 2)


def _non_negative_int(name: str, x) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be a non-negative integer, got {x!r}.")
    if x < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {x}.")
    return int(x)


def _check_sigma(sigma) -> None:
    if isinstance(sigma, (str, bytes, bool)) or sigma is None:
        raise TypeError(f"sigma must be a number >= 0, got {sigma!r}.")
    if input_checks.is_concrete(sigma):
        s = np.asarray(sigma, np.float64)
        if s.shape != () or not np.isfinite(s) or s < 0:
            raise ValueError(
                f"sigma must be a finite scalar >= 0 (the noise standard deviation), got {sigma!r}."
            )


def _check_shapes(a: dict[str, Array]) -> None:
    """Shapes ``(..., n1, d), (..., n1), (..., n2, d), (..., n2), (..., d), (...)``."""
    w = a["w_star"]
    if w.ndim < 1 or w.shape[-1] < 1:
        raise ValueError(f"w_star must have shape (d,) with d >= 1, got {w.shape}.")
    batch, d = w.shape[:-1], w.shape[-1]
    if a["sigma"].shape != batch:
        raise ValueError(
            f"sigma must be a scalar per task, shape {batch} to match w_star {w.shape}, "
            f"got {a['sigma'].shape}."
        )
    for x_name, y_name, least in (("x_train", "y_train", 1), ("x_valid", "y_valid", 0)):
        x, y = a[x_name], a[y_name]
        if x.ndim != len(batch) + 2 or x.shape[:-2] != batch or x.shape[-1] != d:
            raise ValueError(
                f"{x_name} must have shape {(*batch, 'n', d)} (rows of d = {d} features, "
                f"matching w_star {w.shape}), got {x.shape}."
            )
        n = x.shape[-2]
        if n < least:
            raise ValueError(f"{x_name} must have at least {least} row(s), got {x.shape}.")
        if y.shape != (*batch, n):
            raise ValueError(
                f"{y_name} must have shape {(*batch, n)} (one label per row of {x_name}), "
                f"got {y.shape}."
            )
