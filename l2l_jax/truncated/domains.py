"""Named hyperparameters meta-learned in an unconstrained space, so they stay in their domains.

A hyperparameter whose name has a domain (:data:`l2l_jax.input_checks.HYPERPARAMETER_DOMAINS`:
``learning_rate`` and ``eps`` positive, ``b1``, ``b2``, ``momentum``, ``decay`` in
``[0, 1)``) is meta-learned as ``u`` with

* ``theta = exp(u)``, ``u = log(theta)`` for a positive one,
* ``theta = sigmoid(u)``, ``u = log(theta) - log1p(-theta)`` for a decay,

as learned_optimization does. The estimators (TBPTT, ES, PES) and the meta-optimizer work
on ``u`` (:func:`meta_step <l2l_jax.truncated.step.meta_step>` hands them the
optimizer wrapped by :func:`reparameterize`), so every update and every ES/PES
perturbation ``u +- sigma eps`` maps to a value inside the domain. The ES and PES
estimates stay exact (antithetic, and for PES unbiased) for the smoothed loss in ``u``,
which a projection of the perturbed points would break. The price: the estimator's
``sigma`` (``truncated.PES(sigma=...)``) and ``meta_lr`` act on ``u``, so for a named
hyperparameter they are *relative* sizes (a perturbation of ``0.01`` moves a learning rate
by about 1%, a decay ``b`` by about ``0.01 b (1 - b)``).

Everything a user sees stays in the natural space: the state's ``meta_params`` (so
:class:`~l2l_jax.truncated.loop.TruncatedResult` and checkpoints) hold ``theta``;
``u`` is recomputed from it at every meta-step; the meta-optimizer's state, PES's
accumulators and the ``grad_norm`` metric are in ``u``. Checkpoints keep their arrays and
shapes. Leaves whose name has no domain (a learned optimizer's network weights, or
``inner.from_optax`` hyperparameters with other names) are left exactly as they are: no
operation touches them, and when no leaf is named the meta-step is the same program as
without this module (learned optimizers' runs and checkpoints are unchanged).

Float limits (the leaf's dtype): ``theta`` is clipped to ``[tiny, max]`` for a positive
value (``exp`` under- or overflows for ``|u| > ~87`` in float32) and to ``[0, 1 - epsneg]``
for a decay (``sigmoid(u)`` rounds to exactly ``1.0`` in float32 for ``u > ~16.6``, which
would make ``b2 == 1``); the clip only undoes rounding, so the derivatives are those of
``exp`` and ``sigmoid`` computed without it (``sigmoid(u) sigmoid(-u)``, positive where
``sigmoid(u)`` has rounded to 1). A starting decay of exactly ``0`` is moved to ``tiny``
before the log (``u ~ -87`` in float32), where its gradient in ``u`` is about ``0``: start
decays strictly inside ``(0, 1)`` to meta-learn them. Since the state keeps ``theta``,
``u`` has the resolution of ``theta``'s float: a step that moves ``theta`` by less than
half its spacing (a decay within ``1e-4`` of 1 in float32, say) is lost to rounding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

from l2l_jax import input_checks
from l2l_jax.inner.optimizers import InnerOptimizer

MetaParams = chex.ArrayTree


def _limits(x: jax.Array) -> jnp.finfo:
    return jnp.finfo(jnp.result_type(x))


def positive_to_u(theta: jax.Array) -> jax.Array:
    """``log(theta)``, with ``theta`` first raised to the smallest normal float."""
    theta = jnp.asarray(theta)
    return jnp.log(jnp.maximum(theta, _limits(theta).tiny))


@jax.custom_jvp
def positive_from_u(u: jax.Array) -> jax.Array:
    """``exp(u)`` clipped to ``[tiny, max]`` of its dtype: finite and ``> 0`` for any
    ``u``. Its derivative is the returned value (``exp(u)`` where nothing is clipped)."""
    u = jnp.asarray(u)
    info = _limits(u)
    return jnp.clip(jnp.exp(u), info.tiny, info.max).astype(u.dtype)


@positive_from_u.defjvp
def _positive_from_u_jvp(primals, tangents):
    theta = positive_from_u(primals[0])
    return theta, tangents[0] * theta


def unit_to_u(theta: jax.Array) -> jax.Array:
    """``logit(theta) = log(theta) - log1p(-theta)``, with ``theta`` first clipped to
    ``[tiny, 1 - epsneg]`` (finite for any ``theta`` in ``[0, 1]``)."""
    theta = jnp.asarray(theta)
    info = _limits(theta)
    theta = jnp.clip(theta, info.tiny, 1 - info.epsneg)
    return jnp.log(theta) - jnp.log1p(-theta)


@jax.custom_jvp
def unit_from_u(u: jax.Array) -> jax.Array:
    """``sigmoid(u)`` clipped to ``[0, 1 - epsneg]`` of its dtype: in ``[0, 1)`` for any
    ``u``, never ``1.0``. Its derivative is ``sigmoid(u) sigmoid(-u)``, which stays
    positive where ``sigmoid(u)`` has rounded to 1 (``s (1 - s)`` would be 0 there)."""
    u = jnp.asarray(u)
    return jnp.clip(jax.nn.sigmoid(u), 0, 1 - _limits(u).epsneg).astype(u.dtype)


@unit_from_u.defjvp
def _unit_from_u_jvp(primals, tangents):
    (u,), (t,) = primals, tangents
    return unit_from_u(u), t * jax.nn.sigmoid(u) * jax.nn.sigmoid(-u)


_TO_U: dict[str, Callable[[jax.Array], jax.Array]] = {
    "positive": positive_to_u,
    "unit": unit_to_u,
}
_FROM_U: dict[str, Callable[[jax.Array], jax.Array]] = {
    "positive": positive_from_u,
    "unit": unit_from_u,
}


def leaf_domain(path: tuple, optimizer: InnerOptimizer) -> str:
    """The domain of a meta-parameter leaf: :func:`l2l_jax.input_checks.domain_of` of its dict
    key; a bare array (no key) is the optimizer's single hyperparameter when it has one
    (``inner.gd()``'s step size is a scalar, not a dict)."""
    return input_checks.domain_of(path, tuple(getattr(optimizer, "hparam_names", ())))


def _map(table: dict, tree: MetaParams, optimizer: InnerOptimizer) -> MetaParams:
    def one(path, x):
        fn = table.get(leaf_domain(path, optimizer))
        return x if fn is None else fn(x)

    return jax.tree_util.tree_map_with_path(one, tree)


def to_unconstrained(theta: MetaParams, optimizer: InnerOptimizer) -> MetaParams:
    """``u`` of every named leaf (module docstring); other leaves are returned as they are."""
    return _map(_TO_U, theta, optimizer)


def from_unconstrained(u: MetaParams, optimizer: InnerOptimizer) -> MetaParams:
    """``theta`` of every named leaf, inside its domain; other leaves as they are."""
    return _map(_FROM_U, u, optimizer)


def is_constrained(meta_params: MetaParams, optimizer: InnerOptimizer) -> bool:
    """True when some leaf of ``meta_params`` has a domain."""
    paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(meta_params)]
    return any(leaf_domain(p, optimizer) != "none" for p in paths)


