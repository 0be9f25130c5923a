"""One meta-step: estimate, skip if non-finite, update (state: :class:`~.state.TruncatedState`).

:func:`meta_step` is the jitted unit of work (:func:`make_meta_step`); the estimator object
:attr:`TruncatedConfig.estimator` (:class:`~.estimator.Estimator`) supplies the gradient.
A learned optimizer comes in through its own ``as_inner_optimizer()``
(:func:`.tasks.as_inner`): nothing here knows learned optimizers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from l2l_jax import xla
from l2l_jax.tasks.family import as_family, example_task
from l2l_jax.truncated import domains, sharding, tasks
from l2l_jax.truncated.config import TruncatedConfig, default_meta_optimizer
from l2l_jax.truncated.runs import make_init_runs
from l2l_jax.truncated.state import TruncatedState

Array = jax.Array
MetaParams = chex.ArrayTree

# apply_if_finite gives up after this many consecutive bad steps; we never want it to.
_NEVER = np.iinfo(np.int32).max


def _wrap(meta_optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    return optax.apply_if_finite(meta_optimizer, max_consecutive_errors=_NEVER)


def init_state(
    key: Array,
    task,
    optimizer,
    config: TruncatedConfig,
    meta_params: MetaParams | None = None,
    meta_optimizer: optax.GradientTransformation | None = None,
) -> TruncatedState:
    """The initial :class:`TruncatedState` from one typed PRNG key.

    ``meta_params`` defaults to ``optimizer.init_meta_params(k)`` for a learned optimizer
    (required for an :class:`~l2l_jax.inner.InnerOptimizer`: its hyperparameters). Run
    ``i`` gets key ``split(k_runs, B)[i]`` and starts at inner step ``floor(i T / B)`` with
    ``config.stagger``; the estimator builds its state from these runs. Named
    hyperparameters (:mod:`.domains`) must start inside their domains (a ``ValueError``
    otherwise); the meta-optimizer's and the estimator's states are built for their
    unconstrained values.
    """
    inner = tasks.as_inner(optimizer)
    family = as_family(task)
    tasks.check_task(example_task(family), inner, config)
    k_meta, k_runs, k_es = jax.random.split(key, 3)
    if meta_params is None:
        if not hasattr(optimizer, "init_meta_params"):
            raise ValueError(
                f"pass meta_params (the hyperparameters of inner.{inner.name} to meta-learn)."
            )
        meta_params = optimizer.init_meta_params(k_meta)
    domains.check(meta_params, inner)
    # strongly typed, as every later step returns them (a weak type would compile twice)
    meta_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(x)), meta_params)
    tx = _wrap(meta_optimizer or default_meta_optimizer(config))
    b, horizon = config.meta_batch, config.horizon
    starts = (np.arange(b) * horizon) // b if config.stagger else np.zeros(b, np.int64)
    run_data = jax.random.key_data(jax.random.split(k_runs, b))
    init_runs = xla.cached(("truncated.init", optimizer), lambda: make_init_runs(inner))
    runs = init_runs(run_data, jnp.asarray(starts, jnp.int32), family, meta_params)
    u = domains.to_unconstrained(meta_params, inner)  # what the meta-optimizer updates
    return TruncatedState(
        meta_params=meta_params,
        opt_state=tx.init(u),
        inner=config.estimator.init(runs, u, config),
        key=jax.random.key_data(k_es),
        step=jnp.zeros((), jnp.int32),
        nonfinite_count=jnp.zeros((), jnp.int32),
    )


def estimate(
    meta_params: MetaParams,
    runs: Any,
    key: Array | None,
    task,
    optimizer,
    config: TruncatedConfig,
) -> tuple[MetaParams, tuple[Array, MetaParams, Any, dict[str, Array]]]:
    """The estimator's meta-loss and meta-gradient of one segment, and the runs advanced.

    Named hyperparameters are estimated, perturbed and updated as their unconstrained ``u``
    (:mod:`.domains`), so the gradient is with respect to ``u``, returned first:
    ``(u, (loss, grad, runs, aux))``. ``runs`` is the estimator's state
    (:attr:`TruncatedState.inner`); ``key`` may be ``None`` for a deterministic estimator.
    """
    inner = tasks.as_inner(optimizer)
    u = domains.to_unconstrained(meta_params, inner)
    opt_u = domains.reparameterize(inner, meta_params)
    return u, config.estimator.gradient(u, runs, key, as_family(task), opt_u, config)


def meta_step(
    state: TruncatedState,
    task,
    optimizer,
    config: TruncatedConfig,
    meta_optimizer: optax.GradientTransformation | None = None,
) -> tuple[TruncatedState, dict[str, Array]]:
    """One meta-step: estimate the segment's meta-gradient, update, advance all runs.

    A step whose meta-loss or any meta-gradient entry is NaN/inf is skipped (the update is
    zero and the meta-optimizer state does not advance, :func:`optax.apply_if_finite`, as
    in :func:`l2l_jax.metagrad.minimize`) and counted; the runs still advance. Metrics:
    ``meta_loss``, ``grad_norm`` (before clipping), ``nonfinite``, ``train_loss`` (mean
    inner minibatch loss), ``resets`` (runs re-initialized in the segment).
    Pure; :func:`make_meta_step` jits it as ``step(state, task)``.

    Hyperparameters named in :data:`l2l_jax.input_checks.HYPERPARAMETER_DOMAINS` stay in
    their domains: the estimator and the meta-optimizer work on their unconstrained
    ``u`` (``log`` of a positive value, ``logit`` of a decay, :mod:`.domains`), and the
    state keeps ``theta``. Other meta-parameters (a learned optimizer's weights) are
    estimated and updated as they are.
    """
    inner = tasks.as_inner(optimizer)
    tx = _wrap(meta_optimizer or default_meta_optimizer(config))
    key, k_es = jax.random.split(jax.random.wrap_key_data(state.key))
    u, (loss, grad, runs, aux) = estimate(state.meta_params, state.inner, k_es, task, inner, config)
    # A non-finite value poisons the step too (as in metagrad.minimize).
    checked = jax.tree.map(lambda g: jnp.where(jnp.isfinite(loss), g, jnp.nan), grad)
    updates, opt_state = tx.update(checked, state.opt_state, u)
    nonfinite = ~opt_state.last_finite
    moved = domains.from_unconstrained(optax.apply_updates(u, updates), inner)
    new = TruncatedState(
        meta_params=domains.keep_where(nonfinite, state.meta_params, moved, inner),
        opt_state=opt_state,
        inner=runs,
        key=jax.random.key_data(key),
        step=state.step + 1,
        nonfinite_count=state.nonfinite_count + nonfinite.astype(jnp.int32),
    )
    metrics = {
        "meta_loss": loss,
        "grad_norm": optax.tree.norm(grad),
        "nonfinite": nonfinite,
        **aux,
    }
    return new, metrics


def make_meta_step(
    optimizer,
    config: TruncatedConfig,
    meta_optimizer: optax.GradientTransformation | None = None,
    mesh: Mesh | None = None,
) -> Callable[[TruncatedState, Any], tuple[TruncatedState, dict[str, Array]]]:
    """``jax.jit`` of :func:`meta_step` as ``step(state, task)`` (the task is traced, so
    its data are arguments rather than constants baked into the compiled program).

    With a 1-d ``mesh`` (:func:`~.sharding.meta_batch_mesh`), the step is compiled for
    the state laid out by :func:`~.sharding.state_sharding` (the estimator's runs split
    over the devices along the meta-batch axis, everything else replicated) and keeps
    that layout for the new state; the task is replicated. Inputs placed otherwise are
    moved first (free when they already are).
    """
    inner = tasks.as_inner(optimizer)
    tx = meta_optimizer or default_meta_optimizer(config)
    if mesh is not None:
        sharding.check_mesh(mesh, config)

    def build():
        step = lambda state, task: meta_step(state, task, inner, config, tx)
        if mesh is None:
            return xla.jit(step)
        spec, rep = sharding.state_sharding(mesh), sharding.replicated(mesh)
        jitted = xla.jit(step, in_shardings=(spec, rep), out_shardings=(spec, rep))

        def sharded_step(state, task):
            return jitted(jax.device_put(state, spec), jax.device_put(task, rep))

        return sharded_step

    return xla.cached(("truncated.step", optimizer, config, meta_optimizer, mesh), build)
