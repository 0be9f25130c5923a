"""Meta-training a learned optimizer with truncated unrolls.

The training loop of Metz et al. (2019, "Understanding and correcting pathologies in the
training of learned optimizers", Sec. 3-4), as used by Wang et al. (2021, Sec. 5) for the
MNIST learned optimizer: each of ``B`` inner runs (the *meta-batch*) trains a task for a
horizon of ``T`` inner steps; one *meta-step* advances every run by a *segment* of ``K``
steps, estimates the gradient of the segment's meta-loss with respect to the
meta-parameters, and applies one meta-optimizer update. A run that reaches ``T`` starts
over from a new initialization with a new data order.

Pieces (all pure; :func:`meta_step` is the jitted unit of work):

* :class:`InnerState`: one run's ``(params, opt_state, step, key)``; the meta-batch is the
  same pytree with a leading axis ``B``.
* :func:`segment_loss`: ``K`` inner steps in one :func:`jax.lax.scan` and their meta-loss,
  for one run (``vmap``-ed over the meta-batch).
* :func:`tbptt_gradient`: truncated backpropagation through the segment (the state at the
  segment start is a constant).
* :func:`es_gradient`: antithetic evolution strategies (no backward pass).
* :func:`meta_step`, :func:`meta_train`: the update with non-finite steps skipped and
  counted, and the Python loop with progress bar, JSONL metrics and orbax checkpoints that
  resume bit-exactly.
* :func:`meta_batch_mesh`, :func:`shard_state`: opt-in data parallelism over devices with
  ``jax.sharding``: the meta-batch axis of the runs is split over a 1-d mesh, the
  meta-parameters are replicated, and XLA turns the mean over the meta-batch into a
  cross-device reduction (``meta_train(..., mesh=meta_batch_mesh())``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from l2l_jax import validation
from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.inner.unroll import checkpointed_scan, gradient_fn, remat_segment

Array = jax.Array
MetaParams = chex.ArrayTree

OBJECTIVES = ("tbt", "tbv")
ESTIMATORS = ("tbptt", "es")

# apply_if_finite gives up after this many consecutive bad steps; we never want it to.
_NEVER = np.iinfo(np.int32).max
_STATE, _CONFIG = "state", "config"


# -- configuration -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TruncatedConfig:
    """Settings of truncated meta-training (static: changing one recompiles).

    Attributes:
      horizon: ``T``, inner steps per inner run; a run is re-initialized when it reaches T.
      segment: ``K``, inner steps per meta-step (the truncation length).
      meta_batch: ``B``, inner runs trained in parallel (``vmap``); they differ in
        initialization and data order.
      batch_size: inner minibatch size; ``None`` takes the optimizer's ``batch_size``, and
        full-batch gradients (``task.loss``) when that is ``None`` too.
      objective: ``"tbt"`` (train-by-train: training loss of the iterates) or ``"tbv"``
        (train-by-validation: validation loss of the iterates).
      eval_batch_size: the meta-loss of each iterate is the loss on a fresh minibatch of
        this size (training rows for tbt, validation rows for tbv), drawn independently of
        the minibatch the inner step used; ``None`` uses the full training
        (``task.loss``) or validation (``task.valid_loss``) loss.
      estimator: ``"tbptt"`` (truncated backpropagation) or ``"es"`` (antithetic ES).
      es_sigma: standard deviation of the ES perturbations.
      es_pairs: antithetic pairs per run and meta-step (``B * es_pairs`` pairs in all).
      meta_lr: learning rate of the default meta-optimizer (Adam).
      clip: global-norm clip of the meta-gradient in the default meta-optimizer.
      stagger: start run ``i`` at inner step ``floor(i T / B)`` (with fresh parameters, so
        its first run is shorter), which spreads the re-initializations over time and
        decorrelates the runs; ``False`` starts them all at 0.
      reset_nonfinite: also re-initialize a run whose parameters became NaN/inf (else it
        would stay non-finite forever).
      remat: bounded memory for ``estimator="tbptt"`` with long segments: ``None`` (off),
        or a length ``s`` for which the ``K``-step scan runs in segments of ``s`` steps
        under :func:`jax.checkpoint` (memory ~ ``K / s + s`` steps' residuals instead of
        ``K``, about one extra forward pass of time); ``True`` is ``s = ceil(sqrt(K))``.
        The gradient agrees with ``None`` up to float rounding.
    """

    horizon: int = 200
    segment: int = 20
    meta_batch: int = 8
    batch_size: int | None = None
    objective: str = "tbt"
    eval_batch_size: int | None = 32
    estimator: str = "tbptt"
    es_sigma: float = 0.01
    es_pairs: int = 8
    meta_lr: float = 1e-3
    clip: float = 1.0
    stagger: bool = True
    reset_nonfinite: bool = True
    remat: int | bool | None = None

    def __post_init__(self) -> None:
        for name in ("horizon", "segment", "meta_batch", "es_pairs"):
            validation.positive_int(name, getattr(self, name))
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) is not None:
                validation.positive_int(name, getattr(self, name))
        for name in ("es_sigma", "meta_lr", "clip"):
            validation.positive(name, getattr(self, name))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}.")
        remat_segment(self.remat, self.segment)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (stored in checkpoints and compared on resume)."""
        return dataclasses.asdict(self)


