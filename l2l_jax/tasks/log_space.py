"""Log-space losses: ``log f(w)`` where ``f(w)`` itself over- or underflows.

Log objectives (``log_loss``, ``log_tbv``; Wang et al. 2021) take the log of a loss. A
diverging run's loss overflows (a quadratic's at ``|w| ~ 2^64`` in float32) and a
converging run's underflows to 0, while its log is a moderate number. A task declares how
to compute the log without forming the loss:

* ``log_loss(params)`` (:class:`LogLossTask`): ``log(loss(params))``;
* ``log_valid_loss(params)`` (:class:`LogValidLossTask`): ``log(valid_loss(params))``,

each finite (and with a finite gradient) wherever ``params`` is finite and the loss is
positive, within the limits the task states. ``grad="logscaled"``
(:mod:`l2l_jax.metagrad.logscaled`) asks for them through :func:`log_loss_fn`, never by
the task's type; a task without them gets ``log`` of its loss, ``+inf`` where the loss
overflows and ``-inf`` where it underflows to 0.

Built in, with the helpers below:

* :func:`log_homogeneous`: a loss homogeneous of degree ``p`` (``f(c w) = c^p f(w)``,
  :class:`~l2l_jax.tasks.Quadratic` and :class:`~l2l_jax.tasks.NQM`, ``p = 2``) is
  evaluated at ``w_hat = 2^(-e) w``, ``2^e`` the power of two of ``max |w|``: ``log f(w) =
  log f(w_hat) + p e log 2``, exact scaling. Covered: every finite ``w`` whose largest
  entry is a normal float (``|w|_max >= 2^-126`` in float32). Not covered: a smaller ``w``
  (it is not scaled up: ``f`` underflows and the log is ``-inf``), and ``w = 0``
  (``log 0 = -inf``, as it should be).
* :func:`log_half_mse`: least squares ``||y - X w||^2 / (2 n)``
  (:class:`~l2l_jax.tasks.LeastSquares`, training and validation): not homogeneous in
  ``w``, so the scale is factored out twice: ``w`` by its power of two (down only, so
  ``X w`` cannot overflow), then the residual ``r`` by its own. Covered: every finite
  ``w``, with ``f`` over- or underflowing, down to residuals whose largest entry is a
  normal float. Not covered: the rounding of ``r`` itself (absolute error about ``u (|X|
  |w| + |y|)``, as in ``loss``), which bounds how small a residual is resolved; a
  residual below the smallest normal float (``log`` gives ``-inf``); and, once ``2^e``
  exceeds ``|y| 2^126`` in float32 (``y / 2^e`` subnormal), the bits of ``y`` below the
  smallest normal, far below the rounding of ``X w / 2^e``.
* :func:`log_mean_cross_entropy`: the mean softmax cross-entropy from the logits
  (:class:`~l2l_jax.tasks.MnistMLP`, training and validation). Each example's loss is
  ``softplus(a_i)`` with ``a_i = log sum_(j != y_i) exp(z_j - z_(y_i))``, its log is taken by
  :func:`log_softplus` (finite for every finite ``a``; about ``a`` where the loss
  underflows), and the mean by a log-sum-exp. Covered: logits ``z`` with finite differences
  ``z_j - z_y`` (``|z| < 1.7e38`` in float32), including losses that underflow to 0
  (``log_softmax`` rounds a correct example's loss to 0 once its margin exceeds about
  ``17 + log(C - 1)`` in float32, ``37 + log(C - 1)`` in float64, ``C`` classes) and
  means whose sum overflows. Not covered: the network itself overflowing (an activation
  or a logit ``inf`` as the weights grow), which no evaluation of the loss can undo.

A task of your own opts in by defining the method, for instance ``def log_loss(self, w):
return log_space.log_homogeneous(self.loss, w, degree=2)`` for a loss homogeneous of
degree 2 (``docs/extending.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import chex
import jax
import jax.numpy as jnp

from l2l_jax.closed_forms.scaling import exponent, ldexp, max_abs

Array = jax.Array


@runtime_checkable
class LogLossTask(Protocol):
    """A task that computes the log of its training loss in log space."""

    def log_loss(self, params: chex.ArrayTree) -> Array:
        """``log(loss(params))``, finite where ``params`` is finite and the loss positive
        (within the task's stated limits), even where ``loss(params)`` over- or
        underflows; differentiable, with a finite gradient there."""
        ...


@runtime_checkable
class LogValidLossTask(Protocol):
    """A task that computes the log of its validation loss in log space."""

    def log_valid_loss(self, params: chex.ArrayTree) -> Array:
        """``log(valid_loss(params))``, as :meth:`LogLossTask.log_loss`."""
        ...


def log_loss_fn(task, loss_of: str = "train") -> Callable[[chex.ArrayTree], Array]:
    """``params -> log f(params)`` with ``f`` the task's training (``loss_of="train"``) or
    validation (``"valid"``) loss: the task's log-space method where it declares one
    (:class:`LogLossTask`, :class:`LogValidLossTask`), else ``log`` of the loss."""
    if loss_of == "valid":
        if isinstance(task, LogValidLossTask):
            return task.log_valid_loss
        return lambda params: jnp.log(task.valid_loss(params))
    if isinstance(task, LogLossTask):
        return task.log_loss
    return lambda params: jnp.log(task.loss(params))


def _log_two(dtype) -> Array:
    return jnp.log(jnp.asarray(2.0, dtype))


def log_homogeneous(loss: Callable[[chex.ArrayTree], Array], params, degree: int) -> Array:
    """``log loss(params)`` for a loss homogeneous of degree ``degree`` (``loss(c w) = c^p
    loss(w)`` for every ``c > 0``): ``log loss(w_hat) + p e log 2`` with ``w_hat = 2^(-e)
    params``, ``max |w_hat|`` in ``[1/2, 1)`` (exact scaling; module doc)."""
    e = exponent(jax.lax.stop_gradient(max_abs(params)))
    log_hat = jnp.log(loss(ldexp(params, -e)))
    return log_hat + degree * e.astype(log_hat.dtype) * _log_two(log_hat.dtype)


def log_half_mse(x: Array, y: Array, w: Array) -> Array:
    """``log((1/(2n)) sum_i (y_i - <w, x_i>)^2)`` in log space (module doc): with ``s =
    2^max(e_w, 0)`` and ``r_hat = y / s - X (w / s)`` (the residual over ``s``, exact
    scaling), ``2^e_r`` the power of two of ``max |r_hat|``, it is ``log(mean((r_hat /
    2^e_r)^2) / 2) + 2 (log s + e_r log 2)``."""
    e_w = jnp.maximum(exponent(jax.lax.stop_gradient(max_abs(w))), 0)  # scale down only
    r = ldexp(y, -e_w) - x @ ldexp(w, -e_w)
    e_r = exponent(jax.lax.stop_gradient(max_abs(r)))
    log_hat = jnp.log(0.5 * jnp.mean(jnp.square(ldexp(r, -e_r))))
    return log_hat + 2 * (e_w + e_r).astype(log_hat.dtype) * _log_two(log_hat.dtype)


def log_softplus(a: Array) -> Array:
    """``log(log(1 + e^a))``, finite for every finite ``a`` (and its gradient too):
    ``log(softplus(a))`` for ``a >= 0`` (``softplus >= log 2``), ``log(log1p(e^a))`` below,
    and ``a`` itself for ``a < -38`` (``e^a < 3.2e-17``), where ``log(log1p(e^a)) = a - e^a
    / 2 + ...`` rounds to ``a`` in float32 and float64 alike, so ``e^a`` never
    underflows."""
    a = jnp.asarray(a)
    tiny = a < -38.0
    negative = a < 0
    a_mid = jnp.where(negative & ~tiny, a, -1.0)  # the branches not taken see safe inputs
    a_top = jnp.where(negative, 0.0, a)
    mid = jnp.log(jnp.log1p(jnp.exp(a_mid)))
    top = jnp.log(jax.nn.softplus(a_top))
    return jnp.where(tiny, a, jnp.where(negative, mid, top))


def log_mean_cross_entropy(logits: Array, labels: Array) -> Array:
    """``log`` of the mean over rows of the softmax cross-entropy ``-log softmax(z)[y]``,
    in log space (module doc): per row ``a = log sum_(j != y) e^(z_j - z_y)``, the row's
    loss is ``softplus(a)``, its log :func:`log_softplus`, and the mean a log-sum-exp less
    ``log n``. ``logits (n, C)``, ``labels (n,)`` integers."""
    labels = jnp.asarray(labels).astype(jnp.int32)[:, None]
    margins = logits - jnp.take_along_axis(logits, labels, axis=-1)  # z_j - z_y
    others = jnp.arange(logits.shape[-1]) != labels
    log_odds = jax.nn.logsumexp(margins, axis=-1, where=others)
    log_terms = log_softplus(log_odds)
    return jax.nn.logsumexp(log_terms) - jnp.log(jnp.asarray(logits.shape[0], log_terms.dtype))


__all__ = [
    "LogLossTask",
    "LogValidLossTask",
    "log_half_mse",
    "log_homogeneous",
    "log_loss_fn",
    "log_mean_cross_entropy",
    "log_softplus",
]
