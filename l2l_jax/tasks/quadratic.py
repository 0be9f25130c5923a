"""The quadratic task of Wang et al. (2021), Section 3: ``f(w) = 1/2 w^T H w``."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import input_checks
from l2l_jax.tasks import log_space
from l2l_jax.tasks.linear import LinearDynamics

Array = jnp.ndarray


@jax.tree_util.register_pytree_node_class
class Quadratic:
    """``f(w) = 1/2 w^T H w`` started from ``w0``, with its eigendecomposition cached.

    Construction validates ``H`` (square, symmetric, positive definite, finite) and ``w0``
    (matching shape, finite, non-zero), then computes the eigendecomposition once, in
    float64 on the host when the inputs are concrete, so that the spectrum is accurate to
    the working precision even for condition numbers of 1e4 and more. The task is a
    pytree: it can be passed through ``jit``/``vmap`` like any array container.

    Optional ``factor`` ``X`` with ``H = X X^T`` turns ``f`` into a finite sum over the
    columns of ``X``, ``f(w) = (1/m) sum_j m/2 (x_j^T w)^2``, so SGD can sample columns.
    """

    def __init__(self, hessian: Array, w0: Array, factor: Array | None = None):
        hessian = input_checks.float_array("hessian", hessian)
        w0 = input_checks.float_array("w0", w0)
        if hessian.ndim != 2 or hessian.shape[0] != hessian.shape[1]:
            raise ValueError(f"hessian must be a square (d, d) matrix, got shape {hessian.shape}.")
        if w0.shape != (hessian.shape[0],):
            raise ValueError(
                f"w0 must have shape ({hessian.shape[0]},) to match hessian {hessian.shape}, "
                f"got {w0.shape}."
            )
        dtype = jnp.result_type(hessian, w0)
        hessian, w0 = hessian.astype(dtype), w0.astype(dtype)
        if factor is not None:
            factor = input_checks.float_array("factor", factor).astype(dtype)
            if factor.ndim != 2 or factor.shape[0] != hessian.shape[0]:
                raise ValueError(
                    f"factor must be a (d, m) matrix with H = X X^T and d = {hessian.shape[0]}, "
                    f"got shape {factor.shape}."
                )
        self.hessian, self.w0, self.factor = hessian, w0, factor
        # before the eigendecomposition, which would fail on NaN/inf without naming them
        input_checks.finite("hessian", hessian)
        if factor is not None:
            input_checks.finite("factor", factor)
        self.eigenvalues, self.eigenvectors = _eigh(hessian)
        if input_checks.is_concrete(hessian):
            _check_spd(np.asarray(hessian, np.float64), np.asarray(self.eigenvalues))
            input_checks.finite("w0", w0)
            if not np.any(np.asarray(w0)):
                raise ValueError("w0 must be non-zero: f(w0) = 0 leaves nothing to optimize.")

    # -- pytree ---------------------------------------------------------------------
    def tree_flatten(self):
        return (self.hessian, self.w0, self.factor, self.eigenvalues, self.eigenvectors), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        (obj.hessian, obj.w0, obj.factor, obj.eigenvalues, obj.eigenvectors) = children
        return obj

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading task axes: ``()`` for one task (a batch comes from ``jax.vmap`` or
        stacking, e.g. ``jax.tree.map(lambda *a: jnp.stack(a), *tasks)``)."""
        return tuple(jnp.shape(self.w0)[:-1])

    # -- constructors -----------------------------------------------------------------
    @classmethod
    def random(
        cls,
        key: chex.PRNGKey,
        dim: int,
        scale: float = 1.0,
        dtype=jnp.float32,
        *,
        width: int | None = None,
        w0: str = "sphere",
    ):
        """The paper's random instance (Sec. 3, footnote 2).

        ``H = scale * X X^T`` with ``X`` a ``dim x width`` standard Gaussian matrix
        (``width = 2 * dim`` by default, as in footnote 2, which keeps ``alpha`` and
        ``L - alpha`` of order ``dim``) and ``w0`` uniform on the unit sphere
        (``w0="sphere"``) or standard Gaussian (``w0="gaussian"``, as in the paper's
        code, where ``width = dim``). ``X`` is kept as the task's ``factor``.
        """
        input_checks.prng_key("key", key)
        input_checks.positive_int("dim", dim)
        input_checks.positive("scale", scale)
        width = 2 * dim if width is None else input_checks.positive_int("width", width)
        if w0 not in ("sphere", "gaussian"):
            raise ValueError(f"w0 must be 'sphere' or 'gaussian', got {w0!r}.")
        k_x, k_w = jax.random.split(key)
        x = jax.random.normal(k_x, (dim, width), jnp.float64 if _x64() else jnp.float32)
        w = jax.random.normal(k_w, (dim,), x.dtype)
        x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
        if w0 == "sphere":
            w64 = w64 / np.linalg.norm(w64)
        factor = np.sqrt(scale) * x64
        return cls(
            hessian=jnp.asarray(factor @ factor.T, dtype),
            w0=jnp.asarray(w64, dtype),
            factor=jnp.asarray(factor, dtype),
        )

    @classmethod
    def from_spectrum(cls, eigenvalues: Array, coefficients: Array, dtype=None):
        """The diagonal task ``H = diag(eigenvalues)``, ``w0 = coefficients``."""
        lam = input_checks.float_array("eigenvalues", eigenvalues)
        c = input_checks.float_array("coefficients", coefficients)
        dtype = dtype or jnp.result_type(lam, c)
        return cls(hessian=jnp.diag(lam).astype(dtype), w0=c.astype(dtype))

    def astype(self, dtype) -> Quadratic:
        """The same task in another float dtype (spectrum recomputed in float64)."""
        factor = None if self.factor is None else self.factor.astype(dtype)
        return Quadratic(self.hessian.astype(dtype), self.w0.astype(dtype), factor)

    # -- the task protocol ------------------------------------------------------------
    @property
    def dtype(self):
        return self.w0.dtype

    @property
    def dim(self) -> int:
        return self.w0.shape[0]

    @property
    def num_examples(self) -> int | None:
        """Number of summands SGD can sample from (the columns of ``factor``)."""
        return None if self.factor is None else self.factor.shape[1]

    def init_params(self, key: jax.Array | None = None) -> Array:
        """``w0`` (every run starts there; ``key`` is ignored)."""
        del key
        return self.w0

    def loss(self, params: Array) -> Array:
        """``f(w) = 1/2 w^T H w``."""
        return 0.5 * params @ (self.hessian @ params)

    def log_loss(self, params: Array) -> Array:
        """``log f(w)`` in log space (:func:`~l2l_jax.tasks.log_space.log_homogeneous`,
        degree 2): finite for every finite ``w`` with a normal largest entry, where ``f(w)``
        over- or underflows."""
        return log_space.log_homogeneous(self.loss, params, degree=2)

    def batch_loss(self, params: Array, indices: Array) -> Array:
        """Unbiased estimate of ``f`` from the columns ``indices`` of ``factor``."""
        if self.factor is None:
            raise ValueError(
                "this Quadratic has no factor to sample from: build it with "
                "Quadratic(hessian, w0, factor=X) where H = X X^T, or use inner.gd()."
            )
        proj = params @ self.factor[:, indices]
        return 0.5 * self.factor.shape[1] * jnp.mean(proj**2)

    # -- spectrum ---------------------------------------------------------------------
    @property
    def coefficients(self) -> Array:
        """``c_i = <w0, u_i>``: ``w0`` in the eigenbasis of ``H``."""
        return self.eigenvectors.T @ self.w0

    @property
    def smoothness(self) -> Array:
        """``L``, the largest eigenvalue of ``H``."""
        return self.eigenvalues[-1]

    @property
    def strong_convexity(self) -> Array:
        """``alpha``, the smallest eigenvalue of ``H``."""
        return self.eigenvalues[0]

    # -- linear dynamics (grad="stable") -----------------------------------------------
    def linear_dynamics(self, preconditioner: Array | None = None) -> LinearDynamics:
        """``H``'s spectrum and ``w0`` in its eigenbasis (the minimizer is 0): GD, heavy ball
        and Nesterov act per eigen-direction (Wang et al. 2021, Sec. 3.1).

        With a diagonal ``preconditioner`` ``P``: the spectrum of ``P^(1/2) H P^(1/2)`` and
        ``P^(-1/2) w0`` in its eigenbasis, decomposed in float64 on the host when concrete
        (a float32 task loses only the final rounding, as the cached decomposition does).
        """
        if preconditioner is None:
            return LinearDynamics(self.eigenvalues, self.coefficients)
        sqrt_p = jnp.sqrt(jnp.asarray(preconditioner).astype(self.dtype))
        if input_checks.is_concrete(self.hessian) and input_checks.is_concrete(sqrt_p):
            s = np.asarray(sqrt_p, np.float64)
            h = s[:, None] * np.asarray(self.hessian, np.float64) * s[None, :]
            lam, vec = np.linalg.eigh(0.5 * (h + h.T))
            coef = vec.T @ (np.asarray(self.w0, np.float64) / s)
            return LinearDynamics(jnp.asarray(lam, self.dtype), jnp.asarray(coef, self.dtype))
        lam, vec = _eigh(sqrt_p[:, None] * self.hessian * sqrt_p[None, :])
        return LinearDynamics(lam, vec.T @ (self.w0 / sqrt_p))

    def __repr__(self) -> str:
        return f"Quadratic(dim={self.dim}, dtype={self.dtype})"


