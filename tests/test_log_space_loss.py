"""Log-space losses (``tasks.log_space``): ``task.log_loss`` / ``task.log_valid_loss``
equal ``log`` of the loss, and stay finite where the float32 loss over- or underflows.

References are independent of the code under test: the loss written out in numpy float64
(quadratic forms, least squares), and mpmath at 50 digits from the float32 logits
(cross-entropy, whose float64 loss underflows too). Bounds: where the float32 loss is
finite and positive, within 1e-5 of float64 ``log f`` (float32 rounding of a few-term
loss: about 1e-6 measured); out of range, within 1e-6 relative plus 1e-5 (the same
rounding, plus that of ``p e log 2`` added to the log). Gradients: 1e-5 of the largest
entry against float64 (quadratic forms, least squares), 1e-4 against float32 autodiff of
``log(loss)`` where that is finite (cross-entropy). ``grad="logscaled"`` asks the task for
it: a task of the test's own gets a finite log-loss meta-objective where ``f(w_t)``
overflows, and without the method the documented ``inf``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from l2l_jax import inner, metagrad, tasks
from l2l_jax.tasks import log_space

RTOL, ATOL = 1e-6, 1e-5  # log f out of float32 range (module doc)
IN_RANGE = 1e-5  # log f where the float32 loss is finite and positive


def _f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# -- homogeneous quadratic forms: Quadratic, NQM -----------------------------------------------


def _quadratic_form(case: str):
    """The task and its Hessian in float64."""
    if case == "quadratic":
        task = tasks.Quadratic.random(jax.random.key(0), dim=5)
        return task, np.asarray(task.hessian, np.float64)
    task = tasks.NQM.power_law(jax.random.key(1), dim=5, power=1.0, scale=2.0)
    return task, np.diag(np.asarray(task.curvature, np.float64))


def _assert_gradient(log_loss, w, ref, seed: int = 0):
    """``grad log_loss(w)`` within 1e-5 of ``ref`` relative to its largest entry (entries
    may cancel), pulled back with the cotangent ``2^seed`` as ``grad="logscaled"`` does
    (``grad log f ~ 1 / |w|`` is subnormal near ``|w| ~ 2^127``; XLA flushes it to 0)."""
    _, pullback = jax.vjp(log_loss, w)
    (grad,) = pullback(jnp.float32(2.0**seed))
    ref = np.asarray(ref, np.float64) * 2.0**seed
    np.testing.assert_allclose(np.asarray(grad), ref, rtol=1e-5, atol=1e-5 * np.max(np.abs(ref)))


@pytest.mark.parametrize("case", ["quadratic", "nqm"])
@pytest.mark.parametrize("log2_scale", [0, 20, -20, 70, 120, -80, -120])
def test_quadratic_forms(case, log2_scale):
    """``f(w) = 1/2 w^T H w`` at ``w = 2^s w_0``: float32 ``f`` overflows past ``s ~ 64``
    and underflows below ``s ~ -75``; ``log_loss`` stays equal to float64 ``log f``, and
    its gradient to ``H w / f``."""
    task, hessian = _quadratic_form(case)
    w = jnp.asarray(task.init_params()) * jnp.float32(2.0**log2_scale)
    w64 = np.asarray(w, np.float64)  # exact: the float32 iterate itself
    f64 = 0.5 * w64 @ hessian @ w64
    loss32 = float(task.loss(w))
    log_f = float(task.log_loss(w))
    if abs(log2_scale) <= 20:
        assert 0 < loss32 < np.inf
        assert log_f == pytest.approx(np.log(f64), abs=IN_RANGE)
        assert log_f == pytest.approx(np.log(loss32), abs=IN_RANGE)
    else:  # out of float32 range: the plain loss is unusable, the log-space one is right
        # 0 or inf where every term under/overflows alike; NaN where an overflowed ``H w``
        # meets terms of both signs (inf - inf), which depends on the summation order the
        # instruction set compiles (seen under --xla_cpu_max_isa=AVX).
        assert loss32 == 0.0 or not np.isfinite(loss32)
        assert not np.isfinite(float(jnp.log(task.loss(w))))
        assert log_f == pytest.approx(np.log(f64), rel=RTOL, abs=ATOL)
    _assert_gradient(task.log_loss, w, hessian @ w64 / f64, seed=log2_scale // 2)


# -- least squares: LeastSquares (training and validation) ------------------------------------


def _half_mse64(x, y, w) -> float:
    r = np.asarray(y, np.float64) - np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    return 0.5 * np.mean(r**2)


@pytest.mark.parametrize("log2_scale", [0, 40, 70, 120, 127])
def test_least_squares(log2_scale):
    """``||y - X w||^2 / (2 n)`` at ``w = 2^s u``: the float32 loss overflows past ``s ~
    62`` and at ``s = 127`` ``X w`` itself overflows float32 (asserted); ``log_loss`` and
    ``log_valid_loss`` stay equal to float64, and so does the gradient ``-X^T r / (n f)``."""
    task = tasks.LeastSquares.sample(jax.random.key(2), d=3, n_train=6, n_valid=4, sigma=0.5)
    u = jnp.asarray([1.5, -1.5, 1.5], jnp.float32)
    w = u * jnp.float32(2.0**log2_scale)
    w64 = np.asarray(w, np.float64)
    for x, y, loss, log_loss in (
        (task.x_train, task.y_train, task.loss, task.log_loss),
        (task.x_valid, task.y_valid, task.valid_loss, task.log_valid_loss),
    ):
        f64 = _half_mse64(x, y, w)
        loss32 = float(loss(w))
        if log2_scale <= 40:
            assert 0 < loss32 < np.inf
            assert float(log_loss(w)) == pytest.approx(np.log(f64), abs=IN_RANGE)
        else:
            assert not np.isfinite(loss32)
            assert float(log_loss(w)) == pytest.approx(np.log(f64), rel=RTOL, abs=ATOL)
        if log2_scale == 127:
            assert not np.all(np.isfinite(np.asarray(x @ w)))  # X w overflows float32
        r64 = np.asarray(y, np.float64) - np.asarray(x, np.float64) @ w64
        ref = -np.asarray(x, np.float64).T @ r64 / (len(r64) * f64)
        _assert_gradient(log_loss, w, ref, seed=log2_scale // 2)


def test_least_squares_residual_below_the_float32_range():
    """A residual of 1e-25 (``X w = 0`` exactly, ``y`` tiny): ``f = 1e-50`` underflows
    float32 to 0 and ``log f`` to ``-inf``; ``log_loss`` is float64's ``log f``."""
    x = jnp.asarray([[1.0, -1.0], [2.0, -2.0], [-3.0, 3.0]], jnp.float32)
    y = jnp.asarray([1e-25, -3e-25, 2e-25], jnp.float32)
    task = tasks.LeastSquares(x, y, jnp.zeros((0, 2)), jnp.zeros((0,)), jnp.ones(2), 0.0)
    w = jnp.asarray([0.5, 0.5], jnp.float32)
    assert float(task.loss(w)) == 0.0
    f64 = _half_mse64(x, y, w)
    assert float(task.log_loss(w)) == pytest.approx(np.log(f64), rel=RTOL, abs=ATOL)
    assert np.all(np.isfinite(np.asarray(jax.grad(task.log_loss)(w))))


