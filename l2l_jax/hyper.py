"""Hypergradient descent and towers of hyper-optimizers (Chandra et al. 2022).

An optax optimizer built with :func:`optax.inject_hyperparams` has its hyperparameters
``h`` (learning rate, b1, b2, ...) learned online: at step ``t`` the gradient
``g_t = grad f(w_t)`` also gives the *hypergradient* of the current loss with respect to
the hyperparameters used in the previous update,

    d f(w_t) / d h_{t-1} = <g_t, d u_{t-1} / d h_{t-1}>,        w_t = w_{t-1} + u_{t-1},

where ``u_{t-1}`` is differentiated with the gradient, the optimizer state and the
parameters held fixed (the paper's "detach": Sec. 3 of Chandra et al.; for SGD this is
Baydin et al. 2018's ``-g_t . g_{t-1}``). Another optax optimizer takes that gradient
step on the hyperparameters. Because the result is itself an optax transformation whose
incoming gradient is ``d f / d(its parameters)``, the hyper-optimizer may again be a
:func:`hyper` optimizer: towers of any height in one expression (see :func:`tower`).

**Parametrization.** The hyper-optimizer acts on unconstrained ``raw`` values, mapped to
hyperparameters by a constraint per name (:data:`DEFAULT_CONSTRAINTS`):
``"positive"``: ``h = exp(raw)`` (learning rates, eps; the hyper-step is then relative),
``"unit"``: ``h = sigmoid(raw)`` (b1, b2, momentum, decays: stays in (0, 1)),
``"none"``: ``h = raw`` (the paper's direct form; a learning rate may turn negative).
The hypergradient reported in the state is with respect to ``raw``.

**Warm-up (opt-in).** :func:`with_warmup` multiplies an optimizer's update by the linear
warm-up factor ``min(1, t / steps)`` of Ma & Yarats (2021) at its ``t``-th step; the
factor sits inside the wrapped optimizer, so the hypergradient is that of the update
actually applied, ``<g_t, omega_{t-1} d u_{t-1} / d h_{t-1}>``. Off unless asked for.

**Cost.** One forward-mode JVP of the update per learned hyperparameter per step (and a
params-sized tangent per learned hyperparameter in the state), so the cost grows
linearly with the number of learned hyperparameters and with the tower's height.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2l_jax import input_checks

Array = jax.Array

CONSTRAINTS: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "positive": (jnp.exp, jnp.log),
    "unit": (jax.nn.sigmoid, lambda h: jnp.log(h) - jnp.log1p(-h)),
    "none": (lambda r: r, lambda h: h),
}
DEFAULT_CONSTRAINTS: dict[str, str] = dict(input_checks.HYPERPARAMETER_DOMAINS)


class HyperState(NamedTuple):
    """State of a :func:`hyper` optimizer (a pytree: jit, scan and checkpoint it).

    Attributes:
      raw: unconstrained learned hyperparameters, by name.
      inner: state of the wrapped ``optax.inject_hyperparams`` optimizer.
      outer: state of the hyper-optimizer (itself a ``HyperState`` in a tower).
      tangents: ``d u_{t-1} / d raw_k``, one params-shaped pytree per learned name.
      hypergrad: the last hypergradient ``d f(w_t) / d raw_{t-1}``, by name.
    """

    raw: dict[str, Array]
    inner: Any
    outer: Any
    tangents: dict[str, Any]
    hypergrad: dict[str, Array]


def _constraint(name: str, constraints: Mapping[str, str]) -> str:
    kind = constraints.get(name, DEFAULT_CONSTRAINTS.get(name, "none"))
    if kind not in CONSTRAINTS:
        raise ValueError(
            f"constraint for {name!r} must be one of {tuple(CONSTRAINTS)}, got {kind!r}."
        )
    return kind


def _vdot(a, b) -> Array:
    """``sum_i <a_i, b_i>`` over matching pytrees."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def constrain(
    raw: Mapping[str, Array], constraints: Mapping[str, str] | None = None
) -> dict[str, Array]:
    """Hyperparameters from unconstrained ``raw`` values, by each name's constraint
    (``constraints``, else :data:`DEFAULT_CONSTRAINTS`, else ``"none"``)."""
    constraints = constraints or {}
    return {k: CONSTRAINTS[_constraint(k, constraints)][0](v) for k, v in raw.items()}