def _x64() -> bool:
    return bool(jax.config.jax_enable_x64)


def _eigh(hessian: Array) -> tuple[Array, Array]:
    """Ascending eigendecomposition, in float64 on the host when ``hessian`` is concrete."""
    if input_checks.is_concrete(hessian):
        h = np.asarray(hessian, np.float64)
        lam, vec = np.linalg.eigh(0.5 * (h + h.T))
        return jnp.asarray(lam, hessian.dtype), jnp.asarray(vec, hessian.dtype)
    sym = 0.5 * (hessian + hessian.T)
    return jnp.linalg.eigh(sym)


def _check_spd(h: np.ndarray, eigenvalues: np.ndarray) -> None:
    input_checks.finite("hessian", h)
    scale = np.max(np.abs(h))
    if not np.allclose(h, h.T, rtol=0.0, atol=1e-6 * scale):
        err = np.max(np.abs(h - h.T))
        raise ValueError(
            f"hessian must be symmetric: max |H - H^T| = {err:.3g}. Pass (H + H.T) / 2."
        )
    if eigenvalues[0] <= 0:
        raise ValueError(
            f"hessian must be positive definite: smallest eigenvalue is {eigenvalues[0]:.3g}. "
            "Add a multiple of the identity or use Quadratic.random."
        )
