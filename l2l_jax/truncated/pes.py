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
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp

from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.truncated.es import antithetic, check_settings, pair_segment, paired, perturbations
from l2l_jax.truncated.runs import InnerState
from l2l_jax.truncated.tasks import SegmentConfig

Array = jax.Array
MetaParams = chex.ArrayTree


@chex.dataclass(frozen=True)
class PESState:
    """The persistent part of PES (leading axes ``(B, P)``: run, pair).

    Attributes:
      runs: an :class:`~l2l_jax.truncated.runs.InnerState` with axes ``(B, P, 2)``:
        each pair's ``+`` run (index 0) and ``-`` run (index 1). Both start from their
        run's fresh state and restart together (same key, same step).
      accumulator: like the meta-parameters with leading axes ``(B, P)``: ``xi``, the sum
        of the ``+`` perturbations ``sigma eps`` the pair's current runs have stepped
        with; reset to the new perturbation when the runs restart.
    """

    runs: InnerState
    accumulator: MetaParams


def init_pes(
    runs: InnerState, meta_params: MetaParams, config: SegmentConfig, *, pairs: int
) -> PESState:
    """Each of the ``pairs`` pairs of run ``b`` starts as two copies of ``runs[b]``, with
    ``xi = 0``."""
    acc = jax.tree.map(
        lambda x: jnp.zeros((config.meta_batch, pairs, *jnp.shape(x)), x.dtype),
        meta_params,
    )
    return PESState(runs=paired(runs, pairs), accumulator=acc)


def pes_gradient(
    meta_params: MetaParams,
    state: PESState,
    key: Array,
    task,
    optimizer: InnerOptimizer,
    config: SegmentConfig,
    *,
    sigma: float,
) -> tuple[Array, MetaParams, PESState, dict[str, Array]]:
    """One PES segment: ``(loss, grad, new_state, aux)`` (module docstring), with
    perturbations of standard deviation ``sigma`` (the number of pairs is the state's).

    ``loss`` is the mean meta-loss of the ``+`` and ``-`` runs (there is no unperturbed
    run); ``aux`` holds their mean training loss and the number of pairs restarted.
    ``key`` (typed) draws the perturbations, independent across runs and pairs.
    """
    pairs = state.runs.step.shape[1]  # (B, P, 2)
    delta = perturbations(key, meta_params, config.meta_batch, pairs, sigma)  # (B, P, ...)
    thetas = antithetic(meta_params, delta)
    runs, terms = pair_segment(thetas, state.runs, task, optimizer, config)
    losses, done = terms["meta_loss"], terms["reset"][..., 0]  # (K, B, P, 2), (K, B, P)
    diff = losses[..., 0] - losses[..., 1]
    # the iterates after a restart inside the segment saw only this segment's delta
    restarted = (jnp.cumsum(done, axis=0) - done) > 0
    scale = 1.0 / (2 * sigma**2 * config.segment * diff[0].size)
    w_old = jnp.sum(jnp.where(restarted, 0.0, diff), axis=0) * scale  # (B, P)
    w_new = jnp.sum(jnp.where(restarted, diff, 0.0), axis=0) * scale
    xi = jax.tree.map(jnp.add, state.accumulator, delta)
    grad = jax.tree.map(
        lambda x, d: jnp.tensordot(w_old, x, axes=2) + jnp.tensordot(w_new, d, axes=2), xi, delta
    )
    # after a restart, xi is the delta the new runs stepped with, or 0 if they have not
    # stepped yet (a restart at the segment's last step)
    any_done = jnp.any(done, axis=0)
    seen = runs.step[..., 0] > 0

    def next_acc(x, d):
        expand = lambda a: a.reshape(a.shape + (1,) * (d.ndim - a.ndim))
        return jnp.where(expand(any_done), jnp.where(expand(seen), d, 0.0), x)

    acc = jax.tree.map(next_acc, xi, delta)
    aux = {"train_loss": jnp.mean(terms["train_loss"]), "resets": jnp.sum(done)}
    return jnp.mean(losses), grad, PESState(runs=runs, accumulator=acc), aux


@dataclasses.dataclass(frozen=True)
class PES:
    """:func:`pes_gradient` as an :class:`~.estimator.Estimator`; its state is a
    :class:`PESState`.

    Attributes:
      sigma: standard deviation of the perturbations (for a hyperparameter with a domain,
        of its ``u = log theta`` or ``logit theta``, :mod:`.domains`: a relative size).
      pairs: antithetic pairs per run (``B * pairs`` pairs in all); each pair keeps its
        own perturbed runs across meta-steps.
    """

    name: ClassVar[str] = "pes"
    sigma: float = 0.01
    pairs: int = 8

    def __post_init__(self) -> None:
        check_settings(type(self).__name__, self.sigma, self.pairs)

    def init(self, runs: InnerState, meta_params: MetaParams, config: SegmentConfig):
        return init_pes(runs, meta_params, config, pairs=self.pairs)

    def gradient(self, meta_params, state, key, task, optimizer, config):
        return pes_gradient(meta_params, state, key, task, optimizer, config, sigma=self.sigma)
