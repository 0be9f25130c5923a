"""Stability of optimizers as dynamical systems (Harrison, Metz, Sohl-Dickstein 2022, Sec. 3).

An inner optimizer on a task is a map ``z_{k+1} = T(z_k)`` of the joint state
``z = (w, s)``: the parameters and the optimizer state (momenta, accumulators). Near a
point ``z``, ``T(z + d) ~ T(z) + J d`` with ``J = dT/dz``; the training dynamics are
locally stable when the *spectral radius* ``rho(J) = max |eig(J)|`` is at most 1, and
perturbations grow like ``rho(J)^k`` when it is larger. On a quadratic with a linear
optimizer (GD, heavy ball) ``T`` is affine, ``J`` is the same everywhere and
``rho(J) < 1`` is exactly convergence; on the noisy quadratic model the noise enters
additively (``z_{k+1} = J z_k + noise``), so the iterates' covariance stays bounded
exactly when ``rho(J) < 1`` (Sec. 3 of the paper, following Zhang et al. 2019).

Closed forms (per eigenvalue ``lambda`` of ``H``, step size ``eta``, momentum ``beta``):

* GD, ``w <- w - eta g``: ``J = 1 - eta lambda``; stable iff ``0 <= eta lambda <= 2``.
* Heavy ball, ``v <- g + beta v``, ``w <- w - eta v``: on ``(w, v)``,
  ``J = [[1 - eta lambda, -eta beta], [lambda, beta]]`` with characteristic polynomial
  ``z^2 - (1 + beta - eta lambda) z + beta``; for ``0 <= beta < 1`` stable iff
  ``0 <= eta lambda <= 2 (1 + beta)``.

What is here: :func:`linearize` (``J`` of any inner optimizer, learned ones included, at
any point, by ``jax.jacfwd`` on the flattened state in float64), its eigenvalues and
spectral radius, :func:`coordinate_jacobians` (the per-coordinate blocks of ``J`` for
element-wise optimizers on diagonal quadratics, so step-size x curvature sweeps cost a
``k x k`` matrix per cell), :func:`stability_grid` (the sweep) and the closed forms above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from l2l_jax.inner.optimizers import HParams, InnerOptimizer
from l2l_jax.inner.unroll import gradient_fn
from l2l_jax.learned.adapters import as_inner_optimizer

Array = jax.Array

# State leaves that are not part of the dynamics: optax.inject_hyperparams stores the
# hyperparameters in the state (inner.InnerOptimizer overwrites them at every step).
FROZEN_STATE_FIELDS = ("hyperparams",)


# -- the joint update map ----------------------------------------------------------------------


def _is_dynamic(path, leaf) -> bool:
    """A state leaf the dynamics evolve: floating point and not a stored hyperparameter.

    Integer leaves (step counts) are held fixed at the linearization point.
    """
    names = {getattr(k, "name", getattr(k, "key", None)) for k in path}
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) and not (
        names & set(FROZEN_STATE_FIELDS)
    )


def split_state(state: chex.ArrayTree) -> tuple[list[Array], Callable[[list[Array]], object]]:
    """``(dynamic leaves, rebuild)``: the leaves of ``state`` that are part of ``z``, and
    ``rebuild(leaves)`` putting new values back with every other leaf as it was."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    mask = [_is_dynamic(path, leaf) for path, leaf in flat]
    leaves = [leaf for _, leaf in flat]

    def rebuild(dynamic: list[Array]):
        it = iter(dynamic)
        return jax.tree_util.tree_unflatten(
            treedef, [next(it) if m else leaf for m, leaf in zip(mask, leaves, strict=True)]
        )

    return [leaf for leaf, m in zip(leaves, mask, strict=True) if m], rebuild


def update_map(
    optimizer: InnerOptimizer,
    hparams: HParams,
    grad: Callable[[chex.ArrayTree], chex.ArrayTree],
    params: chex.ArrayTree,
    state: chex.ArrayTree,
) -> tuple[Callable[[Array], Array], Array, int]:
    """``(T, z0, n_params)``: the one-step map on flat vectors ``z = ravel(w, s_dyn)``.

    ``T(z) = ravel(optimizer.update(grad(w), s, w, hparams))`` with the non-dynamic state
    leaves (counts, stored hyperparameters) fixed at their values in ``state``;
    ``z0 = ravel(params, s_dyn)``; the first ``n_params`` entries of ``z`` are ``w``.
    """
    dynamic, rebuild = split_state(state)
    z0, unravel = ravel_pytree((params, dynamic))
    n_params = ravel_pytree(params)[0].shape[0]

    def step(z: Array) -> Array:
        w, dyn = unravel(z)
        new_w, new_state = optimizer.update(grad(w), rebuild(dyn), w, hparams)
        return ravel_pytree((new_w, split_state(new_state)[0]))[0]

    return step, z0, n_params