# -- cross-entropy: MnistMLP -------------------------------------------------------------------

SIZES = (4, 5, 3)


def _mnist(labels=None, n=6) -> tasks.MnistMLP:
    x = np.asarray(jax.random.uniform(jax.random.key(3), (2 * n, SIZES[0])), np.float32)
    y = np.zeros(2 * n, np.int32) if labels is None else np.asarray(labels, np.int32)
    return tasks.MnistMLP(x[:n], y[:n], x[n:], y[n:], init_key=jax.random.key(4), sizes=SIZES)


def _logits64(params, images) -> np.ndarray:
    """The MLP in numpy float64."""
    h, last = np.asarray(images, np.float64), len(params) - 1
    for i in range(last + 1):
        layer = _f64(params[f"dense_{i}"])
        h = h @ layer["w"] + layer["b"]
        h = np.maximum(h, 0) if i < last else h
    return h


def _log_mean_ce_mpmath(logits, labels) -> float:
    """``log mean_i (log sum_j e^(z_ij) - z_(i,y_i))`` at 50 digits from the given logits."""
    with mpmath.workdps(50):
        total = mpmath.mpf(0)
        for row, label in zip(np.asarray(logits, np.float64), np.asarray(labels), strict=True):
            z = [mpmath.mpf(float(v)) for v in row]
            total += mpmath.log1p(
                sum(mpmath.exp(v - z[label]) for j, v in enumerate(z) if j != label)
            )
        return float(mpmath.log(total / len(logits)))