def default_meta_optimizer(config: TruncatedConfig) -> optax.GradientTransformation:
    """``optax.chain(clip_by_global_norm(config.clip), adam(config.meta_lr))``.

    (The paper's own code used RMSProp with learning rate ``1e-2`` and clipping at
    ``1e4``: ``optax.chain(optax.clip_by_global_norm(1e4), optax.rmsprop(1e-2))``.)
    """
    return optax.chain(optax.clip_by_global_norm(config.clip), optax.adam(config.meta_lr))


# -- states --------------------------------------------------------------------------------


@chex.dataclass(frozen=True)
class InnerState:
    """One inner run (with a leading axis ``B`` for the meta-batch).

    Attributes:
      params: the task's parameters ``w_t``.
      opt_state: the inner (learned) optimizer's state.
      step: inner step ``t`` of this run, in ``[0, T)`` (int32).
      key: raw ``uint32[2]`` PRNG key data of this run: its initialization, minibatch
        order and meta-loss minibatches, and the key of the next run (:func:`run_keys`).
    """

    params: chex.ArrayTree
    opt_state: chex.ArrayTree
    step: Array
    key: Array


@chex.dataclass(frozen=True)
class TruncatedState:
    """Everything meta-training needs to continue exactly (what checkpoints hold).

    Attributes:
      meta_params: the learned optimizer's weights (or an inner optimizer's hparams).
      opt_state: the meta-optimizer's state (wrapped in ``optax.apply_if_finite``).
      inner: the ``B`` inner runs, an :class:`InnerState` with leading axis ``B``.
      key: raw ``uint32[2]`` key data for the ES perturbations of the next meta-step.
      step: meta-steps done so far (int32).
      nonfinite_count: meta-steps skipped because the meta-loss or meta-gradient was
        NaN/inf (int32).
    """

    meta_params: MetaParams
    opt_state: chex.ArrayTree
    inner: InnerState
    key: Array
    step: Array
    nonfinite_count: Array


# -- the task protocol -------------------------------------------------------------------


def as_inner_optimizer(optimizer) -> InnerOptimizer:
    """An :class:`~l2l_jax.inner.InnerOptimizer` (as is) or a learned optimizer
    (:class:`~l2l_jax.learned.MLPLOpt` or :class:`~l2l_jax.learned.nominal.NominalLOpt`,
    adapted).

    For a learned optimizer the hyperparameters are its meta-parameters
    (:func:`l2l_jax.learned.inner_optimizer`, named ``"mlp_lopt"`` or ``"nominal_lopt"``);
    any other inner optimizer meta-learns its hyperparameters (e.g. a step size) with the
    same machinery.
    """
    if isinstance(optimizer, InnerOptimizer):
        return optimizer
    if hasattr(optimizer, "init_meta_params") and hasattr(optimizer, "update"):
        from l2l_jax.learned import inner_optimizer

        return inner_optimizer(optimizer)
    raise TypeError(
        "optimizer must be a learned optimizer (learned.MLPLOpt, learned.NominalLOpt) or an "
        "inner.InnerOptimizer, got "
        f"{type(optimizer).__name__}."
    )