def check(meta_params: MetaParams, optimizer: InnerOptimizer) -> None:
    """:func:`l2l_jax.input_checks.hyperparameter` of every named scalar leaf whose value is
    known (finite, ``>= 0``, a decay ``< 1``): a value outside its domain is refused rather
    than silently moved into it by :func:`to_unconstrained`."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(meta_params):
        if leaf_domain(path, optimizer) != "none" and jnp.ndim(leaf) == 0:
            name = path[-1].key if path else optimizer.hparam_names[0]
            input_checks.hyperparameter(name, leaf)


def keep_where(
    skipped: jax.Array, old: MetaParams, new: MetaParams, optimizer: InnerOptimizer
) -> MetaParams:
    """``old`` on the named leaves where ``skipped`` (a skipped step leaves them exactly
    where they were, not at ``from_unconstrained(to_unconstrained(old))``, which may
    differ by rounding); other leaves are ``new``'s, untouched."""

    def one(path, o, n):
        return n if leaf_domain(path, optimizer) == "none" else jnp.where(skipped, o, n)

    return jax.tree_util.tree_map_with_path(one, old, new)


@dataclasses.dataclass(frozen=True)
class Unconstrained:
    """``optimizer`` taking its named hyperparameters as ``u`` (:func:`to_unconstrained`):
    ``init`` and ``update`` map them to ``theta`` and call ``optimizer``. What the
    estimators differentiate and perturb inside :func:`meta_step`."""

    base: Any

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def hparam_names(self) -> tuple[str, ...]:
        return self.base.hparam_names

    @property
    def batch_size(self) -> int | None:
        return self.base.batch_size

    def hparams(self, *args: Any, **values: Any) -> MetaParams:
        """``u`` of the base optimizer's ``hparams(...)``."""
        return to_unconstrained(self.base.hparams(*args, **values), self.base)

    def as_dict(self, hparams: MetaParams) -> dict[str, Any]:
        """The base optimizer's ``as_dict`` of ``theta`` (natural values)."""
        return self.base.as_dict(from_unconstrained(hparams, self.base))

    def init(self, params, hparams: MetaParams):
        return self.base.init(params, from_unconstrained(hparams, self.base))

    def update(self, grads, state, params, hparams: MetaParams):
        return self.base.update(grads, state, params, from_unconstrained(hparams, self.base))


def reparameterize(optimizer: InnerOptimizer, meta_params: MetaParams):
    """:class:`Unconstrained` ``(optimizer)`` when a leaf of ``meta_params`` has a domain,
    else ``optimizer`` itself (then ``u`` is ``theta`` and nothing changes)."""
    return Unconstrained(optimizer) if is_constrained(meta_params, optimizer) else optimizer