def _scale_output(params, factor: float):
    """The MLP with its output layer (weights and bias) times ``factor``: logits times it."""
    last = f"dense_{len(params) - 1}"
    layer = {k: v * jnp.float32(factor) for k, v in params[last].items()}
    return {**params, last: layer}


def test_cross_entropy_in_range():
    """Random labels and initial weights: ``log_loss`` / ``log_valid_loss`` equal float64
    ``log`` of the mean cross-entropy, and the gradient that of float32 ``log(loss)``."""
    labels = jax.random.randint(jax.random.key(5), (12,), 0, SIZES[-1])
    task = _mnist(labels)
    params = task.init_params()
    for images, y, loss, log_loss in (
        (task.train_images, task.train_labels, task.loss, task.log_loss),
        (task.valid_images, task.valid_labels, task.valid_loss, task.log_valid_loss),
    ):
        z = _logits64(params, images)
        shifted = z - z.max(-1, keepdims=True)
        ce = np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(len(y)), np.asarray(y)]
        assert float(log_loss(params)) == pytest.approx(np.log(ce.mean()), abs=IN_RANGE)
        ref = jax.jit(jax.grad(lambda p, loss=loss: jnp.log(loss(p))))(params)
        grad = jax.jit(jax.grad(log_loss))(params)
        chex.assert_trees_all_close(grad, ref, rtol=1e-4, atol=1e-6)


def _confident_case():
    """A task labelled by its own MLP's arg-max, with the smallest logit margin ``z_y -
    max_(j != y) z_j`` over the rows (float64) and the parameters."""
    task0 = _mnist()
    params = task0.init_params()
    z = _logits64(params, np.concatenate([task0.train_images, task0.valid_images]))
    task = _mnist(np.argmax(z, -1))
    top2 = np.sort(z, -1)[:, -2:]
    return task, params, float(np.min(top2[:, 1] - top2[:, 0]))


def test_cross_entropy_where_the_loss_underflows():
    """Every row classified with a margin of at least 60: float32 ``log_softmax`` rounds
    each loss to 0 (so does float64's, past a margin of about 37), ``log(loss)`` is
    ``-inf``; ``log_loss`` is finite and equals mpmath's, about ``-60``."""
    task, params, margin = _confident_case()
    params = _scale_output(params, 60.0 / margin)
    z32 = task.logits(params, task.train_images)  # the float32 logits the loss sees
    assert float(task.loss(params)) == 0.0 and float(jnp.log(task.loss(params))) == -np.inf
    z = _logits64(params, task.train_images)
    shifted = z - z.max(-1, keepdims=True)
    assert np.all(np.log(np.exp(shifted).sum(-1)) == 0.0)  # float64 rounds it to 0 too
    log_f = float(task.log_loss(params))
    ref = _log_mean_ce_mpmath(z32, task.train_labels)
    assert ref < -55
    assert log_f == pytest.approx(ref, rel=RTOL, abs=ATOL)
    grads = jax.tree.leaves(jax.grad(task.log_loss)(params))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_cross_entropy_where_the_mean_overflows():
    """The output layer scaled so that the logits reach ~1e38 with every row on its
    *least* likely class: each row's loss ~1e38 is finite, their float32 sum is not, so
    ``loss`` is ``inf``; ``log_loss`` is finite and equals mpmath's."""
    task, params, _ = _confident_case()
    hidden = np.asarray(task.train_images, np.float64)
    for i in range(len(params) - 1):
        layer = _f64(params[f"dense_{i}"])
        hidden = np.maximum(hidden @ layer["w"] + layer["b"], 0)
    out = _f64(params[f"dense_{len(params) - 1}"])
    bound = np.max(np.abs(hidden) @ np.abs(out["w"]) + np.abs(out["b"]))  # any partial sum
    params = _scale_output(params, -1.5e38 / bound)
    z32 = np.asarray(task.logits(params, task.train_images))
    assert np.all(np.isfinite(z32)) and float(np.max(np.abs(z32))) > 1e37
    assert float(task.loss(params)) == np.inf
    log_f = float(task.log_loss(params))
    assert log_f == pytest.approx(_log_mean_ce_mpmath(z32, task.train_labels), rel=RTOL)