def init_task_params(task, key: Array) -> chex.ArrayTree:
    """``task.init_params(key)``, or ``task.init_params()`` for tasks without a key argument.

    (Such tasks, e.g. :class:`~l2l_jax.tasks.Quadratic`, restart from the same point; the
    runs then differ in data order only.)
    """
    try:
        takes_key = bool(inspect.signature(task.init_params).parameters)
    except (TypeError, ValueError):
        takes_key = True
    return task.init_params(key) if takes_key else task.init_params()


def valid_batch_loss(task, params: chex.ArrayTree, indices: Array) -> Array:
    """Loss on the validation rows ``indices``: ``task.valid_batch_loss`` if the task has
    one, else (for :class:`~l2l_jax.tasks.MnistMLP`) the cross-entropy on
    ``task.valid_images[indices]``."""
    if hasattr(task, "valid_batch_loss"):
        return task.valid_batch_loss(params, indices)
    if hasattr(task, "valid_images") and hasattr(task, "valid_labels"):
        from l2l_jax.tasks.mnist import cross_entropy

        return cross_entropy(params, task.valid_images[indices], task.valid_labels[indices])
    raise TypeError(
        f"objective='tbv' with eval_batch_size needs task.valid_batch_loss(params, indices) "
        f"or validation arrays; {type(task).__name__} has neither. Use eval_batch_size=None "
        "(task.valid_loss)."
    )


def _num_valid(task) -> int:
    n = getattr(task, "num_valid", None)
    if n is None:
        raise TypeError(f"objective='tbv' needs task.num_valid; {type(task).__name__} has none.")
    return int(n)


def _batch_size(config: TruncatedConfig, optimizer: InnerOptimizer) -> int | None:
    if config.batch_size is None:
        return optimizer.batch_size
    if optimizer.batch_size not in (None, config.batch_size):
        raise ValueError(
            f"config.batch_size = {config.batch_size} but the optimizer samples "
            f"batch_size = {optimizer.batch_size}; set one of them (or make them equal)."
        )
    return config.batch_size


def check_task(task, optimizer: InnerOptimizer, config: TruncatedConfig) -> None:
    """Fail early (outside ``jit``) when ``task`` lacks what ``config`` uses."""
    if getattr(task, "batch_shape", ()):
        raise ValueError(
            f"truncated meta-training shares one task across the meta-batch, got a batch "
            f"{task!r}; the runs already differ in initialization and data order."
        )
    needs_examples = _batch_size(config, optimizer) is not None or (
        config.objective == "tbt" and config.eval_batch_size is not None
    )
    if needs_examples and not getattr(task, "num_examples", None):
        raise ValueError(f"minibatches need task.num_examples > 0; {task!r} has none.")
    if config.objective == "tbv":
        if _num_valid(task) == 0:
            raise ValueError(
                "objective='tbv' needs validation data, but the task has none: build it "
                "with validation rows (e.g. MnistMLP.from_data(..., n_valid=N))."
            )


# -- one inner run ---------------------------------------------------------------------------


def run_keys(key: Array) -> tuple[Array, Array, Array, Array]:
    """``(init, data, eval, next)`` keys of the run with raw key data ``key``.

    The minibatch of inner step ``t`` is ``randint(fold_in(data, t), (batch,), 0, n)``,
    the meta-loss minibatch of the iterate after step ``t`` is drawn the same way from
    ``fold_in(eval, t)``, and ``next`` (raw key data) seeds the run that follows.
    """
    k_init, k_data, k_eval, k_next = jax.random.split(jax.random.wrap_key_data(key), 4)
    return k_init, k_data, k_eval, jax.random.key_data(k_next)


