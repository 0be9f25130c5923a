"""Truncated backpropagation by the log-scaled reverse pass (``truncated.LogScaledTBPTT``,
registered as ``"tbptt_logscaled"``; its contract with every estimator:
tests/test_estimator_contract.py).

References are independent computations: plain reverse mode of the segment's meta-loss
(``jax.value_and_grad`` of ``truncated.runs.batched_segment``) in float32 (``TBPTT()``)
and in float64. Heavy ball on a 4-d quadratic (largest curvature 12.5), meta-parameters
``u = (log learning rate, logit momentum)`` as the meta-step sees them.

Both cases: one segment of ``K = 225`` steps, a whole run (horizon 225); with staggered
starts, run 1 restarts inside it.

* Finite case (learning rate 0.05): cosine >= 0.9999 and relative error <= 1e-4 against
  float32 TBPTT and float64 (float32 rounding of a contracting 225-step segment; measured
  1.2e-7 against float64, 7e-8 against TBPTT), with and without ``remat``.
* Overflow case (learning rate 0.25, past the stability boundary ``eta h < 2 (1 + beta)``:
  spectral radius 1.20): the meta-loss (~7e35) is finite in float32, its gradient (~1.2e39)
  is not, and TBPTT returns inf; the log-scaled pass is finite, cosine >= 0.999 and
  log-norm within 1e-3 of float64 (the unstable unroll amplifies float32 rounding by about
  ``K u / log rho``; measured: 1 - cosine 1e-14, log-norm 8e-6), and hands the
  meta-optimizer the direction times its ``max_norm``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, tasks, truncated
from l2l_jax.metagrad import logscaled
from l2l_jax.truncated import domains
from l2l_jax.truncated.logscaled_tbptt import capped_gradient
from l2l_jax.truncated.runs import batched_segment

TASK = tasks.Quadratic.random(jax.random.key(0), dim=4, scale=0.5)
OPT = inner.momentum()
# one segment of a whole run: run 0 starts at step 0, run 1 at 112 and restarts at 113; one
# compiled program for both cases (the meta-parameters are its argument)
CONFIG = dict(horizon=225, segment=225, meta_batch=2, eval_batch_size=None)
THETA = {
    "finite": {"learning_rate": jnp.float32(0.05), "momentum": jnp.float32(0.5)},
    # past the stability boundary: the loss ~ rho^(2k) stays below float32's max, its
    # gradient does not
    "overflow": {"learning_rate": jnp.float32(0.25), "momentum": jnp.float32(0.5)},
}
MAX32 = float(np.finfo(np.float32).max)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@functools.cache
def _case(settings: str, remat=None):
    """``(u, runs, optimizer in u, config)``: the meta-step's view of the start of
    training (``settings``: ``"finite"`` or ``"overflow"``)."""
    config = truncated.TruncatedConfig(**CONFIG, remat=remat)
    state = truncated.init_state(jax.random.key(1), TASK, OPT, config, meta_params=THETA[settings])
    u = domains.to_unconstrained(state.meta_params, OPT)
    return u, state.inner, domains.reparameterize(OPT, state.meta_params), config


@functools.cache
def _gradient(estimator, remat=None):
    """``estimator.gradient`` jitted, ``(u, runs) -> (loss, grad, new_runs, aux)``."""
    _, _, opt_u, config = _case("finite", remat)
    return jax.jit(lambda u, r: estimator.gradient(u, r, None, TASK, opt_u, config))


def _estimate(estimator, settings: str, remat=None):
    u, runs, _, _ = _case(settings, remat)
    return _gradient(estimator, remat)(u, runs)


@functools.cache
def _float64_reference(settings: str) -> tuple[float, np.ndarray]:
    """Plain reverse mode of the segment's meta-loss in float64 (same runs, same ``u``)."""
    u, runs, _, config = _case(settings)
    with jax.enable_x64(True):
        wide = lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x
        u64, runs64 = jax.tree.map(wide, (u, runs))
        opt64 = domains.reparameterize(OPT, domains.from_unconstrained(u64, OPT))
        value_and_grad = jax.jit(
            jax.value_and_grad(batched_segment, has_aux=True), static_argnums=(3, 4)
        )
        (loss, _), grad = value_and_grad(u64, runs64, TASK.astype(jnp.float64), opt64, config)
        return float(loss), _flat(grad)


def test_equals_tbptt_where_it_is_finite():
    """Same loss, runs and gradient as ``TBPTT()`` and as float64 reverse mode (bounds: the
    module docstring); nothing saturates or is capped."""
    loss, grad, new, aux = _estimate(truncated.LogScaledTBPTT(), "finite")
    ref_loss, ref_grad, ref_new, ref_aux = _estimate(truncated.TBPTT(), "finite")
    loss64, grad64 = _float64_reference("finite")
    assert int(aux["resets"]) >= 1  # a run restarts inside the segment
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(loss, loss64, rtol=1e-5)
    for ref in (_flat(ref_grad), grad64):
        assert _cosine(_flat(grad), ref) >= 0.9999
        assert np.linalg.norm(_flat(grad) - ref) <= 1e-4 * np.linalg.norm(ref)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref_new), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # the same forward pass
    np.testing.assert_allclose(aux["log_grad_norm"], np.log(np.linalg.norm(grad64)), atol=1e-4)
    assert not aux["grad_saturated"] and not aux["grad_capped"]
    np.testing.assert_allclose(aux["train_loss"], ref_aux["train_loss"], rtol=1e-6)
    assert int(aux["resets"]) == int(ref_aux["resets"])