def to_float64(tree):
    """Every floating leaf of ``tree`` (tasks included) as float64 (inside ``enable_x64``)."""

    def cast(x):
        if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x, jnp.float64)
        return x

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Linearization:
    """``J = dT/dz`` at a point and its spectrum.

    Attributes:
      jacobian: ``(n, n)`` float64, ``z = (w, dynamic optimizer state)`` flattened.
      eigenvalues: ``(n,)`` complex128, sorted by decreasing modulus.
      num_params: the first ``num_params`` coordinates of ``z`` are the parameters.
    """

    jacobian: np.ndarray
    eigenvalues: np.ndarray
    num_params: int

    @property
    def spectral_radius(self) -> float:
        """``rho(J) = max |eig(J)|``."""
        return float(np.max(np.abs(self.eigenvalues))) if self.eigenvalues.size else 0.0

    def stable(self, tol: float = 1e-9) -> bool:
        """``rho(J) <= 1 + tol``."""
        return self.spectral_radius <= 1 + tol


def jacobian(
    task,
    optimizer,
    hparams: HParams,
    params: chex.ArrayTree,
    state: chex.ArrayTree,
    *,
    batch_size: int | None = None,
    key: chex.PRNGKey | None = None,
) -> Array:
    """``J = dT/dz`` at ``z = (params, state)``, traceable (``jit``/``vmap`` it).

    ``T`` steps with the full-batch gradient of ``task.loss``, or with ``batch_size`` the
    minibatch gradient drawn from ``key`` (held fixed). In the inputs' dtype;
    :func:`linearize` is the float64 entry point.
    """
    optimizer = as_inner_optimizer(optimizer)
    draw = gradient_fn(task, batch_size)
    step, z0, _ = update_map(optimizer, hparams, lambda w: draw(w, key)[1], params, state)
    return jax.jacfwd(step)(z0)


def linearize(
    task,
    optimizer,
    hparams: HParams,
    params: chex.ArrayTree | None = None,
    state: chex.ArrayTree | None = None,
    *,
    batch_size: int | None = None,
    key: chex.PRNGKey | None = None,
) -> Linearization:
    """The Jacobian of the training dynamics at ``z = (params, state)`` and its eigenvalues.

    ``params`` defaults to ``task.init_params()``, ``state`` to ``optimizer.init(params,
    hparams)``. The gradient is the full-batch ``grad task.loss`` (the mean dynamics;
    on the NQM the noise is additive and does not change ``J`` of a linear optimizer), or
    with ``batch_size`` the minibatch gradient of ``key``, held fixed (one noise draw).
    ``optimizer`` is any :class:`~l2l_jax.inner.InnerOptimizer` or a learned optimizer
    (``hparams`` are then its meta-parameters). Computed with ``jax.jacfwd`` in float64
    (the point itself is taken as given, then cast).
    """
    optimizer = as_inner_optimizer(optimizer)
    if (batch_size is None) != (key is None):
        raise ValueError(
            "pass batch_size and key together (the linearization uses one fixed minibatch "
            "gradient), or neither (full-batch gradient)."
        )
    if params is None:  # in the task's own dtype: a float64 draw would be another w_0
        params = task.init_params()
    chex.assert_trees_all_equal_shapes(params, jax.eval_shape(task.init_params))
    with jax.enable_x64(True):
        task64, hparams64, params = to_float64((task, hparams, params))
        state = optimizer.init(params, hparams64) if state is None else to_float64(state)
        fn = lambda t, h, w, s, k: jacobian(t, optimizer, h, w, s, batch_size=batch_size, key=k)
        jac = np.asarray(jax.jit(fn)(task64, hparams64, params, state, key), np.float64)
    n_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    return Linearization(jacobian=jac, eigenvalues=eigenvalues(jac), num_params=n_params)