def hyperparams(state: Any) -> dict[str, Array]:
    """The learned hyperparameters a :func:`hyper` optimizer applied at its last update
    (its initial values before the first one), by name.

    Read from the wrapped ``inject_hyperparams`` state, so they are the values the update
    used, whatever the constraint. ``state`` may be a :class:`HyperState` or any optimizer
    state that holds exactly one (for example the state of an ``optax.chain``); a tower's
    state gives its lowest level (the hyper-optimizer's own are in ``state.outer``).
    """
    found = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, HyperState))
        if isinstance(s, HyperState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"state must hold exactly one hyper optimizer's HyperState, found {len(found)}; "
            "pass that optimizer's part of the state (e.g. state[i] of an optax.chain)."
        )
    (state,) = found
    return {k: state.inner.hyperparams[k] for k in state.raw}


def hyper(
    factory: Callable[..., optax.GradientTransformation],
    init: Mapping[str, float],
    hyper_optimizer: optax.GradientTransformation,
    *,
    learn: Sequence[str] | None = None,
    constraints: Mapping[str, str] | None = None,
    **static: Any,
) -> optax.GradientTransformationExtraArgs:
    """``factory(**init, **static)`` whose hyperparameters ``learn`` are learned online.

    Args:
      factory: an optax optimizer factory, e.g. ``optax.adam``.
      init: initial values of the numeric hyperparameters (all of them are injected).
      hyper_optimizer: optax optimizer for the learned hyperparameters' raw values; may
        be another :func:`hyper` optimizer (a tower).
      learn: names to learn (default: every name in ``init``).
      constraints: name -> ``"positive" | "unit" | "none"`` (defaults by name, see the
        module docstring).
      static: non-learned, non-numeric arguments of ``factory``.

    Returns:
      An optax ``GradientTransformationExtraArgs``; its ``update`` needs ``params``.
    """
    learn = tuple(init) if learn is None else tuple(learn)
    unknown = [k for k in learn if k not in init]
    if not learn or unknown:
        raise ValueError(
            f"learn must name hyperparameters given in init {sorted(init)}; got {list(learn)}."
        )
    constraints = dict(constraints or {})
    kinds = {k: _constraint(k, constraints) for k in learn}
    for k, v in init.items():
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.ndarray, jax.Array)):
            raise TypeError(
                f"init[{k!r}] must be a number, got {type(v).__name__}: hyper learns constant "
                "hyperparameters (a schedule cannot be differentiated as one number); pass "
                "its initial value, or pass the schedule through **static and do not learn it."
            )
        if not bool(np.all(np.isfinite(np.asarray(v, float)))):
            raise ValueError(f"init[{k!r}] must be finite, got {v}.")
    for k in learn:
        if kinds[k] == "positive" and not init[k] > 0:
            raise ValueError(f"init[{k!r}] must be > 0 for a 'positive' constraint.")
        if kinds[k] == "unit" and not 0 < init[k] < 1:
            raise ValueError(f"init[{k!r}] must be in (0, 1) for a 'unit' constraint.")
    inner_tx = optax.inject_hyperparams(factory)(**init, **static)

    def init_fn(params) -> HyperState:
        dtype = jnp.result_type(*jax.tree.leaves(params))
        raw = {k: jnp.asarray(CONSTRAINTS[kinds[k]][1](jnp.asarray(init[k], dtype))) for k in learn}
        zeros = jax.tree.map(jnp.zeros_like, params)
        return HyperState(
            raw=raw,
            inner=inner_tx.init(params),
            outer=hyper_optimizer.init(raw),
            tangents={k: zeros for k in learn},
            hypergrad={k: jnp.zeros((), dtype) for k in learn},
        )

    def update_fn(updates, state: HyperState, params=None, **extra):
        del extra
        if params is None:
            raise ValueError("hyper optimizers need params: call update(grads, state, params).")
        grads = updates
        # 1. hypergradient of f(w_t) w.r.t. the raw values used for u_{t-1}
        hypergrad = {k: _vdot(grads, state.tangents[k]).astype(state.raw[k].dtype) for k in learn}
        # 2. a hyper-optimizer step on the raw values (a tower recurses here)
        raw_updates, outer = hyper_optimizer.update(hypergrad, state.outer, state.raw)
        raw = optax.apply_updates(state.raw, raw_updates)

        # 3. this step's update u_t and its tangents d u_t / d raw_k (grads, state, params
        #    held fixed: the "detach" of Chandra et al.)
        def step(r):
            values = {
                k: v.astype(state.inner.hyperparams[k].dtype)
                for k, v in constrain(r, kinds).items()
            }
            inner = state.inner._replace(hyperparams={**state.inner.hyperparams, **values})
            return inner_tx.update(grads, inner, params)

        tangents = {}
        for k in learn:
            direction = {
                j: jnp.zeros_like(v) if j != k else jnp.ones_like(v) for j, v in raw.items()
            }
            (u, inner), (du, _) = jax.jvp(step, (raw,), (direction,))
            tangents[k] = du
        new_state = HyperState(
            raw=raw, inner=inner, outer=outer, tangents=tangents, hypergrad=hypergrad
        )
        return u, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def untuned_warmup_steps(b2: float = 0.999) -> int:
    """Ma & Yarats (2021)'s untuned warm-up length for Adam: ``2 / (1 - b2)`` steps."""
    if not 0 < b2 < 1:
        raise ValueError(f"b2 must be in (0, 1), got {b2}.")
    return round(2.0 / (1.0 - b2))