def test_remat_recomputes_the_same_gradient():
    """``remat=6`` (37 stored pieces of 6 steps and a remainder of 3, recomputed in the
    backward pass): the float64 gradient within the same bounds."""
    loss, grad, _, _ = _estimate(truncated.LogScaledTBPTT(), "finite", remat=6)
    loss64, grad64 = _float64_reference("finite")
    np.testing.assert_allclose(loss, loss64, rtol=1e-5)
    assert _cosine(_flat(grad), grad64) >= 0.9999
    assert np.linalg.norm(_flat(grad) - grad64) <= 1e-4 * np.linalg.norm(grad64)


def test_finite_where_tbptt_overflows():
    """TBPTT's float32 gradient is non-finite while its meta-loss is finite; the log-scaled
    pass gives the float64 direction and log-norm (bounds: module docstring), flags the
    saturation and hands over the direction times ``2^60``."""
    loss, grad, _, aux = _estimate(truncated.LogScaledTBPTT(), "overflow")
    ref_loss, ref_grad, _, _ = _estimate(truncated.TBPTT(), "overflow")
    loss64, grad64 = _float64_reference("overflow")
    assert np.isfinite(ref_loss) and not np.all(np.isfinite(_flat(ref_grad)))
    assert np.linalg.norm(grad64) > MAX32  # the gradient itself is beyond float32
    np.testing.assert_allclose(loss, loss64, rtol=1e-4)
    assert np.all(np.isfinite(_flat(grad)))
    assert _cosine(_flat(grad), grad64) >= 0.999
    assert abs(float(aux["log_grad_norm"]) - np.log(np.linalg.norm(grad64))) <= 1e-3
    assert aux["grad_saturated"] and aux["grad_capped"]
    np.testing.assert_allclose(np.linalg.norm(_flat(grad)), 2.0**60, rtol=1e-6)


def test_capped_gradient_keeps_the_direction():
    """``max_norm`` below the norm: the direction times ``max_norm``; above: the gradient
    as it is (a gradient ``(3, -4) / 8 * 2^3`` of norm 5)."""
    g_hat = {"a": jnp.float32(3 / 8), "b": jnp.float32(-4 / 8)}
    result = logscaled.log_scaled_grad(jnp.float32(0), g_hat, jnp.int32(3))
    g = _flat(g_hat) * 2.0**3
    small, capped = capped_gradient(result, 2.5)
    assert capped
    np.testing.assert_allclose(_flat(small), g / np.linalg.norm(g) * 2.5, rtol=1e-6)
    same, capped = capped_gradient(result, 10.0)
    assert not capped and np.array_equal(_flat(same), g)
    for bad in (0.0, -1.0, math.inf, True):
        with pytest.raises(ValueError, match=r"LogScaledTBPTT\.max_norm"):
            truncated.LogScaledTBPTT(max_norm=bad)


def test_meta_train_applies_the_steps_tbptt_skips():
    """Three meta-steps past the overflow: TBPTT skips every one as non-finite and leaves
    the meta-parameters where they were; ``"tbptt_logscaled"`` applies all three (the
    first saturated, all capped, as the metrics record) and lowers the learning rate and
    the meta-loss (the gradient in ``log eta`` is positive: a smaller step grows the loss
    less; each meta-step of Adam's 1e-3 lowers the log-norm by about 2)."""
    runs = {}
    for name in ("tbptt", "tbptt_logscaled"):
        cfg = truncated.TruncatedConfig(**CONFIG, estimator=name)
        runs[name] = truncated.meta_train(
            TASK, OPT, cfg, 3, key=jax.random.key(2), meta_params=THETA["overflow"], progress=False
        )
    plain, scaled = runs["tbptt"], runs["tbptt_logscaled"]
    assert plain.nonfinite_count == 3
    assert float(plain.meta_params["learning_rate"]) == float(THETA["overflow"]["learning_rate"])
    assert scaled.nonfinite_count == 0 and [m["step"] for m in scaled.metrics] == [1, 2, 3]
    first = scaled.metrics[0]
    assert first["grad_saturated"] and math.log(MAX32) < first["log_grad_norm"] < math.inf
    assert all(m["grad_capped"] and not m["nonfinite"] for m in scaled.metrics)
    # the same runs and keys: equal before the first update, lower after each
    pairs = zip(scaled.metrics, plain.metrics, strict=True)
    losses = [(ours["meta_loss"], theirs["meta_loss"]) for ours, theirs in pairs]
    assert losses[0][0] == pytest.approx(losses[0][1], rel=1e-6)
    assert all(ours < theirs for ours, theirs in losses[1:])
    assert float(scaled.meta_params["learning_rate"]) < float(THETA["overflow"]["learning_rate"])