def fresh_run(
    key: Array, task, optimizer: InnerOptimizer, meta_params: MetaParams, step: Array | int = 0
) -> InnerState:
    """A new run with key data ``key``: ``w_0`` from its init key, a fresh optimizer state.

    Nothing here depends on the meta-parameters (gradients are stopped).
    """
    k_init = run_keys(key)[0]
    params = init_task_params(task, k_init)
    opt_state = optimizer.init(params, meta_params)
    fresh = InnerState(
        params=params, opt_state=opt_state, step=jnp.asarray(step, jnp.int32), key=key
    )
    return jax.lax.stop_gradient(fresh)


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _where(pred: Array, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _eval_loss(task, params, key: Array, config: TruncatedConfig) -> Array:
    """The meta-loss term of one iterate (see :attr:`TruncatedConfig.eval_batch_size`)."""
    size = config.eval_batch_size
    if config.objective == "tbt":
        if size is None:
            return task.loss(params)
        return task.batch_loss(params, jax.random.randint(key, (size,), 0, task.num_examples))
    if size is None:
        return task.valid_loss(params)
    idx = jax.random.randint(key, (size,), 0, _num_valid(task))
    return valid_batch_loss(task, params, idx)


def inner_step(
    meta_params: MetaParams,
    run: InnerState,
    task,
    optimizer: InnerOptimizer,
    config: TruncatedConfig,
) -> tuple[InnerState, dict[str, Array]]:
    """One inner step of one run, its meta-loss term, and the reset at the horizon.

    Returns the new run and ``{"meta_loss": loss of w_{t+1} (tbt/tbv), "train_loss":
    minibatch loss of w_t, "reset": whether the run was re-initialized}``. When
    ``t + 1 == T`` (or, with ``reset_nonfinite``, the parameters are not finite) the run
    is replaced by :func:`fresh_run` of its ``next`` key, with ``jnp.where`` on the pytree.
    """
    _, k_data, k_eval, k_next = run_keys(run.key)
    size = _batch_size(config, optimizer)
    grad_fn = gradient_fn(task, size)
    loss, grads = grad_fn(run.params, jax.random.fold_in(k_data, run.step))
    params, opt_state = optimizer.update(grads, run.opt_state, run.params, meta_params)
    term = _eval_loss(task, params, jax.random.fold_in(k_eval, run.step), config)
    step = run.step + 1
    done = step >= config.horizon
    if config.reset_nonfinite:
        done = done | ~_all_finite(params)
    advanced = InnerState(params=params, opt_state=opt_state, step=step, key=run.key)
    new = _where(done, fresh_run(k_next, task, optimizer, meta_params), advanced)
    return new, {"meta_loss": term, "train_loss": loss, "reset": done}


def segment_loss(
    meta_params: MetaParams,
    run: InnerState,
    task,
    optimizer: InnerOptimizer,
    config: TruncatedConfig,
) -> tuple[Array, tuple[InnerState, dict[str, Array]]]:
    """``K`` inner steps of one run in a ``lax.scan``: ``(meta_loss, (new_run, aux))``.

    The meta-loss is the mean of the ``K`` terms of :func:`inner_step` (the loss of the
    iterates ``w_{t+1}, ..., w_{t+K}``); ``aux`` holds the mean minibatch training loss
    and the number of re-initializations in the segment.
    """

    def body(carry, _):
        return inner_step(meta_params, carry, task, optimizer, config)

    segment = remat_segment(config.remat, config.segment)
    new, out = checkpointed_scan(body, run, None, config.segment, segment)
    aux = {"train_loss": jnp.mean(out["train_loss"]), "resets": jnp.sum(out["reset"])}
    return jnp.mean(out["meta_loss"]), (new, aux)


def _batched_segment(meta_params, runs, task, optimizer, config):
    """:func:`segment_loss` over the meta-batch: ``(mean loss, (new runs, mean aux))``."""
    losses, (new, aux) = jax.vmap(segment_loss, in_axes=(None, 0, None, None, None))(
        meta_params, runs, task, optimizer, config
    )
    aux = {"train_loss": jnp.mean(aux["train_loss"]), "resets": jnp.sum(aux["resets"])}
    return jnp.mean(losses), (new, aux)


# -- gradient estimators --------------------------------------------------------------------


def tbptt_gradient(
    meta_params: MetaParams,
    runs: InnerState,
    task,
    optimizer: InnerOptimizer,
    config: TruncatedConfig,
) -> tuple[Array, MetaParams, InnerState, dict[str, Array]]:
    """Truncated backpropagation: ``(loss, grad, new_runs, aux)`` (Metz et al. 2019, Sec. 3).

    ``grad`` is ``jax.grad`` of the meta-batch mean of :func:`segment_loss` with respect to
    the meta-parameters; the runs' states at the segment start are constants (that is the
    truncation), so the gradient ignores the effect of the meta-parameters on earlier
    segments.
    """
    (loss, (new, aux)), grad = jax.value_and_grad(_batched_segment, has_aux=True)(
        meta_params, runs, task, optimizer, config
    )
    return loss, grad, new, aux


def _tree_normal(key: Array, tree: MetaParams, prefix: tuple[int, ...]) -> MetaParams:
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

    an unbiased estimate of the gradient of the Gaussian-smoothed segment loss
    ``E L(theta + sigma eps)`` (Metz et al. 2019, Sec. 3.2), with no backward pass and no
    exploding Jacobian products. The runs advance with the unperturbed meta-parameters
    (one extra segment), whose loss is the reported ``loss``. ``key`` is a typed key.
    """
    loss, (new, aux) = _batched_segment(meta_params, runs, task, optimizer, config)
    sigma, pairs = config.es_sigma, config.es_pairs

    def one_run(run, k):
        eps = _tree_normal(k, meta_params, (pairs,))

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


# -- the meta-step ----------------------------------------------------------------------------


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
    ``config.stagger``.
    """
    inner = as_inner_optimizer(optimizer)
    check_task(task, inner, config)
    k_meta, k_runs, k_es = jax.random.split(key, 3)
    if meta_params is None:
        if not hasattr(optimizer, "init_meta_params"):
            raise ValueError(
                f"pass meta_params (the hyperparameters of inner.{inner.name} to meta-learn)."
            )
        meta_params = optimizer.init_meta_params(k_meta)
    tx = _wrap(meta_optimizer or default_meta_optimizer(config))
    b, horizon = config.meta_batch, config.horizon
    starts = (np.arange(b) * horizon) // b if config.stagger else np.zeros(b, np.int64)
    run_data = jax.random.key_data(jax.random.split(k_runs, b))
    init_runs = _cached(("init", optimizer, None, None), lambda: _make_init_runs(inner))
    runs = init_runs(run_data, jnp.asarray(starts, jnp.int32), task, meta_params)
    return TruncatedState(
        meta_params=meta_params,
        opt_state=tx.init(meta_params),
        inner=runs,
        key=jax.random.key_data(k_es),
        step=jnp.zeros((), jnp.int32),
        nonfinite_count=jnp.zeros((), jnp.int32),
    )


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
    in :func:`l2l_jax.meta.train`) and counted; the runs still advance. Metrics:
    ``meta_loss``, ``grad_norm`` (before clipping), ``nonfinite``, ``train_loss`` (mean
    inner minibatch loss), ``resets`` (runs re-initialized in the segment).
    Pure; :func:`make_meta_step` jits it as ``step(state, task)``.
    """
    inner = as_inner_optimizer(optimizer)
    tx = _wrap(meta_optimizer or default_meta_optimizer(config))
    key, k_es = jax.random.split(jax.random.wrap_key_data(state.key))
    if config.estimator == "tbptt":
        loss, grad, runs, aux = tbptt_gradient(state.meta_params, state.inner, task, inner, config)
    else:
        loss, grad, runs, aux = es_gradient(
            state.meta_params, state.inner, k_es, task, inner, config
        )
    # A non-finite value poisons the step too (as in meta.train).
    checked = jax.tree.map(lambda g: jnp.where(jnp.isfinite(loss), g, jnp.nan), grad)
    updates, opt_state = tx.update(checked, state.opt_state, state.meta_params)
    nonfinite = ~opt_state.last_finite
    new = TruncatedState(
        meta_params=optax.apply_updates(state.meta_params, updates),
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

    With a 1-d ``mesh`` (:func:`meta_batch_mesh`), the step is compiled for the state
    laid out by :func:`state_sharding` (runs split over the devices along the meta-batch
    axis, everything else replicated) and keeps that layout for the new state; the task
    is replicated. Inputs placed otherwise are moved first (:func:`shard_state`,
    :func:`replicate`; free when they already are).
    """
    inner = as_inner_optimizer(optimizer)
    tx = meta_optimizer or default_meta_optimizer(config)
    if mesh is not None:
        check_mesh(mesh, config)

    def build():
        step = lambda state, task: meta_step(state, task, inner, config, tx)
        if mesh is None:
            return jax.jit(step)
        spec, rep = state_sharding(mesh), _replicated(mesh)
        jitted = jax.jit(step, in_shardings=(spec, rep), out_shardings=(spec, rep))

        def sharded_step(state, task):
            return jitted(jax.device_put(state, spec), jax.device_put(task, rep))

        return sharded_step

    return _cached(("step", optimizer, config, meta_optimizer, mesh), build)