def warmup_factor(count: Array, steps: int) -> Array:
    """``min(1, (count + 1) / steps)``: the factor of the update at step ``count + 1``
    (Ma & Yarats 2021, "linear" warm-up ``omega_t = min(1, t / steps)``)."""
    return jnp.minimum(1.0, (count + 1.0) / steps)


def with_warmup(
    factory: Callable[..., optax.GradientTransformation], steps: int
) -> Callable[..., optax.GradientTransformation]:
    """``factory`` whose update is multiplied by a linear warm-up factor (opt-in).

    Adam's first update moves every coordinate by about its learning rate whatever the
    gradient's scale (``m_1 / sqrt(v_1) = sign(g_1)``), and in hypergradient descent that
    update is taken at the initial learning rate, before any hypergradient exists (there
    is no previous update to differentiate; so too in Chandra et al.'s own ``gdtuo``
    code, whose first hyper-step sees a zero gradient). Ma & Yarats (2021, "On the
    adequacy of untuned warmup for adaptive optimization", AAAI) trace Adam's need for
    warm-up to this size of its early updates and recommend, untuned, the linear factor
    ``omega_t = min(1, t / steps)`` with ``steps = 2 / (1 - b2)``
    (:func:`untuned_warmup_steps`). Here the factor is applied *inside* the optimizer
    (``optax.chain(factory(...), optax.scale_by_schedule(...))``, the counter in its
    state), so :func:`hyper` differentiates the scaled update and the hypergradient stays
    exact for the step actually taken. The same factory works with
    ``optax.inject_hyperparams`` alone (a plain optimizer with the same warm-up).

    Args:
      factory: an optax optimizer factory, e.g. ``optax.adam``.
      steps: warm-up length; ``0`` returns ``factory`` itself (no warm-up).
    """
    if steps < 0 or int(steps) != steps:
        raise ValueError(f"warm-up steps must be a non-negative integer, got {steps!r}.")
    if steps == 0:
        return factory

    @functools.wraps(factory)  # keeps factory's signature for inject_hyperparams
    def warmed(*args, **kwargs) -> optax.GradientTransformation:
        return optax.chain(
            factory(*args, **kwargs),
            optax.scale_by_schedule(lambda count: warmup_factor(count, int(steps))),
        )

    return warmed


def tower(
    *levels: tuple[Callable[..., optax.GradientTransformation], Mapping[str, float]]
    | optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """A tower in one expression, written leftmost-first as in the paper.

    ``tower((optax.adam, {"learning_rate": 1e-3}), (optax.sgd, {"learning_rate": 1e-2}),
    optax.sgd(1e-4))`` is Adam whose learning rate is tuned by SGD, whose learning rate is
    tuned by plain SGD(1e-4) ("Adam/SGD/SGD"). Every level but the last is a
    ``(factory, init)`` pair whose hyperparameters are all learned; the last is a fixed
    optax optimizer.
    """
    if len(levels) < 2 or not isinstance(levels[-1], optax.GradientTransformation):
        raise ValueError(
            "tower needs at least one (factory, init) level followed by a fixed optax "
            "optimizer, e.g. tower((optax.sgd, {'learning_rate': 0.1}), optax.sgd(1e-3))."
        )
    tx = levels[-1]
    for level in reversed(levels[:-1]):
        factory, init = level
        tx = hyper(factory, init, tx)
    return tx
