"""Antithetic truncated evolution strategies (Metz et al. 2019, Sec. 3.2)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp

from l2l_jax import input_checks
from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.truncated.runs import InnerState, batched_segment, segment
from l2l_jax.truncated.tasks import SegmentConfig

Array = jax.Array
MetaParams = chex.ArrayTree


def tree_normal(key: Array, tree: MetaParams, prefix: tuple[int, ...]) -> MetaParams:
    """Standard normals shaped ``prefix + leaf.shape`` for every leaf of ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    noise = [
        jax.random.normal(k, prefix + jnp.shape(x), jnp.result_type(x))
        for k, x in zip(keys, leaves, strict=False)
    ]
    return jax.tree.unflatten(treedef, noise)


def perturbations(
    key: Array, meta_params: MetaParams, meta_batch: int, pairs: int, sigma: float
) -> MetaParams:
    """``sigma eps`` with ``eps ~ N(0, I)`` for every run and pair: leading axes
    ``(B, P) = (meta_batch, pairs)``; run ``b`` draws from ``split(key, B)[b]``."""
    keys = jax.random.split(key, meta_batch)
    eps = jax.vmap(lambda k: tree_normal(k, meta_params, (pairs,)))(keys)
    return jax.tree.map(lambda e: sigma * e, eps)


def antithetic(meta_params: MetaParams, delta: MetaParams) -> MetaParams:
    """``theta + delta`` and ``theta - delta`` stacked on a new last batch axis (size 2)."""
    return jax.tree.map(
        lambda t, d: jnp.stack([t + d, t - d], axis=d.ndim - t.ndim), meta_params, delta
    )


def paired(runs: InnerState, pairs: int) -> InnerState:
    """Each of the ``B`` runs copied for its ``pairs`` pairs and both signs: ``(B, P, 2)``."""
    return jax.tree.map(
        lambda x: jnp.broadcast_to(x[:, None, None], (x.shape[0], pairs, 2, *x.shape[1:])), runs
    )


def pair_segment(thetas, runs, task, optimizer, config):
    """One segment of every pair's ``+`` and ``-`` run (axes ``(B, P, 2)``; the two runs of a
    pair restart together): ``(new_runs, terms)`` with terms shaped ``(K, B, P, 2)``."""
    return segment(
        thetas,
        runs,
        task,
        optimizer,
        config,
        batch_ndim=3,
        batched_params=True,
        restart_together=True,
    )


def es_gradient(
    meta_params: MetaParams,
    runs: InnerState,
    key: Array,
    task,
    optimizer: InnerOptimizer,
    config: SegmentConfig,
    *,
    sigma: float,
    pairs: int,
) -> tuple[Array, MetaParams, InnerState, dict[str, Array]]:
    """Antithetic evolution strategies: ``(loss, grad, new_runs, aux)``.

    For each run ``b`` and each of the ``pairs`` pairs ``j``, ``eps ~ N(0, I)``
    (independent across runs and pairs) and, from the same run state and the same
    minibatches (common random numbers),

        ``g = mean_{b,j} (L_b(theta + sigma eps) - L_b(theta - sigma eps)) / (2 sigma) eps``

    an unbiased estimate of the gradient of the Gaussian-smoothed *segment* loss
    ``E L(theta + sigma eps)``, with no backward pass and no exploding Jacobian products.
    Like TBPTT it is truncated: the segment starts from the unperturbed state, so the
    effect of the meta-parameters on earlier segments is ignored. The runs advance with
    the unperturbed meta-parameters (one extra segment), whose loss is the reported
    ``loss``. ``key`` is a typed key.
    """
    loss, (new, aux) = batched_segment(meta_params, runs, task, optimizer, config)
    delta = perturbations(key, meta_params, config.meta_batch, pairs, sigma)
    thetas = antithetic(meta_params, delta)
    _, terms = pair_segment(thetas, paired(runs, pairs), task, optimizer, config)
    seg = jnp.mean(terms["meta_loss"], axis=0)  # (B, P, 2)
    weights = (seg[..., 0] - seg[..., 1]) / (2 * sigma**2 * seg[..., 0].size)
    grad = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=2), delta)
    return loss, grad, new, aux


def check_settings(owner: str, sigma: float, pairs: int) -> None:
    """``sigma > 0`` and ``pairs >= 1``, else an error naming ``owner``'s field."""
    input_checks.positive(f"{owner}.sigma (the perturbations' standard deviation)", sigma)
    input_checks.positive_int(f"{owner}.pairs (antithetic pairs per run)", pairs)


@dataclasses.dataclass(frozen=True)
class ES:
    """:func:`es_gradient` as an :class:`~.estimator.Estimator`; its state is the runs.

    Attributes:
      sigma: standard deviation of the perturbations (for a hyperparameter with a domain,
        of its ``u = log theta`` or ``logit theta``, :mod:`.domains`: a relative size).
      pairs: antithetic pairs per run and meta-step (``B * pairs`` pairs in all).
    """

    name: ClassVar[str] = "es"
    sigma: float = 0.01
    pairs: int = 8

    def __post_init__(self) -> None:
        check_settings(type(self).__name__, self.sigma, self.pairs)

    def init(self, runs: InnerState, meta_params: MetaParams, config: SegmentConfig):
        return runs

    def gradient(self, meta_params, state, key, task, optimizer, config):
        return es_gradient(
            meta_params, state, key, task, optimizer, config, sigma=self.sigma, pairs=self.pairs
        )
