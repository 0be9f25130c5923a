"""Meta-training: gradient descent on a meta-objective, with non-finite detection.

Any optax optimizer can drive the hyperparameters. :func:`meta_gd` is the one of
Wang et al. (2021), Theorem 4: meta step size ``mu_k = c / sqrt(k)`` and projection onto
``eta >= 0``. Every meta-step is checked: one whose meta-gradient or meta-objective
value is non-finite is *not* applied (the hyperparameters stay where they are, via
:func:`optax.apply_if_finite`), and it is counted and reported in :class:`MinimizeResult`.

**Domains.** Hyperparameters named in a dict (``inner.adam().hparams(...)``) stay in
their domain (:data:`l2l_jax.input_checks.HYPERPARAMETER_DOMAINS` gives each name's): a step that
would move a learning rate or ``eps`` to ``<= 0`` is projected to ``tiny`` (the
smallest normal float of its dtype), one that would move ``b1``, ``b2``, ``momentum`` or
``decay`` outside ``[0, 1)`` to ``0`` or ``1 - eps`` (the float below 1). Projected steps
are counted per step (``MinimizeResult.projected``), never silent.

A bare scalar ``init`` has no name. When ``meta_objective`` is a
:func:`~l2l_jax.metagrad.meta_objective` of an inner optimizer with one hyperparameter
(``inner.gd()``, ``inner.sgd()``: their ``hparams`` are the bare step size), the scalar
*is* that hyperparameter (``learning_rate``) and gets its domain. Any other callable
says nothing about what its input means (e.g. a log step size, which may be negative),
so its bare scalar is left unconstrained. ``domains=`` overrides the inference: one of
``"positive"``, ``"unit"``, ``"none"`` for every leaf, or a tree of them shaped like
``init`` (or a prefix of it).

**Non-finite runs.** When *every* meta-step is non-finite, the result is the start,
unchanged: ``on_nonfinite="warn"`` (default) says so with a :class:`NonFiniteWarning`,
``"raise"`` raises a ``FloatingPointError``, ``"ignore"`` is silent. Some skipped steps
among finite ones are normal and only counted (``MinimizeResult.nonfinite``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from l2l_jax import input_checks, xla

Projection = Callable[[chex.ArrayTree], chex.ArrayTree]

# apply_if_finite gives up after this many consecutive bad steps; we never want it to.
_NEVER = np.iinfo(np.int32).max

DOMAINS = ("positive", "unit", "none")
ON_NONFINITE = ("warn", "raise", "ignore")


class NonFiniteWarning(RuntimeWarning):
    """:func:`minimize` skipped every meta-step (each was non-finite): nothing was learned."""


@chex.dataclass(frozen=True)
class MetaGD:
    """An optax meta-optimizer together with the projection applied after each update."""

    optimizer: optax.GradientTransformation
    projection: Projection | None = None


def meta_gd(c: float, project_non_negative: bool = True) -> MetaGD:
    """Projected meta-GD with ``mu_k = c / sqrt(k)``, ``k = 1, 2, ...`` (Theorem 4)."""
    input_checks.positive("c", c)
    schedule = lambda count: c / jnp.sqrt(count + 1.0)
    projection = optax.projections.projection_non_negative if project_non_negative else None
    return MetaGD(optimizer=optax.sgd(schedule), projection=projection)


@chex.dataclass(frozen=True)
class MinimizeResult:
    """A meta-training run.

    Attributes:
      params: final meta-parameters.
      trajectory: meta-parameters before each step and after the last, stacked ``(K+1,...)``.
      values: ``(K,)`` meta-objective at each step.
      grads: meta-gradients at each step, stacked ``(K, ...)``.
      nonfinite: ``(K,)`` True where the meta-gradient or the meta-objective was NaN/inf
        (the step was skipped).
      projected: ``(K,)`` True where the step would have left a hyperparameter's domain
        and was projected back onto it (module docstring).
    """

    params: chex.ArrayTree
    trajectory: chex.ArrayTree
    values: jax.Array
    grads: chex.ArrayTree
    nonfinite: jax.Array
    projected: jax.Array

    @property
    def nonfinite_count(self) -> int:
        return int(np.sum(np.asarray(self.nonfinite)))

    @property
    def projected_count(self) -> int:
        return int(np.sum(np.asarray(self.projected)))


def _leaf_domains(meta_objective: Callable, init: chex.ArrayTree, domains) -> tuple[str, ...]:
    """The domain of each leaf of ``init``, in leaf order (module docstring)."""
    if domains is None:
        # a bare scalar is the step size of a meta_objective over a one-hyperparameter
        # optimizer (inner.gd()); a plain function's says nothing about its meaning
        names = tuple(getattr(getattr(meta_objective, "optimizer", None), "hparam_names", ()))
        paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(init)]
        return tuple(input_checks.domain_of(p, names) for p in paths)
    try:
        per_leaf = jax.tree.map(
            lambda d, x: jax.tree.map(lambda _: d, x), domains, init, is_leaf=lambda d: d is None
        )
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"domains must be one of {DOMAINS} or a tree of them shaped like init (or a "
            f"prefix of it): {err}"
        ) from None
    out = tuple(jax.tree_util.tree_leaves(per_leaf))
    bad = sorted({repr(d) for d in out if d not in DOMAINS})
    if bad:
        raise ValueError(f"domains must be among {DOMAINS}, got {', '.join(bad)}.")
    return out


def _project_to_domains(params: chex.ArrayTree, domains: tuple[str, ...]) -> chex.ArrayTree:
    """Each leaf clipped into its domain (module docstring)."""

    def clip(kind, x):
        if kind == "positive":
            return jnp.maximum(x, jnp.finfo(x.dtype).tiny)
        if kind == "unit":
            return jnp.clip(x, 0, 1 - jnp.finfo(x.dtype).epsneg)
        return x

    leaves, treedef = jax.tree_util.tree_flatten(params)
    return treedef.unflatten([clip(k, x) for k, x in zip(domains, leaves, strict=True)])


def _check_domains(init: chex.ArrayTree, domains: tuple[str, ...]) -> None:
    """A ValueError naming the first leaf of ``init`` outside its domain."""
    for (path, x), kind in zip(jax.tree_util.tree_leaves_with_path(init), domains, strict=True):
        x = np.asarray(x)
        name = jax.tree_util.keystr(path)
        hint = "" if path else " (a bare scalar is the step size here; domains='none' frees it)"
        if kind == "positive" and not np.all(x > 0):
            raise ValueError(f"init{name} must be > 0, got {x}{hint}.")
        if kind == "unit" and not np.all((x >= 0) & (x < 1)):
            raise ValueError(f"init{name} must be in [0, 1), got {x}.")


def _report_nonfinite(nonfinite: jax.Array, steps: int, on_nonfinite: str) -> None:
    """Warn or raise (``on_nonfinite``) when every one of ``steps`` meta-steps was skipped."""
    if on_nonfinite == "ignore" or not bool(np.all(np.asarray(nonfinite))):
        return
    message = (
        f"metagrad.minimize skipped all {steps} meta-steps: the meta-objective or its gradient was "
        "NaN/inf at the start every time, so the result is the start, unchanged. Use a "
        "log-loss objective (objectives.log_loss()), grad='stable', or a smaller step size "
        "or horizon; on_nonfinite='ignore' silences this."
    )
    if on_nonfinite == "raise":
        raise FloatingPointError(message)
    warnings.warn(message, NonFiniteWarning, stacklevel=3)


def _chunk_runner(
    meta_objective: Callable, optimizer: MetaGD, domains: tuple[str, ...]
) -> tuple[Callable, Callable]:
    """``(tx.init, jitted run_chunk(carry, length))`` for one objective and optimizer
    (built once per pair by :func:`minimize` through :func:`l2l_jax.xla.cached`, so calling
    it again with the same two objects does not compile again)."""
    tx = optax.apply_if_finite(optimizer.optimizer, max_consecutive_errors=_NEVER)
    user_projection = optimizer.projection or (lambda p: p)

    def project(p):
        p = user_projection(p)
        q = _project_to_domains(p, domains)
        changed = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.any(a != b), p, q))
        return q, jnp.any(jnp.stack(changed)) if changed else jnp.asarray(False)

    value_and_grad = jax.value_and_grad(meta_objective)

    def one_step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params)
        # A non-finite value poisons the step too: log(inf) backpropagates a finite 0,
        # which would otherwise freeze the parameters silently.
        checked = jax.tree.map(lambda g: jnp.where(jnp.isfinite(value), g, jnp.nan), grad)
        updates, state = tx.update(checked, state, params)
        new_params, projected = project(optax.apply_updates(params, updates))
        return (new_params, state), (params, value, grad, ~state.last_finite, projected)

    @functools.partial(jax.jit, static_argnums=1)
    def run_chunk(carry, length):
        return jax.lax.scan(one_step, carry, None, length=length)

    return tx.init, run_chunk


def minimize(
    meta_objective: Callable[[chex.ArrayTree], jax.Array],
    init: chex.ArrayTree,
    optimizer: MetaGD | optax.GradientTransformation,
    steps: int,
    *,
    chunk: int = 100,
    progress: bool | str = True,
    domains=None,
    on_nonfinite: str = "warn",
) -> MinimizeResult:
    """Run ``steps`` meta-steps of ``optimizer`` on ``meta_objective`` from ``init``.

    The meta-steps run in jitted ``lax.scan`` chunks of ``chunk`` steps; a progress bar
    advances per chunk (pass a string to label it, ``False`` to hide it). ``domains``
    (default: inferred) and ``on_nonfinite`` (``"warn"``, ``"raise"``, ``"ignore"``) are
    described in the module docstring.
    """
    steps = input_checks.positive_int("steps", steps)
    chunk = input_checks.positive_int("chunk", chunk)
    if not callable(meta_objective):
        raise TypeError(
            f"meta_objective must be a callable F(hparams) -> scalar, e.g. "
            f"metagrad.meta_objective(...), got {type(meta_objective).__name__}."
        )
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}.")
    for path, leaf in jax.tree_util.tree_leaves_with_path(init):
        name = f"init{jax.tree_util.keystr(path)}"
        input_checks.finite(name, input_checks.float_array(name, leaf))
    if isinstance(optimizer, optax.GradientTransformation):
        optimizer = MetaGD(optimizer=optimizer)
    if not isinstance(optimizer, MetaGD):
        raise TypeError(
            "optimizer must be metagrad.meta_gd(c) or an optax.GradientTransformation, got "
            f"{type(optimizer).__name__}."
        )
    if optimizer.projection is not None:
        input_checks.non_negative_values("init", init)
    leaf_domains = _leaf_domains(meta_objective, init, domains)
    _check_domains(init, leaf_domains)
    tx_init, run_chunk = xla.cached(
        ("metagrad.minimize", meta_objective, optimizer, leaf_domains),
        lambda: _chunk_runner(meta_objective, optimizer, leaf_domains),
    )
    carry = (init, tx_init(init))
    outputs = []
    label = progress if isinstance(progress, str) else "meta-training"
    with tqdm(total=steps, desc=label, disable=not progress, leave=False) as bar:
        for start in range(0, steps, chunk):
            length = min(chunk, steps - start)
            carry, out = run_chunk(carry, length)
            outputs.append(out)
            bar.update(length)
    trajectory, values, grads, nonfinite, projected = jax.tree.map(
        lambda *xs: jnp.concatenate(xs), *outputs
    )
    _report_nonfinite(nonfinite, steps, on_nonfinite)
    final = carry[0]
    trajectory = jax.tree.map(lambda t, f: jnp.concatenate([t, f[None]]), trajectory, final)
    return MinimizeResult(
        params=final,
        trajectory=trajectory,
        values=values,
        grads=grads,
        nonfinite=nonfinite,
        projected=projected,
    )
