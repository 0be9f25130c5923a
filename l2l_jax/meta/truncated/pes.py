"""Persistent evolution strategies (Vicol, Metz and Sohl-Dickstein 2021, "Unbiased
gradient estimation in unrolled computation graphs with persistent evolution strategies",
Eq. 7 and Algorithm 2, antithetic form).

Truncated ES and TBPTT start every segment from the unperturbed state, so they ignore how
the meta-parameters shaped that state in earlier segments: their estimates are biased
towards short horizons. PES instead keeps, for every antithetic pair, the two perturbed
runs themselves across segments (the ``+`` run always steps with ``theta + sigma eps_s``,
the ``-`` run with ``theta - sigma eps_s``, a fresh ``eps_s`` each segment), and the sum
``xi = sigma (eps_1 + ... + eps_s)`` of the perturbations the current runs have seen.
The estimate of segment ``s`` is

    ``g = mean_{b,j} sum_t (L^+_t - L^-_t) xi_t / (2 sigma^2 K)``

where ``xi_t`` is ``xi`` for the iterates of the run that was going at the start of the
segment and ``sigma eps_s`` for those of a run that restarted (at the horizon) inside it.
Summed over the segments of a run, it is an unbiased estimate of the gradient of the
Gaussian-smoothed meta-loss of the *whole* run.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.meta.truncated.config import TruncatedConfig
from l2l_jax.meta.truncated.es import tree_normal
from l2l_jax.meta.truncated.runs import InnerState, advance, restart_where

Array = jax.Array
MetaParams = chex.ArrayTree


@chex.dataclass(frozen=True)
class PESState:
    """The persistent part of PES (leading axes ``(B, P)``: run, pair).

    Attributes:
      runs: an :class:`~l2l_jax.meta.truncated.runs.InnerState` with axes ``(B, P, 2)``:
        each pair's ``+`` run (index 0) and ``-`` run (index 1). Both start from their
        run's fresh state and restart together (same key, same step).
      accumulator: like the meta-parameters with leading axes ``(B, P)``: ``xi``, the sum
        of the ``+`` perturbations ``sigma eps`` the pair's current runs have stepped
        with; reset to the new perturbation when the runs restart.
    """

    runs: InnerState
    accumulator: MetaParams


def init_pes(runs: InnerState, meta_params: MetaParams, config: TruncatedConfig) -> PESState:
    """Every pair of run ``b`` starts as two copies of ``runs[b]``, with ``xi = 0``."""
    shape = (config.meta_batch, config.es_pairs, 2)
    pairs = jax.tree.map(lambda x: jnp.broadcast_to(x[:, None, None], shape + x.shape[1:]), runs)
    acc = jax.tree.map(
        lambda x: jnp.zeros(shape[:2] + jnp.shape(x), jnp.result_type(x)), meta_params
    )
    return PESState(runs=pairs, accumulator=acc)


def _pair_segment(thetas, runs, task, optimizer, config):
    """``K`` steps of one pair's two runs (``thetas``, ``runs``: leading axis 2, ``+/-``).

    Both runs restart together when either must (the horizon is shared; a non-finite
    ``+`` run also restarts its ``-`` twin), so the two stay aligned step for step.
    Returns the new runs and, per step, the meta-loss and training loss of both and the
    restart flag.
    """
    step2 = jax.vmap(advance, in_axes=(0, 0, None, None, None))
    restart2 = jax.vmap(restart_where, in_axes=(None, 0, None, None, 0))

    def body(carry, _):
        advanced, terms, done = step2(thetas, carry, task, optimizer, config)
        done = jnp.any(done)
        new = restart2(done, advanced, task, optimizer, thetas)
        return new, (terms["meta_loss"], terms["train_loss"], done)

    return jax.lax.scan(body, runs, None, length=config.segment)


def pes_gradient(
    meta_params: MetaParams,
    state: PESState,
    key: Array,
    task,
    optimizer: InnerOptimizer,
    config: TruncatedConfig,
) -> tuple[Array, MetaParams, PESState, dict[str, Array]]:
    """One PES segment: ``(loss, grad, new_state, aux)`` (module docstring).

    ``loss`` is the mean meta-loss of the ``+`` and ``-`` runs (there is no unperturbed
    run); ``aux`` holds their mean training loss and the number of pairs restarted.
    ``key`` (typed) draws the perturbations, independent across runs and pairs.
    """
    sigma, pairs = config.es_sigma, config.es_pairs

    def one_pair(runs, acc, eps):
        delta = jax.tree.map(lambda e: sigma * e, eps)
        thetas = jax.tree.map(lambda t, d: jnp.stack([t + d, t - d]), meta_params, delta)
        new, (losses, train, done) = _pair_segment(thetas, runs, task, optimizer, config)
        diff = losses[:, 0] - losses[:, 1]
        # iterates after a restart inside the segment saw only this segment's delta
        restarted = (jnp.cumsum(done) - done) > 0
        scale = 1.0 / (2 * sigma**2 * config.segment)
        w_old = jnp.sum(jnp.where(restarted, 0.0, diff)) * scale
        w_new = jnp.sum(jnp.where(restarted, diff, 0.0)) * scale
        xi = jax.tree.map(jnp.add, acc, delta)
        grad = jax.tree.map(lambda x, d: w_old * x + w_new * d, xi, delta)
        # a restart at the last step leaves a fresh run that has seen no perturbation yet
        seen = jnp.where(new.step[0] > 0, 1.0, 0.0)
        new_acc = jax.tree.map(lambda x, d: jnp.where(jnp.any(done), seen * d, x), xi, delta)
        return grad, new, new_acc, jnp.mean(losses), jnp.mean(train), jnp.sum(done)

    def one_run(runs, acc, k):
        eps = tree_normal(k, meta_params, (pairs,))
        return jax.vmap(one_pair)(runs, acc, eps)

    keys = jax.random.split(key, config.meta_batch)
    grads, runs, acc, losses, train, resets = jax.vmap(one_run)(state.runs, state.accumulator, keys)
    grad = jax.tree.map(lambda g: jnp.mean(g, axis=(0, 1)), grads)
    aux = {"train_loss": jnp.mean(train), "resets": jnp.sum(resets)}
    return jnp.mean(losses), grad, PESState(runs=runs, accumulator=acc), aux


@dataclasses.dataclass(frozen=True)
class PES:
    """:func:`pes_gradient` as an :class:`~.estimator.Estimator`; its state is a
    :class:`PESState`."""

    name: str = "pes"

    def init(self, runs: InnerState, meta_params: MetaParams, config: TruncatedConfig):
        return init_pes(runs, meta_params, config)

    def gradient(self, meta_params, state, key, task, optimizer, config):
        return pes_gradient(meta_params, state, key, task, optimizer, config)