# -- sharding the meta-batch over devices -----------------------------------------------------


def meta_batch_mesh(devices: Sequence[jax.Device] | None = None, axis: str = "batch") -> Mesh:
    """A 1-d :class:`jax.sharding.Mesh` over ``devices`` (default: all of ``jax.devices()``,
    every host's in a multi-host run) with the one axis ``axis``: pass it as
    ``meta_train(..., mesh=...)`` to split the meta-batch over them."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("meta_batch_mesh needs at least one device, got none.")
    return Mesh(np.asarray(devices), (axis,))


def check_mesh(mesh: Mesh, config: TruncatedConfig) -> None:
    """``ValueError`` unless ``mesh`` is 1-d and its device count divides ``meta_batch``."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh (e.g. meta.meta_batch_mesh()), got "
            f"{type(mesh).__name__}."
        )
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"mesh must have one axis (the meta-batch is split along it), got axes "
            f"{mesh.axis_names} of shape {tuple(mesh.devices.shape)}; build it with "
            "meta.meta_batch_mesh(devices)."
        )
    n = mesh.devices.size
    if config.meta_batch % n:
        up = -(-config.meta_batch // n) * n
        raise ValueError(
            f"TruncatedConfig.meta_batch = {config.meta_batch} is not divisible by the {n} "
            f"devices of the mesh: each device must hold the same number of inner runs. "
            f"Use meta_batch = {up} (a multiple of {n}), or a mesh over a number of devices "
            f"that divides {config.meta_batch}."
        )


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def state_sharding(mesh: Mesh) -> TruncatedState:
    """The layout of a :class:`TruncatedState` on a 1-d ``mesh``, as a pytree prefix.

    Every array of ``inner`` (the ``B`` runs: parameters, optimizer states, steps, keys)
    is split along its leading meta-batch axis over the mesh axis; the meta-parameters,
    the meta-optimizer state, the ES key and the counters are replicated. Usable as
    ``in_shardings``/``out_shardings`` of :func:`jax.jit` and with :func:`jax.device_put`.
    """
    rep = _replicated(mesh)
    return TruncatedState(
        meta_params=rep,
        opt_state=rep,
        inner=NamedSharding(mesh, PartitionSpec(mesh.axis_names[0])),
        key=rep,
        step=rep,
        nonfinite_count=rep,
    )


def shard_state(state: TruncatedState, mesh: Mesh) -> TruncatedState:
    """``state`` placed on ``mesh`` as :func:`state_sharding` says (no copy where it is)."""
    return jax.device_put(state, state_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array of ``tree`` (e.g. the task and its data) replicated on ``mesh``."""
    return jax.device_put(tree, _replicated(mesh))


def _make_init_runs(inner: InnerOptimizer) -> Callable:
    """Jitted ``(keys, starts, task, meta_params) -> InnerState`` with a leading axis."""

    def init_runs(keys, starts, task, meta_params):
        one = lambda k, t: fresh_run(k, task, inner, meta_params, t)
        return jax.vmap(one)(keys, starts)

    return jax.jit(init_runs)


_CACHE: dict[Any, Callable] = {}
_CACHE_SIZE = 32


def _cached(key: tuple, build: Callable[[], Callable]) -> Callable:
    """``build()`` memoized on ``key`` when it is hashable (e.g. an :class:`MLPLOpt`, a
    config and a meta-optimizer object), so repeated :func:`meta_train` calls (a resume)
    reuse the compiled step; otherwise a new function each time."""
    try:
        hash(key)
    except TypeError:
        return build()
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = build()
    return _CACHE[key]


# -- checkpoints ---------------------------------------------------------------------------------


def _to_host(x: Any) -> np.ndarray:
    """The whole array on the host (sharded arrays are gathered)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # multi-host (untested)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _host_value(x: Any) -> np.ndarray:
    """A replicated value (a counter, a metric) on the host; in a multi-host run, from
    this process's own copy (untested)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def _leaves_dict(state: TruncatedState) -> dict[str, np.ndarray]:
    return {f"{i:05d}": _to_host(x) for i, x in enumerate(jax.tree.leaves(state))}


def _placed_like(x: np.ndarray, ref: Any) -> Array:
    """``x`` on the devices of ``ref`` with its sharding when ``ref`` spans several
    devices (a sharded state), else a default-device array as before."""
    sharding = getattr(ref, "sharding", None)
    if sharding is not None and len(sharding.device_set) > 1:
        return jax.device_put(x, sharding)
    return jnp.asarray(x)


def _config_with_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config with the fields it predates filled in with their defaults (the
    behaviour it was written with)."""
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(TruncatedConfig)
        if f.default is not dataclasses.MISSING
    }
    return json.loads(json.dumps({**defaults, **saved}))


def save_checkpoint(manager, state: TruncatedState, config: TruncatedConfig) -> None:
    """Save ``state`` (every leaf) and ``config`` at step ``state.step`` (orbax, atomic)."""
    import orbax.checkpoint as ocp

    manager.save(
        int(_host_value(state.step)),
        args=ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(_leaves_dict(state)),
                _CONFIG: ocp.args.JsonSave(config.to_dict()),
            }
        ),
    )


