"""Pieces shared by learned optimizers: the network plumbing (:class:`NetOptimizer`),
checkpoints of (architecture, meta-parameters), decays parametrized in logit space and
the per-coordinate MLP as one fused elementwise loop (:func:`fused_mlp`).

:class:`~l2l_jax.learned.MLPLOpt` and :class:`~l2l_jax.learned.nominal.NominalLOpt`
inherit :class:`NetOptimizer`, and :mod:`l2l_jax.learned.mlp_lopt` and
:mod:`l2l_jax.learned.nominal` save and load through these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

Array = jax.Array
MetaParams = dict[str, Any]

_PARAMS, _CONFIG = "meta_params", "config"

# Decays are sigmoid(logit) with |logit| <= MAX_LOGIT: in [3.1e-7, 1 - 3.1e-7], so they
# stay strictly inside (0, 1) even in float32 (whose spacing just below 1 is 6e-8).
MAX_LOGIT = 15.0


def logit(p: float) -> float:
    """``log(p / (1 - p))`` of a probability in ``(0, 1)`` (in float64, on the host)."""
    return math.log(p) - math.log1p(-p)


def decay_terms(base: Array, offset: Array) -> tuple[Array, Array, Array]:
    """``(b, 1 - b, log b)`` for ``b = sigmoid(base + offset)``, logit clipped to
    ``[-MAX_LOGIT, MAX_LOGIT]``.

    ``1 - b = sigmoid(-z)`` and ``log b = log_sigmoid(z)`` are computed directly, so they
    keep full relative precision when ``b`` is close to 1 (``1 - 0.999`` is not a
    difference of two rounded numbers).
    """
    z = jnp.clip(base + offset, -MAX_LOGIT, MAX_LOGIT)
    return jax.nn.sigmoid(z), jax.nn.sigmoid(-z), jax.nn.log_sigmoid(z)


Layers = tuple[tuple[Array, Array], ...]


def dense_columns(x: Sequence[Array], kernel: Array, bias: Array) -> list[Array]:
    """``y_j = bias_j + sum_i x_i kernel_ij`` on feature columns ``x_i`` (arrays of one
    shape): one scalar multiply-add per weight, unrolled at trace time."""
    out = []
    for j in range(kernel.shape[1]):
        acc = x[0] * kernel[0, j] + bias[j]
        for i in range(1, len(x)):
            acc = acc + x[i] * kernel[i, j]
        out.append(acc)
    return out


def mlp_columns(layers: Sequence[tuple[Array, Array]], x: Sequence[Array]) -> list[Array]:
    """A ReLU MLP (``layers``: ``(kernel, bias)`` pairs, the last one linear) on feature
    columns: a list of input arrays of one shape -> a list of output arrays of that shape.

    Only elementwise operations, so XLA fuses the whole MLP into one loop over the
    coordinates (no ``(..., hidden)`` activations in memory). Its autodiff is slow (one
    reduction over all coordinates per weight): differentiate :func:`fused_mlp` instead.
    """
    h = list(x)
    for kernel, bias in layers[:-1]:
        h = [jax.nn.relu(a) for a in dense_columns(h, kernel, bias)]
    return dense_columns(h, *layers[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused_mlp(
    head: Callable, residual_dtype: str | None, layers: Layers, columns: tuple[Array, ...]
):
    return head(*mlp_columns(layers, columns))


def _fused_mlp_fwd(head, residual_dtype, layers, columns):
    # Saves only the inputs: the backward pass recomputes the activations (remat).
    return _fused_mlp(head, residual_dtype, layers, columns), (layers, columns)


def _store(x: Array, dtype: str | None) -> Array:
    """``x`` as the reverse pass keeps it: as it is (``dtype=None``) or rounded to ``dtype``."""
    return x if dtype is None else x.astype(dtype)


def _dot(a: Array, b: Array, dtype: str | None) -> Array:
    """``a @ b``; with a residual ``dtype``, both operands in it, accumulated in float32."""
    if dtype is None:
        return a @ b
    return jnp.dot(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _fused_mlp_bwd(head, residual_dtype, residuals, cotangent):
    # Coordinates-major matrices (coordinates, features): XLA's CPU dots over the long
    # coordinate axis run ~5x faster this way than as (features, coordinates) products.
    # residual_dtype (None: exact): X, H and dH kept in it, products accumulated in float32.
    rd = residual_dtype
    layers, columns = residuals
    shape = columns[0].shape
    x = jnp.stack([c.reshape(-1) for c in columns], axis=-1)  # (coordinates, features)
    inputs = [_store(x, rd)]  # each layer's input; ReLU's derivative read from its output
    for kernel, bias in layers[:-1]:
        inputs.append(_store(jax.nn.relu(_dot(inputs[-1], kernel, rd) + bias), rd))
    kernel, bias = layers[-1]
    out = _dot(inputs[-1], kernel, rd) + bias
    _, head_vjp = jax.vjp(head, *(out[:, k].reshape(shape) for k in range(out.shape[1])))
    delta = jnp.stack([d.reshape(-1) for d in head_vjp(cotangent)], axis=-1)  # d loss / d out
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        kernel, bias = layers[i]
        grads[i] = (
            _dot(inputs[i].T, delta, rd).astype(kernel.dtype),
            jnp.sum(delta, axis=0, dtype=None if rd is None else jnp.float32).astype(bias.dtype),
        )
        if i > 0 and kernel.shape[1] <= _ELEMENTWISE_BACKPROP:
            # delta @ W^T over a few outputs as multiply-adds, fused with ReLU's mask:
            # one pass over the activations instead of a product and a masking pass.
            back = sum(delta[:, k : k + 1] * kernel[:, k] for k in range(kernel.shape[1]))
            delta = _store(jnp.where(inputs[i] > 0, back, 0), rd)
        else:
            delta = _dot(delta, kernel.T, rd)
            if i > 0:
                delta = _store(jnp.where(inputs[i] > 0, delta, 0), rd)
    d_columns = tuple(delta[:, i].reshape(shape).astype(c.dtype) for i, c in enumerate(columns))
    return tuple(grads), d_columns


# Layers with at most this many outputs backpropagate as multiply-adds (see above).
_ELEMENTWISE_BACKPROP = 4


_fused_mlp.defvjp(_fused_mlp_fwd, _fused_mlp_bwd)


def fused_mlp(
    head: Callable[..., Any],
    layers: Sequence[tuple[Array, Array]],
    columns: Sequence[Array],
    residual_dtype: str | None = None,
) -> Any:
    """``head(*mlp_columns(layers, columns))``, fast in both directions.

    The forward pass is :func:`mlp_columns`, one fused elementwise loop. The reverse pass
    (a ``jax.custom_vjp``) keeps only the inputs and recomputes the activations as matrix
    products over all coordinates, ``A = X W`` (``X``: coordinates x features), then
    ``dW = X^T dA``, ``db = sum dA`` and ``dX = dA W^T``: a few matmuls instead of one
    reduction per weight. ``head`` (a function of the output columns, e.g. the step of a
    learned optimizer) is applied inside, so its derivative uses the recomputed outputs
    and the forward loop is not run again; it is static (not differentiated itself).

    Works under ``vmap`` (batched weights give batched matmuls) and ``jax.checkpoint``.
    Columns of fewer than :data:`MIN_FUSED_SIZE` coordinates use :func:`mlp_matmul`.
    Matches autodiff of the matmul form to rounding, except where a pre-activation is
    exactly 0 (both use ReLU's derivative 0 there).

    ``residual_dtype`` (opt-in; default ``None``, the exact pass above): the reverse pass
    keeps ``X``, the hidden activations and their cotangents in that dtype (e.g.
    ``"bfloat16"``, half the bytes of float32) and accumulates its products in float32.
    Each stored number is rounded once (relative error at most ``u = 2^-8`` for bfloat16);
    through a few layers and sums that cancel, the gradients change by a few ``u``
    (``tests/test_learned_optimizer.py``). ``benchmarks/estimators.py`` measures the
    meta-gradient's cosine and relative error against the exact pass, and its speed. On
    XLA's CPU backend a dot converts bfloat16 operands to float32 copies first, so there
    the bytes do not drop (``docs/performance.md``); the saving needs a backend whose
    products read bfloat16. The forward pass is unchanged.
    """
    layers = tuple((kernel, bias) for kernel, bias in layers)
    if math.prod(jnp.shape(columns[0])) < MIN_FUSED_SIZE:
        return head(*mlp_matmul(layers, columns))
    return _fused_mlp(head, residual_dtype, layers, tuple(columns))


# Tensors with fewer coordinates take the matmul form: their cost is negligible, and
# XLA's CPU code generator can exhaust memory on the unrolled loop of a tiny 1-D tensor
# (a bias of 5 entries: the whole MLP unrolled per coordinate).
MIN_FUSED_SIZE = 128


def mlp_matmul(layers: Sequence[tuple[Array, Array]], x: Sequence[Array]) -> list[Array]:
    """:func:`mlp_columns` as matrix products on the stacked ``(..., features)`` input
    (the plain form; its activations are materialized)."""
    h = jnp.stack(x, axis=-1)
    for kernel, bias in layers[:-1]:
        h = jax.nn.relu(h @ kernel + bias)
    out = h @ layers[-1][0] + layers[-1][1]
    return [out[..., i] for i in range(out.shape[-1])]


class NetOptimizer:
    """The meta-parameters of a learned optimizer as an ``nnx.Module``: a base class of
    frozen dataclasses with a hashable ``config`` field (the architecture).

    A subclass sets the class attributes ``Net`` (the module, built as
    ``Net(config, rngs=..., param_dtype=...)``) and ``kind`` (a short name: the inner
    optimizer is called ``f"{kind}_lopt"``, :func:`l2l_jax.learned.inner_optimizer`).
    The meta-parameters are ``nnx.to_pure_dict`` of the module's state: a plain nested
    dict of arrays.
    """

    Net: ClassVar[type[nnx.Module]]
    kind: ClassVar[str]
    config: Any  # the subclass's dataclass field

    def net(self, key: chex.PRNGKey, param_dtype=jnp.float32) -> nnx.Module:
        """A freshly initialized ``Net`` (Flax default init unless the module says
        otherwise)."""
        return _build_net(self.Net, self.config, key, param_dtype)

    def init_meta_params(self, key: chex.PRNGKey, param_dtype=jnp.float32) -> MetaParams:
        """Initial meta-parameters: ``nnx.split(net)[1]`` as a plain nested dict."""
        return _init_meta_params(self.Net, self.config, key, param_dtype)

    @property
    def graphdef(self) -> nnx.GraphDef:
        """The static structure of ``Net`` (no arrays allocated; cached per config)."""
        return _graphdef(self.Net, self.config)

    @property
    def meta_params_shapes(self) -> MetaParams:
        """``jax.ShapeDtypeStruct`` tree of the meta-parameters (float32; cached per
        config)."""
        return _meta_params_shapes(self.Net, self.config)

    def apply(self, meta_params: MetaParams, inputs: Array) -> Array:
        """The network with weights ``meta_params`` on ``(..., num_features)`` inputs."""
        return nnx.merge(self.graphdef, meta_params)(inputs)

    def as_inner_optimizer(self, batch_size: int | None = None) -> LearnedInnerOptimizer:
        """This optimizer as an :class:`~l2l_jax.inner.InnerOptimizer` whose hyperparameters
        are its meta-parameters (how ``truncated`` and ``inner.unroll`` take it, without
        knowing learned optimizers)."""
        return LearnedInnerOptimizer(lopt=self, batch_size=batch_size)


@dataclasses.dataclass(frozen=True)
class LearnedInnerOptimizer:
    """A learned optimizer as an :class:`~l2l_jax.inner.InnerOptimizer`: its
    hyperparameters are its meta-parameters.

    ``unroll(task, inner_optimizer(lopt), meta_params, steps)`` runs the learned optimizer;
    ``metagrad.meta_objective(..., grad="autodiff")`` differentiates through it.
    """

    lopt: NetOptimizer
    batch_size: int | None = None
    hparam_names: tuple[str, ...] = ("meta_params",)

    @property
    def name(self) -> str:
        """``f"{lopt.kind}_lopt"``: ``"mlp_lopt"`` or ``"nominal_lopt"``."""
        return f"{self.lopt.kind}_lopt"

    def hparams(self, meta_params: MetaParams | None = None, **values: Any) -> MetaParams:
        """The hyperparameters are the meta-parameters themselves (no defaults)."""
        if meta_params is None or values:
            raise ValueError("pass the learned optimizer's meta-parameters: hparams(meta_params).")
        return meta_params

    def as_dict(self, hparams: MetaParams) -> dict[str, MetaParams]:
        """Check that ``hparams`` has the meta-parameters' structure and shapes."""
        try:
            chex.assert_trees_all_equal_shapes(hparams, self.lopt.meta_params_shapes)
        except (AssertionError, ValueError) as err:
            raise TypeError(
                f"{self.name} takes its meta-parameters (lopt.init_meta_params(key)) as "
                f"hyperparameters: {err}"
            ) from None
        return {"meta_params": hparams}

    def init(self, params, hparams: MetaParams):
        """Accumulators for ``params`` (the meta-parameters are not needed)."""
        return self.lopt.init(params)

    def update(self, grads, state, params, hparams: MetaParams):
        """One step: ``(new_params, new_state)``."""
        updates, state = self.lopt.update(hparams, grads, state, params)
        return optax.apply_updates(params, updates), state


def _build_net(net: type[nnx.Module], config: Any, key: chex.PRNGKey, param_dtype) -> nnx.Module:
    return net(config, rngs=nnx.Rngs(params=key), param_dtype=param_dtype)


def _init_meta_params(net: type[nnx.Module], config: Any, key: chex.PRNGKey, param_dtype):
    return nnx.to_pure_dict(nnx.split(_build_net(net, config, key, param_dtype))[1])


@functools.lru_cache(maxsize=64)
def _graphdef(net: type[nnx.Module], config: Any) -> nnx.GraphDef:
    abstract = nnx.eval_shape(lambda: net(config, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]


@functools.lru_cache(maxsize=64)
def _meta_params_shapes(net: type[nnx.Module], config: Any) -> MetaParams:
    return jax.eval_shape(
        lambda key: _init_meta_params(net, config, key, jnp.float32), jax.random.key(0)
    )


def save_checkpoint(
    path: str | Path, meta_params: MetaParams, config: Mapping[str, Any], shapes: MetaParams
) -> Path:
    """Write ``meta_params`` and the JSON ``config`` as an orbax checkpoint (atomic).

    ``shapes`` is the expected ``ShapeDtypeStruct`` tree (checked before writing). The
    directory must not exist yet (orbax writes a temporary one and renames it).
    """
    import orbax.checkpoint as ocp

    chex.assert_trees_all_equal_shapes(meta_params, shapes)
    path = Path(path).absolute()
    if path.exists():
        raise ValueError(
            f"{path} already exists: a learned-optimizer checkpoint is written to a new "
            "folder (atomically) and never over another; delete it or pick another path."
        )
    meta_params = jax.tree.map(np.asarray, meta_params)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            path,
            args=ocp.args.Composite(
                **{
                    _PARAMS: ocp.args.StandardSave(meta_params),
                    _CONFIG: ocp.args.JsonSave(dict(config)),
                }
            ),
        )
    return path


def load_config(path: str | Path) -> dict[str, Any]:
    """The JSON ``config`` item of a checkpoint written by :func:`save_checkpoint`."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no learned-optimizer checkpoint at {path}.")
    with _damaged(path, _CONFIG), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(path, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))
    if not isinstance(restored[_CONFIG], Mapping):
        raise ValueError(f"{path}: the checkpoint's {_CONFIG!r} item is not a JSON object.")
    return dict(restored[_CONFIG])


@contextlib.contextmanager
def _damaged(path: Path, item: str):
    """Turn orbax's and json's errors on a folder that is not a (complete) checkpoint into
    one ``ValueError`` that names the folder and the missing or unreadable item."""
    try:
        yield
    except (KeyError, ValueError, FileNotFoundError, OSError) as err:
        raise ValueError(
            f"{path} is not a readable learned-optimizer checkpoint (its {item!r} item is "
            f"missing or damaged: {type(err).__name__}: {err}); point to a folder written by "
            "learned.save, or write one again."
        ) from err


def load_meta_params(path: str | Path, shapes: MetaParams) -> MetaParams:
    """The ``meta_params`` item of a checkpoint, checked against ``shapes``."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    with _damaged(path, _PARAMS), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(
            path, args=ocp.args.Composite(**{_PARAMS: ocp.args.StandardRestore()})
        )
    meta_params = jax.tree.map(jnp.asarray, restored[_PARAMS])
    chex.assert_trees_all_equal_shapes(meta_params, shapes)
    return meta_params
