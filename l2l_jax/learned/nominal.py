"""A learned optimizer built around a nominal descent term (Harrison, Metz and
Sohl-Dickstein, "A Closer Look at Learned Optimization: Stability, Robustness, and
Inductive Biases", NeurIPS 2022).

The paper's stability analysis on a noisy quadratic model shows that a blackbox update
``P grad`` is stable only where the eigenvalues of ``I - P H`` stay inside the unit
circle, and that a hand-designed *nominal* descent step ``alpha grad`` and a
weight-decay-like term move them inside. The optimizer it builds on this (STAR;
``MLPNomLOpt`` in ``google/learned_optimization``) updates each tensor ``w`` by

.. code-block:: text

    Δw = -( lr · exp(k_n c) · d_nom           nominal step, learned magnitude c
            + step_mult · exp(k_b a) · d · ρ    blackbox term d, Adam-preconditioned (ρ)
            + wd · exp(k_r r) · w )            stabilizing weight decay, learned magnitude r

where ``d_nom`` is a hand-designed direction (:data:`ESTIMATORS`: SGD, heavy-ball
momentum, aggregated momentum, Adam, Adam over several momentum decays), and
``(d, a, c, r)`` are the four outputs of a tiny per-coordinate MLP (two hidden layers of 4
ReLU units by default) of normalized gradient-statistics features and a step embedding.
``c`` and ``r`` are averaged over the tensor by default (a learned per-tensor log step
size and log weight decay, ``controller="tensor"``). The accumulator decays are
meta-parameters too, ``b = sigmoid(logit(b0) + theta)``, so they stay in ``(0, 1)``.

The output layer starts at zero, so with freshly initialized meta-parameters
``(d, a, c, r) = 0``: the update is exactly the nominal optimizer (plus ``wd · w`` when
``weight_decay > 0``), e.g. ``optax.adam(1e-3)`` for the default config. Meta-training
starts from a working optimizer instead of a random one.

The MLP has two numerically identical forms (:data:`MLP_FORMS`): ``"matmul"`` (the
default) multiplies the stacked features by the weight matrices; ``"elementwise"``
unrolls the few hidden units into scalar multiply-adds at trace time, which XLA fuses
into one elementwise loop. Measured on CPU (``benchmarks/nominal.py``, MNIST MLP), the
unrolled form makes a step 5-14% faster but the meta-gradient about 3x slower (matmul /
elementwise time 0.26-0.34): its backward pass reduces over all coordinates once per
weight instead of computing one ``x^T delta`` product.

Meta-parameters are a plain nested dict (``nnx.to_pure_dict`` of :class:`NominalNet`);
:meth:`NominalLOpt.update` is pure, so the optimizer plugs into
:mod:`l2l_jax.truncated` and the adapters of :mod:`l2l_jax.learned.adapters`
(``learned.as_optax``, ``learned.inner_optimizer``, ``learned.save``/``learned.load``)
like :class:`~l2l_jax.learned.MLPLOpt`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from l2l_jax.learned import common
from l2l_jax.learned.mlp_lopt import second_moment_normalize, time_features
from l2l_jax.learned.nominal_config import (
    CONTROLLERS,
    DEFAULT_LEARNING_RATES,
    ESTIMATORS,
    KIND,
    MLP_FORMS,
    OUTPUTS,
    NominalConfig,
    feature_names,
)

Array = jax.Array
MetaParams = dict[str, Any]

# -- the network ------------------------------------------------------------------------


class NominalNet(nnx.Module):
    """The meta-parameters as a module: the MLP (``num_features -> hidden -> 4``, output
    layer zero-initialized) and the logit offsets of the accumulator decays (zero)."""

    def __init__(self, config: NominalConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.config = config
        sizes = (config.num_features, *config.hidden_sizes)
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            layer = nnx.Linear(n_in, n_out, rngs=rngs, param_dtype=param_dtype)
            setattr(self, f"hidden_{i}", layer)
        self.out = nnx.Linear(
            sizes[-1],
            len(OUTPUTS),
            kernel_init=nnx.initializers.zeros,
            rngs=rngs,
            param_dtype=param_dtype,
        )
        self.momentum_logits = nnx.Param(jnp.zeros(len(config.momentum_decays), param_dtype))
        self.rms_logits = nnx.Param(jnp.zeros(len(config.rms_decays), param_dtype))

    def __call__(self, x: Array) -> Array:
        """``(..., num_features) -> (..., 4)``: direction, magnitude, nominal, regularization."""
        for i in range(len(self.config.hidden_sizes)):
            x = jax.nn.relu(getattr(self, f"hidden_{i}")(x))
        return self.out(x)


@chex.dataclass(frozen=True)
class NominalState:
    """Accumulators (a pytree).

    Attributes:
      momentum: like ``params`` with a trailing axis ``K``: ``m_k = EMA_{b_k}(g)``.
      second_moment: trailing axis ``J``: ``v_j = EMA_{b_j}(g^2)``.
      count: updates taken so far (int32 scalar).
    """

    momentum: chex.ArrayTree
    second_moment: chex.ArrayTree
    count: Array


@chex.dataclass(frozen=True)
class Decays:
    """The learned decays of one step: ``b``, ``1 - b`` and ``log b`` for the momentum
    (``m_*``, shape ``(K,)``) and second-moment (``v_*``, ``(J,)``) accumulators."""

    m: Array
    m_rest: Array
    m_log: Array
    v: Array
    v_rest: Array
    v_log: Array


def decays(meta_params: MetaParams, config: NominalConfig, dtype=None) -> Decays:
    """``b = sigmoid(logit(b0) + theta)`` of both accumulator sets (paper: learned decays)."""
    out = []
    for base, offset in (
        (config.momentum_decays, meta_params["momentum_logits"]),
        (config.rms_decays, meta_params["rms_logits"]),
    ):
        dtype_ = dtype or jnp.result_type(offset)
        z0 = jnp.asarray([common.logit(b) for b in base], dtype_)
        out += common.decay_terms(z0, jnp.asarray(offset, dtype_))
    return Decays(m=out[0], m_rest=out[1], m_log=out[2], v=out[3], v_rest=out[4], v_log=out[5])


# -- per-tensor pieces ----------------------------------------------------------------------


def _safe_sqrt(x: Array) -> Array:
    """``sqrt(x + tiny)``: the same value, but a finite derivative at ``x = 0``."""
    return jnp.sqrt(x + jnp.finfo(x.dtype).tiny)


def accumulate(
    momentum: Array, second_moment: Array, grad: Array, dec: Decays
) -> tuple[Array, Array]:
    """One EMA step: ``m_k <- b_k m_k + (1 - b_k) g``, ``v_j <- b_j v_j + (1 - b_j) g^2``.

    ``g^2`` uses ``g`` clipped to ``sqrt(max float) / 2`` so ``v`` stays finite.
    """
    limit = math.sqrt(float(jnp.finfo(grad.dtype).max)) / 2
    g = grad[..., None]
    momentum = dec.m_rest * g + dec.m * momentum
    g_c = jnp.clip(g, -limit, limit)
    second_moment = dec.v_rest * jnp.square(g_c) + dec.v * second_moment
    return momentum, second_moment


def bias_corrections(log_decay: Array, step: Array) -> Array:
    """``1 - b^t = -expm1(t log b)`` (Adam's bias correction, accurate for ``b`` near 1)."""
    return -jnp.expm1(jnp.asarray(step, log_decay.dtype) * log_decay)


def nominal_direction(
    grad: Array,
    momentum: Array,
    second_moment: Array,
    step: Array,
    dec: Decays,
    config: NominalConfig,
) -> Array:
    """The hand-designed direction ``d_nom`` of one tensor (the paper's nominal term).

    ``step`` is ``t``, the number of the update being taken (1 for the first).
    Heavy-ball traces are ``m_k / (1 - b_k)`` (``sum_s b^(t-s) g_s``, optax's ``trace``).
    """
    est = config.estimator
    if est == "sgd":
        return grad
    if est in ("momentum", "aggmo"):
        traces = momentum / dec.m_rest
        return traces[..., 0] if est == "momentum" else jnp.mean(traces, axis=-1)
    m_hat = momentum / bias_corrections(dec.m_log, step)
    v_hat = second_moment[..., 0] / bias_corrections(dec.v_log[0], step)
    numerator = m_hat[..., 0] if est == "adam" else jnp.mean(m_hat, axis=-1)
    return numerator / (_safe_sqrt(v_hat) + config.eps)


def _sqrt_or_zero(x: Array) -> Array:
    """``sqrt(x)`` for ``x > 0``, else 0, with derivative 0 there (not ``inf``)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), 0)


def blackbox_preconditioner(
    second_moment: Array, step: Array, dec: Decays, config: NominalConfig
) -> Array:
    """``rho = 1 / (sqrt(v_hat) / s + blackbox_eps)``, ``s = sqrt(mean_tensor(v_hat))``.

    Adam's preconditioner ``1 / (sqrt(v_hat) + eps)`` with both terms measured in units
    of the tensor's RMS gradient ``s``, so the blackbox term, like the nominal Adam step,
    does not change when the loss is rescaled, and stays below ``1 / blackbox_eps``.
    Second moments below ``sqrt(tiny)`` (gradients below ~3e-10 in float32) count as 0,
    which keeps the derivatives ``~ 1 / (sqrt(v_hat) s)`` finite. The RMS is taken of
    ``sqrt(v_hat) / max sqrt(v_hat)`` (a constant for differentiation), so it cannot
    overflow; in sqrt space, as ``1 / max v_hat`` can be subnormal (flushed to 0 on CPU).
    """
    v_hat = second_moment[..., 0] / bias_corrections(dec.v_log[0], step)
    floor = math.sqrt(float(jnp.finfo(v_hat.dtype).tiny))
    root = _sqrt_or_zero(jnp.where(v_hat > floor, v_hat, 0))
    top = jax.lax.stop_gradient(jnp.max(root))
    x = root / jnp.where(top > 0, top, 1)
    rms = _sqrt_or_zero(jnp.mean(jnp.square(x)))
    ratio = x / jnp.where(rms > 0, rms, 1)
    return 1 / (ratio + config.blackbox_eps)


def tensor_features(
    grad: Array, param: Array, momentum: Array, second_moment: Array, config: NominalConfig
) -> Array:
    """The ``num_tensor_features`` inputs of one tensor, shape ``param.shape + (F,)``, each
    normalized by its RMS over the tensor (Metz et al. 2019's second-moment normalization).

    Order: ``g, p, m_1..m_K, r_1..r_J, m_1/r_1..m_K/r_1, 1/r_1..1/r_J`` with
    ``r_j = sqrt(v_j + rms_eps)`` (no bias correction: the normalization removes it).
    """
    rms = jnp.sqrt(second_moment + config.rms_eps)
    stacked = jnp.concatenate(
        [grad[..., None], param[..., None], momentum, rms, momentum / rms[..., :1], 1 / rms],
        axis=-1,
    )
    return second_moment_normalize(stacked, range(param.ndim), config.norm_eps)


def _layers(meta_params: MetaParams, config: NominalConfig) -> list[tuple[Array, Array]]:
    names = [f"hidden_{i}" for i in range(len(config.hidden_sizes))] + ["out"]
    return [(meta_params[n]["kernel"], meta_params[n]["bias"]) for n in names]


def _first_layer(
    meta_params: MetaParams, step_features: Array, config: NominalConfig
) -> tuple[Array, Array]:
    """First-layer kernel rows of the tensor features, and the bias plus the step
    features' contribution (the same for every coordinate: computed once, not broadcast)."""
    kernel, bias = meta_params["hidden_0"]["kernel"], meta_params["hidden_0"]["bias"]
    n = config.num_tensor_features
    return kernel[:n], bias + step_features @ kernel[n:]


def mlp_matmul(
    meta_params: MetaParams, x: Array, step_features: Array, config: NominalConfig
) -> tuple[Array, ...]:
    """The MLP as matrix products ``x @ W + b`` on tensor features ``x`` of shape
    ``(..., F)``. Returns the four outputs (:data:`OUTPUTS`), each of shape ``(...)``."""
    layers = _layers(meta_params, config)
    kernel, bias = _first_layer(meta_params, step_features, config)
    x = jax.nn.relu(x @ kernel + bias)
    for kernel, bias in layers[1:-1]:
        x = jax.nn.relu(x @ kernel + bias)
    out = x @ layers[-1][0] + layers[-1][1]
    return tuple(out[..., i] for i in range(len(OUTPUTS)))


def mlp_elementwise(
    meta_params: MetaParams, x: Array, step_features: Array, config: NominalConfig
) -> tuple[Array, ...]:
    """The MLP unrolled into scalar multiply-adds on the feature columns (a Python loop over
    the few hidden units at trace time; XLA fuses it into one loop over the coordinates).
    Same inputs and outputs as :func:`mlp_matmul`."""
    layers = _layers(meta_params, config)
    first = _first_layer(meta_params, step_features, config)
    columns = [x[..., i] for i in range(x.shape[-1])]
    return tuple(common.mlp_columns([first, *layers[1:]], columns))


MLPS = {"matmul": mlp_matmul, "elementwise": mlp_elementwise}


def combine(
    outputs: Sequence[Array],
    grad: Array,
    param: Array,
    momentum: Array,
    second_moment: Array,
    step: Array,
    dec: Decays,
    config: NominalConfig,
) -> Array:
    """The update ``-(nominal + blackbox + decay)`` of one tensor from the MLP outputs
    ``(d, a, c, r)`` (each ``param.shape``) and the new accumulators; ``step = t >= 1``."""
    direction, magnitude, nominal, reg = outputs
    if config.controller == "tensor":
        nominal, reg = jnp.mean(nominal), jnp.mean(reg)
    d_nom = nominal_direction(grad, momentum, second_moment, step, dec, config)
    update = config.learning_rate * jnp.exp(config.nominal_exp_mult * nominal) * d_nom
    rho = blackbox_preconditioner(second_moment, step, dec, config)
    update = update + config.step_mult * jnp.exp(config.exp_mult * magnitude) * direction * rho
    if config.weight_decay > 0:
        update = update + config.weight_decay * jnp.exp(config.reg_exp_mult * reg) * param
    return -update


# -- the optimizer --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NominalLOpt(common.NetOptimizer):
    """The nominal-term learned optimizer: an architecture and pure functions.

    ``net(key)`` is a freshly initialized :class:`NominalNet`; its meta-parameters
    (``init_meta_params(key)``, ``nnx.to_pure_dict``) make the optimizer the nominal one
    at initialization (zero output layer and decay offsets). ``apply(meta_params,
    inputs)`` is the MLP on ``(..., num_features)`` inputs (tensor and step features) ->
    ``(..., 4)``. These, ``graphdef`` and ``meta_params_shapes`` come from
    :class:`~l2l_jax.learned.common.NetOptimizer`.

    Example::

        lopt = NominalLOpt()                       # Adam(1e-3) at initialization
        meta_params = lopt.init_meta_params(jax.random.key(0))
        state = lopt.init(params)
        updates, state = lopt.update(meta_params, grads, state, params)
        params = optax.apply_updates(params, updates)
    """

    config: NominalConfig = dataclasses.field(default_factory=NominalConfig)

    Net: ClassVar[type[NominalNet]] = NominalNet
    kind: ClassVar[str] = KIND

    def decays(self, meta_params: MetaParams) -> Decays:
        """The learned accumulator decays (``.m``, ``.v``) and their complements."""
        return decays(meta_params, self.config)

    def init(self, params: chex.ArrayTree) -> NominalState:
        """Zero accumulators for ``params`` (same dtypes), ``count = 0``."""
        k, j = len(self.config.momentum_decays), len(self.config.rms_decays)
        zeros = lambda n: lambda p: jnp.zeros((*jnp.shape(p), n), jnp.result_type(p))
        return NominalState(
            momentum=jax.tree.map(zeros(k), params),
            second_moment=jax.tree.map(zeros(j), params),
            count=jnp.zeros((), jnp.int32),
        )

    def update(
        self,
        meta_params: MetaParams,
        grads: chex.ArrayTree,
        state: NominalState,
        params: chex.ArrayTree,
    ) -> tuple[chex.ArrayTree, NominalState]:
        """One step: ``(updates, new_state)``, ``updates = -(nominal + blackbox + decay)``.

        Pure, jit-able, differentiable in ``meta_params`` (and in ``grads``/``params``
        unless ``config.first_order``). Accumulators are updated first; the features and
        the nominal direction use the new ones (as optax does).
        """
        chex.assert_trees_all_equal_shapes(grads, params)
        chex.assert_trees_all_equal_structs(state.momentum, params)
        cfg = self.config
        if cfg.first_order:
            grads = jax.lax.stop_gradient(grads)
        leaves, treedef = jax.tree.flatten(params)
        columns = [treedef.flatten_up_to(t) for t in (grads, state.momentum, state.second_moment)]
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        mp = jax.tree.map(lambda a: jnp.asarray(a, dtype), meta_params)
        dec = decays(mp, cfg, dtype)
        step = state.count + 1
        tensors, inputs = [], []
        for p, g, m, v in zip(leaves, *columns, strict=True):
            p, g = jnp.asarray(p, dtype), jnp.asarray(g, dtype)
            m, v = accumulate(jnp.asarray(m, dtype), jnp.asarray(v, dtype), g, dec)
            tensors.append((g, p, m, v))
            inputs.append(tensor_features(g, p, m, v, cfg).reshape(-1, cfg.num_tensor_features))
        # One MLP call on every coordinate of every tensor (one small graph, not one per
        # tensor: compile time), split back into tensors for the per-tensor terms.
        steps = time_features(state.count, cfg.time_scales, dtype)
        flat = MLPS[cfg.mlp_form](mp, jnp.concatenate(inputs), steps, cfg) if leaves else ()
        bounds = np.cumsum([0] + [int(np.prod(jnp.shape(p))) for p in leaves])
        updates, momentum, second_moment = [], [], []
        for i, (leaf, (g, p, m, v)) in enumerate(zip(leaves, tensors, strict=True)):
            outputs = [o[bounds[i] : bounds[i + 1]].reshape(p.shape) for o in flat]
            u = combine(outputs, g, p, m, v, step, dec, cfg)
            kind = jnp.result_type(leaf)
            updates.append(u.astype(kind))
            momentum.append(m.astype(kind))
            second_moment.append(v.astype(kind))
        new_state = NominalState(
            momentum=jax.tree.unflatten(treedef, momentum),
            second_moment=jax.tree.unflatten(treedef, second_moment),
            count=step,
        )
        return jax.tree.unflatten(treedef, updates), new_state


def random_meta_params(
    lopt: NominalLOpt, key: chex.PRNGKey, scale: float = 0.5, dtype=jnp.float32
) -> MetaParams:
    """Meta-parameters with every entry ``scale * N(0, 1)`` (all terms active; for tests and
    benchmarks, where the zero output layer of :meth:`NominalLOpt.init_meta_params` would
    hide the learned terms)."""
    leaves, treedef = jax.tree.flatten(lopt.meta_params_shapes)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef,
        [scale * jax.random.normal(k, s.shape, dtype) for k, s in zip(keys, leaves, strict=True)],
    )


__all__ = [
    "CONTROLLERS",
    "DEFAULT_LEARNING_RATES",
    "ESTIMATORS",
    "MLP_FORMS",
    "OUTPUTS",
    "Decays",
    "NominalConfig",
    "NominalLOpt",
    "NominalNet",
    "NominalState",
    "accumulate",
    "bias_corrections",
    "blackbox_preconditioner",
    "combine",
    "decays",
    "feature_names",
    "mlp_elementwise",
    "mlp_matmul",
    "nominal_direction",
    "random_meta_params",
    "tensor_features",
]
