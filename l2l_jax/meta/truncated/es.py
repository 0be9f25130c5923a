"""Antithetic truncated evolution strategies (Metz et al. 2019, Sec. 3.2)."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.meta.truncated.config import TruncatedConfig
from l2l_jax.meta.truncated.runs import InnerState, batched_segment, segment_loss

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


def es_gradient(
    meta_params: MetaParams,
    runs: InnerState,
    key: Array,
    task,
    optimizer: InnerOptimizer,
    config: TruncatedConfig,
) -> tuple[Array, MetaParams, InnerState, dict[str, Array]]:
    """Antithetic evolution strategies: ``(loss, grad, new_runs, aux)``.

    For each run ``b`` and pair ``j``, ``eps ~ N(0, I)`` (independent across runs and
    pairs) and, from the same run state and the same minibatches (common random numbers),

        ``g = mean_{b,j} (L_b(theta + sigma eps) - L_b(theta - sigma eps)) / (2 sigma) eps``

    an unbiased estimate of the gradient of the Gaussian-smoothed *segment* loss
    ``E L(theta + sigma eps)``, with no backward pass and no exploding Jacobian products.
    Like TBPTT it is truncated: the segment starts from the unperturbed state, so the
    effect of the meta-parameters on earlier segments is ignored. The runs advance with
    the unperturbed meta-parameters (one extra segment), whose loss is the reported
    ``loss``. ``key`` is a typed key.
    """
    loss, (new, aux) = batched_segment(meta_params, runs, task, optimizer, config)
    sigma, pairs = config.es_sigma, config.es_pairs

    def one_run(run, k):
        eps = tree_normal(k, meta_params, (pairs,))

        def pair(e):
            shift = jax.tree.map(lambda x: sigma * x, e)
            plus = jax.tree.map(jnp.add, meta_params, shift)
            minus = jax.tree.map(jnp.subtract, meta_params, shift)
            l_plus = segment_loss(plus, run, task, optimizer, config)[0]
            l_minus = segment_loss(minus, run, task, optimizer, config)[0]
            return (l_plus - l_minus) / (2 * sigma)

        weights = jax.vmap(pair)(eps)
        return jax.tree.map(lambda e: jnp.tensordot(weights, e, axes=1) / pairs, eps)

    keys = jax.random.split(key, config.meta_batch)
    grads = jax.vmap(one_run)(runs, keys)
    grad = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
    return loss, grad, new, aux


@dataclasses.dataclass(frozen=True)
class ES:
    """:func:`es_gradient` as an :class:`~.estimator.Estimator`; its state is the runs."""

    name: str = "es"

    def init(self, runs: InnerState, meta_params: MetaParams, config: TruncatedConfig):
        return runs

    def gradient(self, meta_params, state, key, task, optimizer, config):
        return es_gradient(meta_params, state, key, task, optimizer, config)
