"""One inner run of truncated meta-training: its state, one inner step with the restart at
the horizon, and a segment of ``K`` steps in one :func:`jax.lax.scan`.

The estimators (:mod:`.tbptt`, :mod:`.es`, :mod:`.pes`) differentiate or perturb
:func:`segment_loss`; everything here is pure and works under ``jit``/``vmap``.

``family`` is a :class:`~l2l_jax.tasks.family.TaskFamily` (a single task is the family of
one, :func:`~l2l_jax.tasks.family.as_family`): every run holds its own draw, made when the
run starts and again at every restart, so the runs of a meta-batch train on different
problems (Wang et al. 2021, Sec. 5: a set of meta-training problems).
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.inner.unroll import checkpointed_scan, remat_segment, train_step
from l2l_jax.tasks.family import as_family
from l2l_jax.truncated import tasks

Array = jax.Array
MetaParams = chex.ArrayTree


@chex.dataclass(frozen=True)
class InnerState:
    """One inner run (with a leading axis ``B`` for the meta-batch).

    Attributes:
      params: the task's parameters ``w_t``.
      opt_state: the inner (learned) optimizer's state.
      step: inner step ``t`` of this run, in ``[0, T)`` (int32).
      key: raw ``uint32[2]`` PRNG key data of this run: its initialization, task draw,
        minibatch order and meta-loss minibatches, and the key of the next run
        (:func:`run_keys`).
      task: the run's draw from the task family (``{}`` for a single task).
    """

    params: chex.ArrayTree
    opt_state: chex.ArrayTree
    step: Array
    key: Array
    task: chex.ArrayTree


def run_keys(key: Array) -> tuple[Array, Array, Array, Array]:
    """``(init, data, eval, next)`` keys of the run with raw key data ``key``.

    The minibatch of inner step ``t`` is ``randint(fold_in(data, t), (batch,), 0, n)``,
    the meta-loss minibatch of the iterate after step ``t`` is drawn the same way from
    ``fold_in(eval, t)``, and ``next`` (raw key data) seeds the run that follows. The
    run's task is ``family.sample(fold_in(init, 1))`` (:func:`fresh_run`).
    """
    k_init, k_data, k_eval, k_next = jax.random.split(jax.random.wrap_key_data(key), 4)
    return k_init, k_data, k_eval, jax.random.key_data(k_next)


def fresh_run(
    key: Array, family, optimizer: InnerOptimizer, meta_params: MetaParams, step: Array | int = 0
) -> InnerState:
    """A new run with key data ``key``: its task drawn from ``family``, ``w_0`` from its
    init key, a fresh optimizer state.

    Nothing here depends on the meta-parameters (gradients are stopped).
    """
    family = as_family(family)
    k_init = run_keys(key)[0]
    draw = family.sample(jax.random.fold_in(k_init, 1))
    params = family.task(draw).init_params(k_init)
    opt_state = optimizer.init(params, meta_params)
    fresh = InnerState(
        params=params,
        opt_state=opt_state,
        step=jnp.asarray(step, jnp.int32),
        key=key,
        task=draw,
    )
    return jax.lax.stop_gradient(fresh)


def all_finite(tree) -> Array:
    """True when every entry of every leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def tree_where(pred: Array, on_true, on_false):
    """``jnp.where(pred, a, b)`` leaf by leaf."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def advance(
    meta_params: MetaParams,
    run: InnerState,
    family,
    optimizer: InnerOptimizer,
    config: tasks.SegmentConfig,
) -> tuple[InnerState, dict[str, Array], Array]:
    """One inner step of one run, before any restart: ``(advanced, terms, done)``.

    ``terms`` holds ``"meta_loss"`` (the loss of ``w_{t+1}``, tbt or tbv) and
    ``"train_loss"`` (the minibatch loss of ``w_t``); ``done`` says the run must restart:
    ``t + 1 == T``, or (with ``reset_nonfinite``) the new parameters are not finite.
    """
    _, k_data, k_eval, _ = run_keys(run.key)
    task = as_family(family).task(run.task)
    step = train_step(task, optimizer, meta_params, tasks.batch_size(config, optimizer))
    carry = (run.params, run.opt_state)
    (params, opt_state), loss = step(carry, jax.random.fold_in(k_data, run.step))
    term = tasks.eval_loss(task, params, jax.random.fold_in(k_eval, run.step), config)
    step = run.step + 1
    done = step >= config.horizon
    if config.reset_nonfinite:
        done = done | ~all_finite(params)
    advanced = InnerState(params=params, opt_state=opt_state, step=step, key=run.key, task=run.task)
    return advanced, {"meta_loss": term, "train_loss": loss}, done


def restart_where(
    done: Array, run: InnerState, family, optimizer: InnerOptimizer, meta_params: MetaParams
) -> InnerState:
    """``run``, replaced by :func:`fresh_run` of its ``next`` key (a new task draw, a new
    initialization) where ``done``."""
    fresh = fresh_run(run_keys(run.key)[3], family, optimizer, meta_params)
    return tree_where(done, fresh, run)


def inner_step(
    meta_params: MetaParams,
    run: InnerState,
    family,
    optimizer: InnerOptimizer,
    config: tasks.SegmentConfig,
) -> tuple[InnerState, dict[str, Array]]:
    """One inner step of one run, its meta-loss term, and the reset at the horizon.

    Returns the new run and ``{"meta_loss": loss of w_{t+1} (tbt/tbv), "train_loss":
    minibatch loss of w_t, "reset": whether the run was re-initialized}``
    (:func:`advance`, then :func:`restart_where`).
    """
    advanced, terms, done = advance(meta_params, run, family, optimizer, config)
    new = restart_where(done, advanced, family, optimizer, meta_params)
    return new, {**terms, "reset": done}


def segment(
    meta_params: MetaParams,
    runs: InnerState,
    family,
    optimizer: InnerOptimizer,
    config: tasks.SegmentConfig,
    *,
    batch_ndim: int = 0,
    batched_params: bool = False,
    restart_together: bool = False,
) -> tuple[InnerState, dict[str, Array]]:
    """``K`` inner steps of a batch of runs in one ``lax.scan``: ``(new_runs, terms)``.

    ``runs`` has ``batch_ndim`` leading batch axes (``0``: one run); ``meta_params`` is
    shared by all runs, or has the same leading axes when ``batched_params`` (ES/PES
    perturbations). ``terms`` holds ``meta_loss``, ``train_loss`` and ``reset`` of every
    step, shaped ``(K, *batch)``. With ``restart_together``, the runs along the last batch
    axis (a pair's ``+`` and ``-`` runs) restart together when any of them must.

    The restart (:func:`restart_where`) sits under a :func:`jax.lax.cond` on "any run of
    the batch restarts now", outside the ``vmap``, so the fresh initializations (a random
    draw of every parameter) are computed only at the few steps where a run reaches the
    horizon, not at every step; the values are those of :func:`inner_step` run by run.
    """
    family = as_family(family)
    step, restart = advance, restart_where
    for _ in range(batch_ndim):
        theta_axis = 0 if batched_params else None
        step = jax.vmap(step, in_axes=(theta_axis, 0, None, None, None))
        restart = jax.vmap(restart, in_axes=(0, 0, None, None, theta_axis))

    def body(carry, _):
        advanced, terms, done = step(meta_params, carry, family, optimizer, config)
        if restart_together:
            done = jnp.broadcast_to(jnp.any(done, axis=-1, keepdims=True), done.shape)
        new = jax.lax.cond(
            jnp.any(done),
            lambda: restart(done, advanced, family, optimizer, meta_params),
            lambda: advanced,
        )
        return new, {**terms, "reset": done}

    return checkpointed_scan(
        body, runs, None, config.segment, remat_segment(config.remat, config.segment)
    )


def segment_loss(
    meta_params: MetaParams,
    run: InnerState,
    family,
    optimizer: InnerOptimizer,
    config: tasks.SegmentConfig,
) -> tuple[Array, tuple[InnerState, dict[str, Array]]]:
    """``K`` inner steps of one run: ``(meta_loss, (new_run, aux))``.

    The meta-loss is the mean of the ``K`` terms of :func:`inner_step` (the loss of the
    iterates ``w_{t+1}, ..., w_{t+K}``); ``aux`` holds the mean minibatch training loss
    and the number of re-initializations in the segment.
    """
    new, out = segment(meta_params, run, family, optimizer, config)
    aux = {"train_loss": jnp.mean(out["train_loss"]), "resets": jnp.sum(out["reset"])}
    return jnp.mean(out["meta_loss"]), (new, aux)


def batched_segment(meta_params, runs, family, optimizer, config):
    """The ``B`` runs of the meta-batch (one leading axis) for one segment with shared
    meta-parameters: ``(mean loss, (new runs, aux))``, the loss the mean over runs of
    each run's :func:`segment_loss`."""
    new, out = segment(meta_params, runs, family, optimizer, config, batch_ndim=1)
    aux = {
        "train_loss": jnp.mean(jnp.mean(out["train_loss"], axis=0)),
        "resets": jnp.sum(out["reset"]),
    }
    return jnp.mean(jnp.mean(out["meta_loss"], axis=0)), (new, aux)


def make_init_runs(optimizer: InnerOptimizer) -> Callable:
    """Jitted ``(keys, starts, family, meta_params) -> InnerState`` with a leading axis."""

    def init_runs(keys, starts, family, meta_params):
        one = lambda k, t: fresh_run(k, family, optimizer, meta_params, t)
        return jax.vmap(one)(keys, starts)

    return jax.jit(init_runs)