@dataclasses.dataclass(frozen=True)
class ScaledStep:
    """``base`` with its parameter step multiplied by a traced factor ``s`` (an
    :class:`~l2l_jax.inner.InnerOptimizer`).

    ``w' = w + s (base(w) - w)``; the hyperparameters are ``{"step_scale": s, "base":
    base_hparams}``. For GD this is the step size ``s eta``; for a learned optimizer it is
    the global step-size multiplier whose stability region :func:`jacobian` maps.
    """

    base: InnerOptimizer
    hparam_names: tuple[str, ...] = ("step_scale", "base")

    @property
    def name(self) -> str:
        return f"{self.base.name}*step_scale"

    @property
    def batch_size(self) -> int | None:
        return self.base.batch_size

    def hparams(self, step_scale: float = 1.0, base=None):
        """``{"step_scale": step_scale, "base": base}`` (``base``: the base optimizer's
        hyperparameters, its defaults when ``None``)."""
        return {"step_scale": step_scale, "base": self.base.hparams() if base is None else base}

    def as_dict(self, hparams):
        return {"step_scale": hparams["step_scale"], "base": hparams["base"]}

    def init(self, params, hparams):
        return self.base.init(params, hparams["base"])

    def update(self, grads, state, params, hparams):
        new, state = self.base.update(grads, state, params, hparams["base"])
        s = hparams["step_scale"]
        return jax.tree.map(lambda w, n: w + (s * (n - w)).astype(w.dtype), params, new), state


def scaled_step(optimizer) -> ScaledStep:
    """:class:`ScaledStep` of ``optimizer`` (an inner or learned optimizer)."""
    return ScaledStep(base=as_inner_optimizer(optimizer))


# -- spectra ----------------------------------------------------------------------------------


def eigenvalues(jacobian: np.ndarray) -> np.ndarray:
    """Eigenvalues of ``jacobian`` (``(..., k, k)``) in complex128, by decreasing modulus."""
    jac = np.asarray(jacobian, np.float64)
    if jac.ndim < 2 or jac.shape[-1] != jac.shape[-2]:
        raise ValueError(f"jacobian must be square (..., k, k), got shape {jac.shape}.")
    eig = np.linalg.eigvals(jac).astype(np.complex128)
    order = np.argsort(-np.abs(eig), axis=-1, kind="stable")
    return np.take_along_axis(eig, order, axis=-1)


def spectral_radius(jacobian: np.ndarray) -> np.ndarray:
    """``max |eig(J)|`` of each ``(k, k)`` matrix of ``jacobian``."""
    return np.max(np.abs(eigenvalues(jacobian)), axis=-1)


def sort_complex(z: np.ndarray, decimals: int = 9) -> np.ndarray:
    """``z`` sorted by real part (rounded to ``decimals``), then imaginary part.

    Rounding makes the order of a conjugate pair independent of the last bits of their
    (mathematically equal) real parts, so two spectra can be compared entry by entry.
    """
    z = np.asarray(z, np.complex128).ravel()
    return z[np.lexsort((z.imag, np.round(z.real, decimals)))]


# -- per-coordinate dynamics on diagonal quadratics -----------------------------------------


def _check_elementwise(optimizer: InnerOptimizer) -> None:
    if getattr(optimizer, "lopt", None) is not None:
        raise ValueError(
            f"coordinate_jacobians needs an element-wise optimizer; {optimizer.name} "
            "normalizes its features over whole tensors, which couples the coordinates. "
            "Use linearize(task, ...) on the full task instead."
        )


def coordinate_jacobians(
    optimizer,
    hparams: HParams,
    curvatures: Sequence[float] | np.ndarray,
    point: float = 1.0,
) -> np.ndarray:
    """``(n, k, k)`` float64 Jacobians of one coordinate with curvature ``curvatures[i]``.

    For an element-wise optimizer (GD, momentum, Adam, any optax chain of per-coordinate
    transforms) on a diagonal quadratic (e.g. :class:`~l2l_jax.tasks.NQM`), ``J`` is block
    diagonal, one ``k x k`` block per coordinate (``k = 1 +`` state entries per
    coordinate), and a block depends only on that coordinate's curvature ``lambda`` (and
    on the point, for non-linear optimizers): the block is ``J`` of the one-dimensional
    task ``f(w) = lambda w^2 / 2`` at ``w = point`` and a fresh optimizer state.
    """
    optimizer = as_inner_optimizer(optimizer)
    _check_elementwise(optimizer)
    lams = _vector("curvatures", curvatures, positive=False)
    with jax.enable_x64(True):
        fn = jax.jit(lambda h, c: _coordinate_jacobians(optimizer, h, c, point))
        return np.asarray(fn(to_float64(hparams), jnp.asarray(lams)), np.float64)


def _coordinate_jacobians(
    optimizer: InnerOptimizer, hparams: HParams, curvatures: Array, point: float
) -> Array:
    """:func:`coordinate_jacobians`, traceable (``vmap`` over the curvatures)."""

    def one(c):
        w = jnp.full((1,), point, curvatures.dtype)
        state = optimizer.init(w, hparams)
        step, z0, _ = update_map(optimizer, hparams, lambda v: c * v, w, state)
        return jax.jacfwd(step)(z0)

    return jax.vmap(one)(curvatures)