def restore_checkpoint(
    manager, template: TruncatedState, config: TruncatedConfig, step: int | None = None
) -> TruncatedState:
    """The state saved at ``step`` (default: the latest), into ``template``'s structure.

    Arrays go onto the template's sharding when it is spread over several devices (a
    state placed by :func:`shard_state`), so a sharded run resumes sharded.

    Raises ``ValueError`` when the checkpoint was written with another config or a state
    of another structure, shape or dtype.
    """
    import orbax.checkpoint as ocp

    step = manager.latest_step() if step is None else step
    saved_config = manager.restore(
        step, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()})
    )[_CONFIG]
    if _config_with_defaults(saved_config) != json.loads(json.dumps(config.to_dict())):
        raise ValueError(
            f"the checkpoint at step {step} was written with config {saved_config}, not "
            f"{config.to_dict()}; resume with the same config or use a new directory."
        )
    restored = manager.restore(
        step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore()})
    )[_STATE]
    leaves, treedef = jax.tree.flatten(template)
    if len(restored) != len(leaves):
        raise ValueError(
            f"the checkpoint at step {step} has {len(restored)} arrays, the state "
            f"{len(leaves)}: it was written for another task or optimizer."
        )
    out = []
    for i, ref in enumerate(leaves):
        x = np.asarray(restored[f"{i:05d}"])
        ref_dtype = np.dtype(ref.dtype) if hasattr(ref, "dtype") else np.asarray(ref).dtype
        if x.shape != np.shape(ref) or x.dtype != ref_dtype:
            raise ValueError(
                f"checkpoint array {i} has shape {x.shape} {x.dtype}, the state expects "
                f"{np.shape(ref)} {ref_dtype}: another task or optimizer."
            )
        out.append(_placed_like(x, ref))
    return jax.tree.unflatten(treedef, out)


