"""Truncated backpropagation with the log-scaled reverse pass (:mod:`l2l_jax.metagrad.logscaled`).

The segment's meta-loss and its gradient are those of :mod:`.tbptt` (the runs' states at the
segment start are constants), but the reverse pass carries the adjoint of the ``B`` runs and
the summed meta-gradient at one shared power-of-two scale (``mu = 2^e mu_hat``, ``G = 2^E
G_hat``; :func:`~l2l_jax.metagrad.logscaled.adjoint_step`): each inner step is one
:func:`jax.vjp` at its stored state, applied to the scaled adjoint and to the step's
meta-loss terms (cotangent ``1 / (K B)`` each), brought to a common exponent. The result is
the meta-gradient as a direction and a log-norm, finite wherever the forward iterates and
their losses are, where plain reverse mode overflows to inf or NaN once the adjoint outgrows
float32 (about ``88.7 / lambda_1`` steps for a top Lyapunov exponent ``lambda_1 > 0``,
:mod:`l2l_jax.analysis.lyapunov`).

What the meta-optimizer receives: the float gradient ``2^E G_hat`` (the TBPTT gradient up to
rounding) while its norm is at most ``max_norm``, and ``direction * max_norm`` above. The
default ``max_norm`` is ``2^60`` in float32 (``2^(maxexp // 2 - 4)`` of the meta-parameters'
dtype): the largest power of two whose square stays finite with a margin of ``2^8``, so a
meta-optimizer that squares the gradient (``clip_by_global_norm``'s norm, Adam's and
RMSProp's second moments) never overflows. Plain TBPTT hands such gradients over as they are:
an inf or NaN entry skips the meta-step, and a finite one of norm above ``sqrt(max float32)``
(about ``1.8e19``) makes ``clip_by_global_norm``'s norm inf and the update silently zero.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp

from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.inner.unroll import remat_segment
from l2l_jax.metagrad import logscaled
from l2l_jax.tasks.family import as_family
from l2l_jax.truncated.runs import InnerState, advance, restart_where
from l2l_jax.truncated.tasks import SegmentConfig

Array = jax.Array
MetaParams = chex.ArrayTree
Step = Callable[[MetaParams, InnerState], tuple[InnerState, dict[str, Array]]]


def default_max_norm(meta_params: MetaParams) -> float:
    """``2^(maxexp // 2 - 4)`` of the meta-parameters' dtype (``2^60`` in float32): the
    largest power of two whose square times ``2^8`` is finite (module doc)."""
    dtype = jnp.result_type(*jax.tree.leaves(meta_params))
    return 2.0 ** (jnp.finfo(dtype).maxexp // 2 - 4)


def batched_step(family, optimizer: InnerOptimizer, config: SegmentConfig) -> Step:
    """``(meta_params, runs) -> (new_runs, terms)``: one inner step of the ``B`` runs with
    the restart at the horizon, the body of :func:`~l2l_jax.truncated.runs.segment`
    (``batch_ndim=1``): :func:`~.runs.advance`, then :func:`~.runs.restart_where` under a
    :func:`jax.lax.cond` on "any run restarts now"."""
    step = jax.vmap(advance, in_axes=(None, 0, None, None, None))
    restart = jax.vmap(restart_where, in_axes=(0, 0, None, None, None))

    def body(meta_params, runs):
        advanced, terms, done = step(meta_params, runs, family, optimizer, config)
        new = jax.lax.cond(
            jnp.any(done),
            lambda: restart(done, advanced, family, optimizer, meta_params),
            lambda: advanced,
        )
        return new, {**terms, "reset": done}

    return body


def _split(runs: InnerState) -> tuple[list, Callable[[list], InnerState]]:
    """The float leaves of ``(params, opt_state)`` (what the adjoint is carried for) and
    the function that puts new ones back into ``runs``; the step counter, the keys and the
    task draw do not depend on the meta-parameters within a segment."""
    leaves, treedef = jax.tree.flatten((runs.params, runs.opt_state))
    is_float = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves]
    floats = [x for x, f in zip(leaves, is_float, strict=True) if f]

    def rebuild(new_floats: list) -> InnerState:
        it = iter(new_floats)
        merged = [next(it) if f else x for x, f in zip(leaves, is_float, strict=True)]
        params, opt_state = jax.tree.unflatten(treedef, merged)
        return runs.replace(params=params, opt_state=opt_state)

    return floats, rebuild


def _states(step: Step, meta_params, runs: InnerState, length: int):
    """``(runs after length steps, (the input runs of every step, their terms))``."""

    def body(carry, _):
        new, terms = step(meta_params, carry)
        return new, (carry, terms)

    return jax.lax.scan(body, runs, None, length=length)


def _forward(step: Step, meta_params, runs: InnerState, length: int, every: int | None):
    """``(new_runs, terms, stored)``: ``terms`` of all ``length`` steps (leading axis
    ``length``), and every step's input runs (``every=None``) or those at the start of
    every ``every``-step piece and of the remainder (rematerialized in the backward pass)."""
    if every is None:
        new, (states, terms) = _states(step, meta_params, runs, length)
        return new, terms, states
    pieces = length // every

    def piece(carry, _):
        new, (_, terms) = _states(step, meta_params, carry, every)
        return new, (carry, terms)

    new, (bounds, terms) = jax.lax.scan(piece, runs, None, length=pieces)
    terms = jax.tree.map(lambda x: x.reshape((pieces * every, *x.shape[2:])), terms)
    tail_start = new
    if length > pieces * every:
        new, (_, tail) = _states(step, meta_params, new, length - pieces * every)
        terms = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), terms, tail)
    return new, terms, (bounds, tail_start)


def _pull_back(step: Step, meta_params, carry: tuple, states: InnerState, out, length: int):
    """The log-scaled adjoint recursion over ``length`` stored input runs (reversed):
    one :func:`jax.vjp` of ``(meta_params, floats of z_k) -> (floats of z_(k+1), meta-loss
    terms)`` per step, applied by :func:`~l2l_jax.metagrad.logscaled.adjoint_step` to the
    scaled adjoint and to ``out``, the terms' cotangent."""

    def body(carry, runs):
        floats, rebuild = _split(runs)

        def one(theta, fl):
            new, terms = step(theta, rebuild(fl))
            return _split(new)[0], terms["meta_loss"]

        _, pullback = jax.vjp(one, meta_params, floats)
        return logscaled.adjoint_step(pullback, carry, out), None

    return jax.lax.scan(body, carry, states, length=length, reverse=True)[0]


def _backward(step: Step, meta_params, carry, stored, out, length: int, every: int | None):
    """:func:`_pull_back` over the whole segment, recomputing each piece's states from
    its stored start when ``every`` is set (the remainder first: it is last in time)."""
    if every is None:
        return _pull_back(step, meta_params, carry, stored, out, length)
    bounds, tail_start = stored
    pieces = length // every
    rest = length - pieces * every
    if rest:
        states = _states(step, meta_params, tail_start, rest)[1][0]
        carry = _pull_back(step, meta_params, carry, states, out, rest)

    def piece(carry, start):
        states = _states(step, meta_params, start, every)[1][0]
        return _pull_back(step, meta_params, carry, states, out, every), None

    return jax.lax.scan(piece, carry, bounds, length=pieces, reverse=True)[0]


def segment_value_and_grad(
    meta_params: MetaParams,
    runs: InnerState,
    family,
    optimizer: InnerOptimizer,
    config: SegmentConfig,
) -> tuple[logscaled.LogScaledGrad, InnerState, dict[str, Array]]:
    """``(result, new_runs, aux)`` for one segment of the ``B`` runs: ``result.value`` is
    the meta-loss of :func:`~l2l_jax.truncated.runs.batched_segment` (the mean over the
    ``K`` steps and the ``B`` runs of the meta-loss terms) and the rest of ``result``
    (:class:`~l2l_jax.metagrad.logscaled.LogScaledGrad`) its gradient with respect to
    ``meta_params``, the TBPTT gradient, by the log-scaled reverse pass (module doc).
    ``aux`` holds ``train_loss`` and ``resets`` as TBPTT's. ``config.remat`` stores every
    ``s``-th step's runs and recomputes the others, as it does for TBPTT."""
    family = as_family(family)
    step = batched_step(family, optimizer, config)
    length = config.segment
    every = remat_segment(config.remat, length)
    new, terms, stored = _forward(step, meta_params, runs, length, every)
    loss = jnp.mean(jnp.mean(terms["meta_loss"], axis=0))
    batch = terms["meta_loss"].shape[1]
    # d loss / d (term of run b at step k) = 1 / (K B), at exponent 0
    out = (jnp.full((batch,), 1 / (length * batch), loss.dtype), jnp.zeros((), jnp.int32))
    mu, e_mu = [jnp.zeros_like(x) for x in _split(new)[0]], 0  # the last state is not scored
    carry = logscaled.adjoint_start(mu, e_mu, meta_params)
    _, _, g_hat, e_g = _backward(step, meta_params, carry, stored, out, length, every)
    aux = {
        "train_loss": jnp.mean(jnp.mean(terms["train_loss"], axis=0)),
        "resets": jnp.sum(terms["reset"]),
    }
    return logscaled.log_scaled_grad(loss, g_hat, e_g), new, aux


def capped_gradient(result: logscaled.LogScaledGrad, max_norm: float) -> tuple[MetaParams, Array]:
    """``(grad, capped)``: the float gradient ``result.grad`` where ``||g|| <= max_norm``,
    else ``result.direction * max_norm`` (finite, along ``g``; module doc); ``capped`` says
    which. Decided on ``result.log_norm``, so it holds where ``g`` overflows float32."""
    capped = result.log_norm > math.log(max_norm)
    grad = jax.tree.map(
        lambda g, d: jnp.where(capped, d * jnp.asarray(max_norm, d.dtype), g),
        result.grad,
        result.direction,
    )
    return grad, capped


def logscaled_tbptt_gradient(
    meta_params: MetaParams,
    runs: InnerState,
    task,
    optimizer: InnerOptimizer,
    config: SegmentConfig,
    max_norm: float | None = None,
) -> tuple[Array, MetaParams, InnerState, dict[str, Array]]:
    """Truncated backpropagation by the log-scaled reverse pass: ``(loss, grad, new_runs,
    aux)`` as :func:`~.tbptt.tbptt_gradient`, with ``grad`` from :func:`capped_gradient`
    (``max_norm=None``: :func:`default_max_norm`) and ``aux`` also holding
    ``log_grad_norm`` (``log ||g||``, finite where ``g`` overflows), ``grad_saturated``
    (``g`` overflowed float32: plain TBPTT's gradient would be non-finite) and
    ``grad_capped`` (``||g|| > max_norm``: ``grad`` is the direction times ``max_norm``)."""
    result, new, aux = segment_value_and_grad(meta_params, runs, task, optimizer, config)
    cap = default_max_norm(meta_params) if max_norm is None else max_norm
    grad, capped = capped_gradient(result, cap)
    aux = {
        **aux,
        "log_grad_norm": result.log_norm,
        "grad_saturated": result.saturated,
        "grad_capped": capped,
    }
    return result.value, grad, new, aux


@dataclasses.dataclass(frozen=True)
class LogScaledTBPTT:
    """:func:`logscaled_tbptt_gradient` as an :class:`~.estimator.Estimator`; its state is
    the runs, as :class:`~.tbptt.TBPTT`'s.

    Attributes:
      max_norm: the largest gradient norm handed to the meta-optimizer as it is; above
        it, the direction times ``max_norm``. ``None``: ``2^60`` in float32
        (:func:`default_max_norm`); e.g. ``config.clip`` makes it a clip by norm.
    """

    max_norm: float | None = None
    name: ClassVar[str] = "tbptt_logscaled"

    def __post_init__(self) -> None:
        if self.max_norm is not None and not (
            isinstance(self.max_norm, int | float)
            and not isinstance(self.max_norm, bool)
            and math.isfinite(self.max_norm)
            and self.max_norm > 0
        ):
            raise ValueError(
                f"LogScaledTBPTT.max_norm = {self.max_norm!r} must be a positive finite "
                "number, or None for 2^60 (float32)."
            )

    def init(self, runs: InnerState, meta_params: MetaParams, config: SegmentConfig):
        return runs

    def gradient(self, meta_params, state, key, task, optimizer, config):
        return logscaled_tbptt_gradient(meta_params, state, task, optimizer, config, self.max_norm)