@dataclasses.dataclass(frozen=True)
class StabilityGrid:
    """Spectral radius over a grid of step sizes (rows) x curvatures (columns).

    Attributes:
      step_sizes: ``(m,)``; curvatures: ``(n,)``.
      radius: ``(m, n)`` spectral radius ``rho(J)`` of the coordinate dynamics.
      tol: a cell is stable when ``radius <= 1 + tol``.
    """

    step_sizes: np.ndarray
    curvatures: np.ndarray
    radius: np.ndarray
    tol: float = 1e-9

    @property
    def stable(self) -> np.ndarray:
        """``(m, n)`` booleans: ``radius <= 1 + tol``."""
        return self.radius <= 1 + self.tol

    def max_stable_step(self) -> np.ndarray:
        """``(n,)``: per curvature, the largest grid step size below which every step size
        of the grid is stable (NaN when even the smallest is unstable): the measured
        boundary, to compare with ``2 / lambda`` (GD) or ``2 (1 + beta) / lambda``."""
        unstable = ~self.stable
        first_bad = np.where(unstable.any(axis=0), unstable.argmax(axis=0), len(self.step_sizes))
        out = np.full(len(self.curvatures), np.nan)
        ok = first_bad > 0
        out[ok] = self.step_sizes[first_bad[ok] - 1]
        return out


def _vector(name: str, x, positive: bool = True) -> np.ndarray:
    """``x`` as a non-empty 1-D float64 array of finite (and, if ``positive``, > 0) values."""
    v = np.asarray(x, np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {v.shape}.")
    ok = np.isfinite(v) & (v > 0) if positive else np.isfinite(v)
    if not np.all(ok):
        need = "finite and > 0 (e.g. np.logspace(-3, 1, 50))" if positive else "finite"
        raise ValueError(f"{name} must be {need}; got {v[~ok][:3]}.")
    return v


def stability_grid(
    optimizer,
    hparams_fn: Callable[[Array], HParams],
    step_sizes: Sequence[float] | np.ndarray,
    curvatures: Sequence[float] | np.ndarray,
    *,
    point: float = 1.0,
    tol: float = 1e-9,
) -> StabilityGrid:
    """``rho(J)`` of the coordinate dynamics for every (step size, curvature) pair.

    ``hparams_fn(eta)`` builds the hyperparameters for step size ``eta`` (traced), e.g.
    ``lambda eta: eta`` for ``inner.gd()`` or
    ``lambda eta: {"learning_rate": eta, "momentum": 0.9}`` for ``inner.momentum()``.
    One jitted double ``vmap`` of :func:`coordinate_jacobians` in float64, then NumPy
    eigenvalues of the ``(m, n, k, k)`` stack.
    """
    etas = _vector("step_sizes", step_sizes)
    lams = _vector("curvatures", curvatures)
    optimizer = as_inner_optimizer(optimizer)
    _check_elementwise(optimizer)
    with jax.enable_x64(True):
        row = lambda eta: _coordinate_jacobians(
            optimizer, hparams_fn(eta), jnp.asarray(lams), point
        )
        jac = np.asarray(jax.jit(jax.vmap(row))(jnp.asarray(etas)), np.float64)
    return StabilityGrid(etas, lams, spectral_radius(jac), float(tol))


# -- closed forms -------------------------------------------------------------------------------


def gd_eigenvalues(step_size: float, curvatures) -> np.ndarray:
    """``1 - eta lambda`` per curvature ``lambda``: the spectrum of GD's ``J = I - eta H``."""
    return (1.0 - step_size * np.asarray(curvatures, np.float64)).astype(np.complex128)


def momentum_eigenvalues(step_size: float, curvatures, beta: float) -> np.ndarray:
    """Both roots of ``z^2 - (1 + beta - eta lambda) z + beta`` per ``lambda``: ``(n, 2)``."""
    b = 1.0 + beta - step_size * np.asarray(curvatures, np.float64)
    disc = np.sqrt((b * b - 4.0 * beta).astype(np.complex128))
    return np.stack([(b + disc) / 2, (b - disc) / 2], axis=-1)


def gd_max_step(curvatures) -> np.ndarray:
    """GD's stability boundary ``eta = 2 / lambda``."""
    return 2.0 / np.asarray(curvatures, np.float64)


def momentum_max_step(curvatures, beta: float) -> np.ndarray:
    """Heavy ball's stability boundary ``eta = 2 (1 + beta) / lambda`` (``0 <= beta < 1``)."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1) for a stable heavy ball, got {beta}.")
    return 2.0 * (1.0 + beta) / np.asarray(curvatures, np.float64)
