"""The per-parameter MLP learned optimizer of Metz et al. (2019), in Flax NNX.

Metz, Maheswaranathan, Nixon, Freeman and Sohl-Dickstein, "Understanding and correcting
pathologies in the training of learned optimizers" (ICML 2019), as used by Wang et al.
(2021, Sec. 5 and Appendix F) for the MNIST experiments (Figures 4-5).

Every coordinate of every parameter tensor is updated by the *same* small MLP applied to
a feature vector of that coordinate (:func:`features`):

* per-tensor features (``2 + 4 K`` of them, ``K = len(decays)``): the gradient ``g``, the
  parameter ``p``, the momenta ``m_k = EMA_k(g)``, the RMS ``r_k = sqrt(EMA_k(g^2) + eps)``,
  the normalized momenta ``m_k / r_k`` and ``1 / r_k``; each is normalized by its root
  mean square over the tensor (:func:`second_moment_normalize`);
* step features (``len(time_scales)``): ``tanh(t / tau - 1)`` of the step count ``t``,
  shared by all coordinates and appended after the normalization.

With the paper's decays ``(0.5, 0.9, 0.99, 0.999, 0.9999)`` and nine time scales this is
``22 + 9 = 31`` inputs. The MLP (one hidden layer of 32 ReLU units) outputs a direction
``d`` and a log-magnitude ``m``; the step is ``d * exp(exp_mult * m) * step_mult`` with
``exp_mult = step_mult = 1e-3``, so the untrained optimizer takes small steps.

The meta-parameters (the MLP's weights) are a plain nested dict of arrays
(``nnx.split(net)[1]``), and :meth:`MLPLOpt.update` is a pure function of
them: jit-able and differentiable, usable in meta-training, as an optax transformation
and as an inner optimizer of :func:`l2l_jax.inner.unroll` (the adapters of
:mod:`l2l_jax.learned.adapters`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from l2l_jax import input_checks
from l2l_jax.learned import common

Array = jax.Array
MetaParams = dict[str, Any]

PAPER_DECAYS = (0.5, 0.9, 0.99, 0.999, 0.9999)
PAPER_TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
# LOptConfig.backward_dtype's choices: None, the exact reverse pass, or a reduced precision
BACKWARD_DTYPES = (None, "bfloat16")


@dataclasses.dataclass(frozen=True)
class LOptConfig:
    """Architecture of the learned optimizer (saved alongside the weights).

    Attributes:
      hidden_sizes: widths of the ReLU hidden layers (the paper: one layer of 32).
      decays: EMA decays of the momentum and second-moment accumulators (the paper's five).
      time_scales: ``tau`` of the step features ``tanh(t / tau - 1)``.
      exp_mult: scale of the log-magnitude output (the paper's code: ``1e-3``).
      step_mult: scale of the step (the paper's code: ``1e-3``).
      norm_eps: ``eps`` of the tensor normalization ``x / sqrt(eps + mean(x^2))``.
      rms_eps: ``eps`` of the RMS features ``r_k = sqrt(EMA_k(g^2) + rms_eps)``.
      first_order: stop gradients through the inner gradients fed to the MLP (no second
        derivatives in meta-gradients, as in the paper's settings); ``False`` keeps them.
      backward_dtype: ``None`` (the exact reverse pass) or ``"bfloat16"``: the MLP's
        reverse pass keeps its matrices (features, activations, their cotangents) in
        bfloat16 and accumulates in float32 (:func:`~l2l_jax.learned.common.fused_mlp`'s
        ``residual_dtype``; opt-in: it changes meta-gradients by about bfloat16's
        rounding). Steps and the forward pass are unchanged.
    """

    hidden_sizes: tuple[int, ...] = (32,)
    decays: tuple[float, ...] = PAPER_DECAYS
    time_scales: tuple[float, ...] = PAPER_TIME_SCALES
    exp_mult: float = 1e-3
    step_mult: float = 1e-3
    norm_eps: float = 1e-5
    rms_eps: float = 1e-8
    first_order: bool = False
    backward_dtype: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        object.__setattr__(self, "decays", tuple(float(d) for d in self.decays))
        object.__setattr__(self, "time_scales", tuple(float(t) for t in self.time_scales))
        if not self.decays or not all(0.0 <= d < 1.0 for d in self.decays):
            raise ValueError(f"decays must be non-empty and in [0, 1), got {self.decays}.")
        if any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes}.")
        if any(t <= 0 for t in self.time_scales):
            raise ValueError(f"time_scales must be positive, got {self.time_scales}.")
        for name in ("exp_mult", "step_mult", "norm_eps", "rms_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        if self.backward_dtype not in BACKWARD_DTYPES:
            raise ValueError(
                f"backward_dtype must be one of {BACKWARD_DTYPES} (None: the exact reverse "
                f"pass), got {self.backward_dtype!r}."
            )

    @property
    def num_tensor_features(self) -> int:
        """``2 + 4 K``: g, p and four features per decay."""
        return 2 + 4 * len(self.decays)

    @property
    def num_features(self) -> int:
        """MLP input width: tensor features plus step features (31 for the paper)."""
        return self.num_tensor_features + len(self.time_scales)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LOptConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown LOptConfig fields {sorted(unknown)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def feature_names(config: LOptConfig) -> tuple[str, ...]:
    """Names of the MLP inputs in order (the documented feature list)."""
    names = ["grad", "param"]
    for kind in ("momentum", "rms", "momentum/rms", "1/rms"):
        names += [f"{kind}[{d:g}]" for d in config.decays]
    names += [f"tanh(t/{t:g}-1)" for t in config.time_scales]
    return tuple(names)


class MLPNet(nnx.Module):
    """The per-coordinate MLP: ``num_features`` inputs -> ReLU hidden layers -> 2 outputs."""

    def __init__(self, config: LOptConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.config = config
        sizes = (config.num_features, *config.hidden_sizes)
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            setattr(
                self, f"hidden_{i}", nnx.Linear(n_in, n_out, rngs=rngs, param_dtype=param_dtype)
            )
        self.out = nnx.Linear(sizes[-1], 2, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x: Array) -> Array:
        """``(..., num_features) -> (..., 2)``: direction and log-magnitude."""
        for i in range(len(self.config.hidden_sizes)):
            x = jax.nn.relu(getattr(self, f"hidden_{i}")(x))
        return self.out(x)

    def split_call(self, per_tensor: Array, steps: Array) -> Array:
        """``self(concat([per_tensor, broadcast(steps)]))`` without the broadcast.

        The step features are the same for every coordinate, so their share of the first
        layer, ``steps @ W[n:] + b``, is one vector added to ``per_tensor @ W[:n]``: the
        ``(..., num_features)`` input is never built (equal up to summation order).
        """
        first = self.hidden_0
        n = per_tensor.shape[-1]
        kernel = first.kernel[...]
        x = per_tensor @ kernel[:n] + (steps @ kernel[n:] + first.bias[...])
        x = jax.nn.relu(x)
        for i in range(1, len(self.config.hidden_sizes)):
            x = jax.nn.relu(getattr(self, f"hidden_{i}")(x))
        return self.out(x)


@chex.dataclass(frozen=True)
class LOptState:
    """Accumulators of the learned optimizer (a pytree).

    Attributes:
      momentum: a tuple of ``K`` pytrees like ``params``, one per decay: ``EMA_k(g)``.
        One array per decay and tensor, not a ``(..., K)`` array: in reverse mode the
        cotangent of a slice ``m[..., k]`` is a padded scatter into every ``K``-th entry,
        and XLA's CPU fusion of those pads cost TBPTT a third of its time.
      second_moment: the same for ``EMA_k(g^2)`` (gradients clipped, :func:`accumulate`).
      count: number of updates taken so far (int32 scalar).
    """

    momentum: chex.ArrayTree
    second_moment: chex.ArrayTree
    count: Array


# Scale of the fallback sum of squares: (x * 2^-80)^2 is finite for every finite float32
# (and float64) x, and a sum of 10^9 of them too.
_HUGE_SCALE = 2.0**-80


def _when_any(flag: Array, compute: Callable[[], Any], default: Any) -> Any:
    """``compute()`` if some entry of ``flag`` is true, else ``default`` (same structure).

    A ``while_loop`` of at most one iteration: under ``vmap`` its predicate becomes "some
    run needs it" and the runs that do not keep ``default``, so a batch that needs nothing
    skips the work (a ``cond`` would turn into a ``select`` that runs it always).
    """

    def body(state: tuple[Any, Array]) -> tuple[Any, Array]:
        return compute(), jnp.ones((), bool)

    init = (default, jnp.zeros((), bool))
    return jax.lax.while_loop(lambda state: jnp.any(flag) & ~state[1], body, init)[0]


def _scaled_sums(columns_fn: Callable, axis: tuple[int, ...], inputs: tuple, huge: Array) -> Array:
    """``sum((c * 2^-80)^2)`` over ``axis`` (``keepdims``) of each column ``c`` of
    ``columns_fn(*inputs)``, stacked on a new first axis; 1 where ``huge`` is false."""
    columns = columns_fn(*inputs)
    sums = jnp.stack(
        [jnp.sum(jnp.square(c * _HUGE_SCALE), axis=axis, keepdims=True) for c in columns]
    )
    return jnp.where(huge, sums, 1.0).astype(sums.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _fallback_sums(columns_fn: Callable, axis: tuple[int, ...], inputs: tuple, huge: Array):
    """:func:`_scaled_sums`, computed only if some column's plain sum overflowed
    (:func:`_when_any`; ``huge``: per column, stacked). The columns are recomputed from
    ``inputs`` inside, so when the pass is skipped nothing of it runs. Differentiable in
    both modes (which ``while_loop`` is not in reverse): the tangent is the sums' own
    derivative, computed outright, so it transposes like any sum (a reverse pass pays for
    it, a forward one without derivatives does not)."""
    dtype = jnp.result_type(*jax.tree.leaves(inputs))
    return _when_any(
        huge, lambda: _scaled_sums(columns_fn, axis, inputs, huge), jnp.ones(huge.shape, dtype)
    )


@_fallback_sums.defjvp
def _fallback_sums_jvp(columns_fn, axis, primals, tangents):
    inputs, huge = primals
    d_inputs, _ = tangents
    _, d_sums = jax.jvp(lambda *xs: _scaled_sums(columns_fn, axis, xs, huge), inputs, d_inputs)
    return _fallback_sums(columns_fn, axis, inputs, huge), d_sums


def _factors(
    plain: Array, scaled: Array, huge: Array, n: int, eps: float, dtype
) -> tuple[Array, Array]:
    """``(a, b)`` of :func:`second_moment_factors` from the plain and the scaled sums."""
    b_plain = jax.lax.rsqrt(eps + jnp.where(huge, 0.0, plain) / n)
    b_huge = jax.lax.rsqrt(jnp.where(huge, scaled, 1.0) / n)
    a = jnp.where(huge, _HUGE_SCALE, 1.0).astype(dtype)
    return a, jnp.where(huge, b_huge, b_plain)


def _as_columns(x: Array) -> list[Array]:
    return [x]


def normalized_columns(
    columns_fn: Callable[..., Sequence[Array]],
    inputs: tuple,
    axis: Sequence[int],
    eps: float,
) -> list[Array]:
    """``second_moment_normalize(c, axis, eps)`` of each column ``c`` of
    ``columns_fn(*inputs)``: one plain sum of squares per column; the overflow fallback's
    scaled sums (:func:`second_moment_factors`) in one pass over all columns, recomputed
    from ``inputs``, that runs only when some plain sum overflowed (:func:`_fallback_sums`:
    on CPU each reduction is its own pass, and the fallback's cost 11% of the learned
    update, ``docs/performance.md``)."""
    axis = tuple(axis)
    columns = columns_fn(*inputs)
    n = math.prod(columns[0].shape[i] for i in axis)
    plains = [jnp.sum(jnp.square(c), axis=axis, keepdims=True) for c in columns]
    huge = jnp.stack([~jnp.isfinite(s) for s in plains])
    scaled = _fallback_sums(columns_fn, axis, tuple(inputs), huge)
    out = []
    for i, (c, plain) in enumerate(zip(columns, plains, strict=True)):
        a, b = _factors(plain, scaled[i], huge[i], n, eps, c.dtype)
        out.append((c * a) * b)
    return out


def second_moment_factors(x: Array, axis: Sequence[int], eps: float) -> tuple[Array, Array]:
    """``(a, b)`` with ``second_moment_normalize(x, axis, eps) == (x * a) * b`` (shapes of
    ``x`` reduced over ``axis`` with ``keepdims``): apply them one after the other.

    ``S = sum(x^2)``, one reduction of ``x`` (no ``max|x|`` pass first). Where ``S`` is
    finite, ``a = 1`` and ``b = 1 / sqrt(eps + S / n)``. A square that underflows there is
    harmless: it is below ``1e-38``, far under ``eps``. Where ``S`` overflows (``|x|``
    above ~``1e19 / sqrt(n)`` in float32), a second reduction ``S' = sum((x c)^2)`` with
    ``c = 2^-80`` gives ``a = c`` and ``b = 1 / sqrt(S' / n)``, with ``eps`` dropped as far
    below ``rms(x)^2``; that pass runs only when some ``S`` overflows
    (:func:`_fallback_sums`). Both factors are finite and normal, while their product
    ``1 / rms(x)`` may not be (``3e-39`` for ``x`` near the largest float). Each branch's
    input is made safe before it is used, so reverse mode is finite in both.
    """
    axis = tuple(axis)
    n = math.prod(x.shape[i] for i in axis)
    plain = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    huge = ~jnp.isfinite(plain)
    scaled = _fallback_sums(_as_columns, axis, (x,), huge[None])[0]
    return _factors(plain, scaled, huge, n, eps, x.dtype)


def second_moment_normalize(x: Array, axis: Sequence[int], eps: float) -> Array:
    """``x / sqrt(eps + mean(x^2))``, the mean over ``axis`` (Metz et al. 2019).

    No square over- or underflows to a wrong result (:func:`second_moment_factors`): a
    huge tensor (``1e30``) is normalized to RMS ~1, and a tensor whose squares underflow
    (``1e-30``) maps to ~``x / sqrt(eps)`` (subnormal or 0 for the tiniest). Zeros stay 0.
    """
    a, b = second_moment_factors(x, axis, eps)
    return (x * a) * b


def accumulate(
    momentum: Array, second_moment: Array, grad: Array, decay: float | Array
) -> tuple[Array, Array]:
    """One EMA step of the momentum and second-moment accumulators of one decay ``b``.

    ``m <- b m + (1 - b) g`` and ``v <- b v + (1 - b) g_c^2`` with ``g`` clipped to
    ``|g_c| <= sqrt(max float) / 2`` so ``v`` stays finite (float32: ~9e18).
    """
    limit = math.sqrt(float(jnp.finfo(grad.dtype).max)) / 2
    decay = jnp.asarray(decay, grad.dtype)
    g_c = jnp.clip(grad, -limit, limit)
    momentum = decay * momentum + (1 - decay) * grad
    second_moment = decay * second_moment + (1 - decay) * jnp.square(g_c)
    return momentum, second_moment


def time_features(count: Array, time_scales: Sequence[float], dtype) -> Array:
    """``tanh(t / tau - 1)`` for each time scale ``tau`` (the training-step embedding)."""
    t = jnp.asarray(count, dtype)
    return jnp.tanh(t / jnp.asarray(time_scales, dtype) - 1)


def tensor_features(
    grad: Array,
    param: Array,
    momentum: Sequence[Array],
    second_moment: Sequence[Array],
    config: LOptConfig,
) -> Array:
    """The ``2 + 4K`` per-coordinate features of one tensor, normalized over the tensor.

    Order: ``g, p, m_1..m_K, r_1..r_K, (m/r)_1..(m/r)_K, (1/r)_1..(1/r)_K`` with
    ``r_k = sqrt(v_k + rms_eps)`` (``momentum``, ``second_moment``: the ``K`` arrays
    ``m_k``, ``v_k``); each column divided by its RMS over the tensor. This is the plain
    (reference) form; :meth:`MLPLOpt.update` computes the same columns without stacking
    them.
    """
    momentum, second_moment = jnp.stack(momentum, axis=-1), jnp.stack(second_moment, axis=-1)
    rms = jnp.sqrt(second_moment + config.rms_eps)
    stacked = jnp.concatenate(
        [grad[..., None], param[..., None], momentum, rms, momentum / rms, 1 / rms], axis=-1
    )
    return second_moment_normalize(stacked, range(grad.ndim), config.norm_eps)


def features(
    grad: Array,
    param: Array,
    momentum: Sequence[Array],
    second_moment: Sequence[Array],
    count: Array,
    config: LOptConfig,
) -> Array:
    """All ``num_features`` MLP inputs of one tensor: shape ``param.shape + (F,)``."""
    per_tensor = tensor_features(grad, param, momentum, second_moment, config)
    steps = time_features(count, config.time_scales, per_tensor.dtype)
    steps = jnp.broadcast_to(steps, (*param.shape, steps.shape[0]))
    return jnp.concatenate([per_tensor, steps], axis=-1)


def raw_feature_columns(
    grad: Array,
    param: Array,
    momentum: Sequence[Array],
    second_moment: Sequence[Array],
    config: LOptConfig,
) -> list[Array]:
    """The ``2 + 4K`` columns of :func:`tensor_features` before their normalization, as a
    list (each of ``param.shape``); ``m/r`` multiplies by ``1/r``."""
    m = list(momentum)
    r = [jnp.sqrt(v + config.rms_eps) for v in second_moment]
    inv_r = [1 / x for x in r]
    return [grad, param, *m, *r, *(x * i for x, i in zip(m, inv_r, strict=True)), *inv_r]


def feature_columns(
    grad: Array,
    param: Array,
    momentum: Sequence[Array],
    second_moment: Sequence[Array],
    config: LOptConfig,
) -> list[Array]:
    """:func:`tensor_features` as a list of ``2 + 4K`` normalized columns (each of
    ``param.shape``), in a form XLA fuses into its consumers: each column has its own plain
    reduction, and the normalization multiplies by two per-column factors
    (:func:`normalized_columns`)."""
    columns_fn = functools.partial(raw_feature_columns, config=config)
    inputs = (grad, param, tuple(momentum), tuple(second_moment))
    return normalized_columns(columns_fn, inputs, range(param.ndim), config.norm_eps)


def mlp_layers(
    meta_params: MetaParams, count: Array, config: LOptConfig, dtype
) -> list[tuple[Array, Array]]:
    """The MLP's ``(kernel, bias)`` pairs for the per-tensor columns: the step features
    (:func:`time_features` of ``count``) are the same for every coordinate, so their share
    of the first layer is folded into its bias."""
    names = [f"hidden_{i}" for i in range(len(config.hidden_sizes))] + ["out"]
    layers = [(meta_params[k]["kernel"], meta_params[k]["bias"]) for k in names]
    n = config.num_tensor_features
    steps = time_features(count, config.time_scales, dtype)
    kernel, bias = layers[0]
    layers[0] = (kernel[:n], bias + steps @ kernel[n:])
    return layers


def _step_head(exp_mult: float, step_mult: float, direction: Array, magnitude: Array) -> Array:
    return direction * jnp.exp(exp_mult * magnitude) * step_mult


def step_from_output(output: Array, config: LOptConfig) -> Array:
    """``d * exp(exp_mult * m) * step_mult`` from the MLP output ``(..., [d, m])``."""
    direction, magnitude = output[..., 0], output[..., 1]
    return direction * jnp.exp(config.exp_mult * magnitude) * config.step_mult


@dataclasses.dataclass(frozen=True)
class MLPLOpt(common.NetOptimizer):
    """The learned optimizer: an architecture (:class:`LOptConfig`) and pure functions.

    Meta-parameters are not stored here: they are the first argument of :meth:`update`.
    ``net(key)`` is a freshly initialized :class:`MLPNet` (Flax default init, zero
    biases); ``init_meta_params``, ``graphdef``, ``meta_params_shapes`` and ``apply``
    come from :class:`~l2l_jax.learned.common.NetOptimizer`.

    Example::

        lopt = MLPLOpt()
        meta_params = lopt.init_meta_params(jax.random.key(0))
        state = lopt.init(params)
        updates, state = lopt.update(meta_params, grads, state, params)
        params = optax.apply_updates(params, updates)
    """

    config: LOptConfig = dataclasses.field(default_factory=LOptConfig)

    Net: ClassVar[type[MLPNet]] = MLPNet
    kind: ClassVar[str] = "mlp"

    def init(self, params: chex.ArrayTree) -> LOptState:
        """Zero accumulators for ``params`` (same dtypes, one tree per decay), ``count = 0``."""
        zeros = tuple(jax.tree.map(jnp.zeros_like, params) for _ in self.config.decays)
        return LOptState(
            momentum=zeros,
            second_moment=zeros,
            count=jnp.zeros((), jnp.int32),
        )

    def update(
        self,
        meta_params: MetaParams,
        grads: chex.ArrayTree,
        state: LOptState,
        params: chex.ArrayTree,
    ) -> tuple[chex.ArrayTree, LOptState]:
        """One step: ``(updates, new_state)`` with ``updates = -step`` (optax convention).

        Pure and jit-able; differentiable in ``meta_params`` (and in ``grads``/``params``
        unless ``config.first_order``). The accumulators are updated first and the
        features use the new ones (so the first step already sees ``m_k = (1-b_k) g``).

        Equal (to rounding) to ``step_from_output(apply(meta_params, features(...)))``
        per tensor, computed for speed: the features as separate columns and the MLP as
        one fused elementwise loop (:func:`~l2l_jax.learned.common.fused_mlp`, whose
        reverse pass recomputes the activations with matrix products), and each tensor's
        step under ``jax.checkpoint``, so reverse mode through an unroll stores only the
        step's inputs.

        Each tensor has its own fused loop, on purpose: one MLP pass over all tensors at
        once (their feature columns concatenated, the steps split back) measured 1.6-4x
        slower on CPU, as the concatenation and the per-tensor normalization of a flat
        vector cost more than the loops saved (``docs/performance.md``).
        """
        chex.assert_trees_all_equal_shapes(grads, params)
        for accumulators in (*state.momentum, *state.second_moment):
            chex.assert_trees_all_equal_structs(accumulators, params)
        cfg = self.config
        if cfg.first_order:
            grads = jax.lax.stop_gradient(grads)
        n = cfg.num_tensor_features
        head = functools.partial(_step_head, cfg.exp_mult, cfg.step_mult)

        # Rematerialized in reverse mode: only the inputs are kept per step.
        @jax.checkpoint
        def one_tensor(meta_params, count, g, p, ms, vs):
            g = jnp.asarray(g, jnp.result_type(p))
            mv = [accumulate(*a, g, b) for *a, b in zip(ms, vs, cfg.decays, strict=True)]
            m, v = tuple(x[0] for x in mv), tuple(x[1] for x in mv)
            if math.prod(p.shape) < common.MIN_FUSED_SIZE:  # tiny: the plain form
                x = tensor_features(g, p, m, v, cfg)
                columns = [x[..., i] for i in range(n)]
            else:
                columns = feature_columns(g, p, m, v, cfg)
            layers = mlp_layers(meta_params, count, cfg, columns[0].dtype)
            step = common.fused_mlp(head, layers, columns, cfg.backward_dtype)
            return (-step).astype(jnp.result_type(p)), m, v

        k = len(cfg.decays)
        out = jax.tree.map(
            lambda g, p, *mv: one_tensor(meta_params, state.count, g, p, mv[:k], mv[k:]),
            grads,
            params,
            *state.momentum,
            *state.second_moment,
        )
        treedef = jax.tree.structure(params)
        leaves = treedef.flatten_up_to(out)
        updates = jax.tree.unflatten(treedef, [leaf[0] for leaf in leaves])
        momentum, second_moment = (
            tuple(jax.tree.unflatten(treedef, [leaf[i][j] for leaf in leaves]) for j in range(k))
            for i in (1, 2)
        )
        new_state = LOptState(momentum=momentum, second_moment=second_moment, count=state.count + 1)
        return updates, new_state


def descent_init(
    lopt: MLPLOpt,
    meta_params: MetaParams,
    feature: str = "momentum/rms[0.9]",
    scale: float = 1.0,
) -> MetaParams:
    """``meta_params`` changed so the MLP starts as a descent method on one feature.

    Two units of every hidden layer carry ``relu(x)`` and ``relu(-x)`` of the input
    feature ``x`` (by name, :func:`feature_names`; default: the Adam-like direction
    ``m/r`` at decay 0.9, the gradients' EMA over the root of their squares' EMA, both
    with decay 0.9) and nothing else; the direction output reads ``scale * (relu(x)
    - relu(-x)) = scale * x`` from them and nothing else, and the magnitude output is 0.
    So the untrained optimizer's update is exactly ``-step_mult * scale * x``, where ``x``
    is normalized by its RMS over each tensor (:func:`tensor_features`): with the default
    feature, an Adam step (``b1 = b2 = 0.9``, no bias correction) rescaled to RMS
    ``step_mult * scale`` over each tensor. The other hidden units keep their random
    weights, so the meta-gradient reaches every weight (their output weights start at
    zero, not their gradients).

    A warm start (Metz et al. 2019 meta-train from a random MLP for ~10^4 meta-steps; a
    short CPU budget cannot), documented wherever it is used; both meta-objectives of a
    comparison start from the same point.
    """
    names = feature_names(lopt.config)
    if feature not in names:
        raise ValueError(f"feature must be one of {names}, got {feature!r}.")
    if any(h < 2 for h in lopt.config.hidden_sizes):
        raise ValueError(
            f"descent_init needs >= 2 units per hidden layer, got {lopt.config.hidden_sizes}."
        )
    input_checks.meta_params("meta_params", meta_params, lopt)
    index = names.index(feature)
    out = jax.tree.map(jnp.asarray, meta_params)
    pos_neg = jnp.asarray([1.0, -1.0])
    for i in range(len(lopt.config.hidden_sizes)):
        layer = out[f"hidden_{i}"]
        kernel = layer["kernel"].at[:, :2].set(0.0)
        if i == 0:
            kernel = kernel.at[index, :2].set(pos_neg)
        else:  # relu(u0 - u1) = relu(x), relu(u1 - u0) = relu(-x)
            kernel = kernel.at[:2, :2].set(jnp.asarray([[1.0, -1.0], [-1.0, 1.0]]))
        out[f"hidden_{i}"] = {"kernel": kernel, "bias": layer["bias"].at[:2].set(0.0)}
    kernel = jnp.zeros_like(out["out"]["kernel"]).at[:2, 0].set(scale * pos_neg)
    out["out"] = {"kernel": kernel, "bias": jnp.zeros_like(out["out"]["bias"])}
    return out