# -- the training loop ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TruncatedResult:
    """A :func:`meta_train` run: the final state and the metrics of this call's steps."""

    state: TruncatedState
    metrics: list[dict[str, Any]]

    @property
    def meta_params(self) -> MetaParams:
        return self.state.meta_params

    @property
    def nonfinite_count(self) -> int:
        """Meta-steps skipped over the whole run (including before a resume)."""
        return int(_host_value(self.state.nonfinite_count))


def _host_metrics(metrics: Mapping[str, Array]) -> dict[str, Any]:
    out = {}
    for name, value in metrics.items():
        v = _host_value(value)
        out[name] = bool(v) if v.dtype == bool else (int(v) if v.dtype.kind in "iu" else float(v))
    return out


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop the lines of meta-steps after ``last_step`` (written after the checkpoint)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= last_step
    ]
    path.write_text("".join(line + "\n" for line in kept))


def meta_train(
    task,
    optimizer,
    config: TruncatedConfig,
    steps: int,
    *,
    key: Array,
    meta_params: MetaParams | None = None,
    meta_optimizer: optax.GradientTransformation | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    keep: int = 3,
    resume: bool = False,
    metrics_path: str | Path | None = None,
    progress: bool | str = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    mesh: Mesh | None = None,
) -> TruncatedResult:
    """Meta-train ``optimizer`` on ``task`` until ``steps`` meta-steps are done in total.

    A Python loop over the jitted :func:`meta_step`. With ``checkpoint_dir``, an orbax
    ``CheckpointManager`` saves the whole :class:`TruncatedState` (meta-parameters,
    meta-optimizer state, all runs, PRNG key, counters) and the config every
    ``checkpoint_every`` meta-steps and at the end, keeping the last ``keep``;
    ``resume=True`` continues from the latest one (or starts fresh if there is none), and
    ends bit-identical to an uninterrupted run. Without ``resume`` an existing checkpoint
    is an error. Metrics of each meta-step (``step``, ``meta_loss``, ``grad_norm``,
    ``nonfinite``, ``train_loss``, ``resets``, ``step_time``, ``time`` since this call
    started) are appended to ``metrics_path`` (default ``checkpoint_dir/metrics.jsonl``;
    on resume, lines after the checkpoint are dropped) and passed to ``callback(step,
    metrics)``.

    ``mesh`` (opt-in; e.g. :func:`meta_batch_mesh` over all devices) splits the meta-batch
    over the devices of a 1-d :class:`jax.sharding.Mesh` (``meta_batch`` must be a
    multiple of their number): each device advances ``B / n`` runs, the meta-parameters
    are replicated and the mean over the meta-batch is reduced across devices by XLA.
    The meta-parameters agree with the unsharded run up to float rounding (the order of
    the mean's sums changes); checkpoints hold whole arrays and resume onto the mesh.
    ``mesh=None`` (default) is the single-device program.
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    validation.positive_int("checkpoint_every", checkpoint_every)
    if mesh is not None:
        check_mesh(mesh, config)
    state = init_state(key, task, optimizer, config, meta_params, meta_optimizer)
    if mesh is not None:
        state, task = shard_state(state, mesh), replicate(task, mesh)
    manager = None
    if checkpoint_dir is not None:
        import orbax.checkpoint as ocp

        checkpoint_dir = Path(checkpoint_dir).absolute()
        manager = ocp.CheckpointManager(
            checkpoint_dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        latest = manager.latest_step()
        if latest is not None:
            if not resume:
                manager.close()
                raise ValueError(
                    f"{checkpoint_dir} already holds checkpoints (latest: step {latest}); "
                    "pass resume=True to continue, or use a new directory."
                )
            state = restore_checkpoint(manager, state, config, latest)
        if metrics_path is None:
            metrics_path = checkpoint_dir / "metrics.jsonl"
    start = int(_host_value(state.step))
    if metrics_path is not None:
        metrics_path = Path(metrics_path)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        if resume:
            _truncate_jsonl(metrics_path, start)
        elif metrics_path.exists():
            metrics_path.unlink()
    step_fn = make_meta_step(optimizer, config, meta_optimizer, mesh)
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    label = progress if isinstance(progress, str) else "meta-training"
    try:
        with tqdm(total=steps, initial=min(start, steps), desc=label, disable=not progress) as bar:
            for _ in range(start, steps):
                t_step = time.perf_counter()
                state, metrics = step_fn(state, task)
                record = {"step": int(_host_value(state.step)), **_host_metrics(metrics)}
                now = time.perf_counter()
                record.update(step_time=now - t_step, time=now - t0)
                history.append(record)
                if metrics_path is not None:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{record['meta_loss']:.4g}")
                if manager is not None and record["step"] % checkpoint_every == 0:
                    save_checkpoint(manager, state, config)
                if callback is not None:
                    callback(record["step"], record)
        if manager is not None and manager.latest_step() != int(_host_value(state.step)):
            save_checkpoint(manager, state, config)
    finally:
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
    return TruncatedResult(state=state, metrics=history)