def test_log_softplus_against_mpmath():
    """``log(log(1 + e^a))`` (one row's log-loss from its log-odds ``a``) and its derivative
    across the branches, in float32: 2 ulps of the value, 1e-6 of the derivative."""
    a = np.asarray([-300, -80, -38.5, -37.5, -20, -1, -1e-3, 0, 1e-3, 0.5413, 5, 80, 1e30])
    a32 = jnp.asarray(a, jnp.float32)
    value = np.asarray(log_space.log_softplus(a32), np.float64)
    slope = np.asarray(jax.vmap(jax.grad(log_space.log_softplus))(a32), np.float64)
    with mpmath.workdps(50):
        fn = lambda t: mpmath.log(mpmath.log1p(mpmath.exp(t)))
        points = [mpmath.mpf(float(v)) for v in np.asarray(a32, np.float64)]
        ref = np.asarray([float(fn(t)) for t in points])
        ref_slope = np.asarray([float(mpmath.diff(fn, t)) for t in points])
    np.testing.assert_allclose(value, ref, rtol=2.4e-7, atol=1e-7)
    np.testing.assert_allclose(slope, ref_slope, rtol=1e-6, atol=0)


# -- what grad="logscaled" asks of a task ------------------------------------------------------


@chex.dataclass(frozen=True)
class _Bowl:
    """``f(w) = 1/2 sum_i h_i w_i^2`` from ``w0``, written from scratch (no built-in type)."""

    h: jax.Array
    w0: jax.Array

    def init_params(self, key=None):
        return self.w0

    def loss(self, w):
        return 0.5 * jnp.sum(self.h * w**2)


@chex.dataclass(frozen=True)
class _LogBowl(_Bowl):
    def log_loss(self, w):
        return log_space.log_homogeneous(self.loss, w, degree=2)


def test_logscaled_asks_the_task():
    """GD past its stability boundary (``|1 - eta h_2| = 1.4``, 200 steps): ``f(w_t) ~
    1e58`` overflows float32. The task that declares ``log_loss`` gets the closed form
    ``(1/t) log f(w_t) = 2 log 1.4 + log(2) / t`` and its derivative ``8 / 1.4`` in eta; the
    same task without it gets the documented ``+inf``."""
    h, w0, eta, steps = jnp.asarray([1.0, 4.0]), jnp.asarray([1.0, 1.0]), 0.6, 200
    with_log, without = _LogBowl(h=h, w0=w0), _Bowl(h=h, w0=w0)
    assert isinstance(with_log, tasks.LogLossTask) and not isinstance(without, tasks.LogLossTask)
    F = metagrad.meta_objective(with_log, inner.gd(), "log_loss", steps=steps, grad="logscaled")
    value, grad = jax.value_and_grad(F)(jnp.float32(eta))
    assert float(value) == pytest.approx(2 * np.log(1.4) + np.log(2.0) / steps, rel=1e-5)
    assert float(grad) == pytest.approx(8 / 1.4, rel=1e-4)
    plain = metagrad.meta_objective(without, inner.gd(), "log_loss", steps=steps, grad="logscaled")
    assert float(plain(jnp.float32(eta))) == np.inf
