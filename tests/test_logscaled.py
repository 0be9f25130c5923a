"""Log-scaled reverse mode (``grad="logscaled"``, ``metagrad.logscaled``): the meta-gradient
of any unroll with the adjoint and the accumulated sum carried with one power-of-two
log-scale.

References are independent computations: float64 autodiff (plain reverse mode in a
dtype whose range the test problems stay inside) and the closed forms of
``grad="stable"``. Bounds: cosine >= 0.9999 and log-norm within 1e-4 against float64
where float32 autodiff is finite (float32 rounding of a 50-step unroll, a few 1e-6
relative, measured); 1e-4 relative against ``stable`` (its own float32 bound); cosine
>= 0.999 and log-norm within 1e-3 where float32 autodiff is non-finite (t of several
hundred steps, rounding amplified by at most ``t u / |log rho|``, measured 2e-6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, learned, metagrad, objectives, tasks
from l2l_jax.metagrad import logscaled

MAX32 = float(np.finfo(np.float32).max)


def _quadratic(dim=6) -> tasks.Quadratic:
    return tasks.Quadratic.random(jax.random.key(0), dim=dim)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _log_scaled(task, optimizer, objective, hparams, steps, **kw) -> logscaled.LogScaledGrad:
    run = lambda h: logscaled.value_and_grad(task, optimizer, objective, h, steps=steps, **kw)
    return jax.jit(run)(hparams)


def _autodiff(task, optimizer, objective, hparams, steps):
    F = metagrad.meta_objective(task, optimizer, objective, steps=steps)
    return jax.value_and_grad(F)(hparams)


def _float64_autodiff(task, optimizer, objective, hparams, steps):
    """The reference: plain reverse mode on the same problem in float64."""
    with jax.enable_x64(True):
        task64 = task.astype(jnp.float64) if hasattr(task, "astype") else task
        hp64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), hparams)
        value, grad = _autodiff(task64, optimizer, objective, hp64, steps)
        return float(value), _flat(grad)


def _assert_direction_and_norm(result, ref, cosine, log_tol):
    direction = _flat(result.direction)
    cos = direction @ ref / np.linalg.norm(ref)
    assert cos >= cosine, (cos, direction, ref)
    assert abs(float(result.log_norm) - np.log(np.linalg.norm(ref))) <= log_tol


def _momentum(eta, beta):
    return {"learning_rate": jnp.float32(eta), "momentum": jnp.float32(beta)}


def _nqm_case():
    """Heavy ball on the NQM; its float64 twin is a Quadratic with the same curvature and
    start (NQM draws w_0 in its own dtype, so astype would start elsewhere)."""
    nqm = tasks.NQM.power_law(jax.random.key(3), dim=8, power=1.0, scale=4.0)
    with jax.enable_x64(True):
        twin = tasks.Quadratic(
            jnp.diag(jnp.asarray(nqm.curvature, jnp.float64)),
            jnp.asarray(nqm.init_params(), jnp.float64),
        )
    return nqm, twin


def _lopt_case():
    lopt = learned.MLPLOpt(
        learned.LOptConfig(hidden_sizes=(4,), decays=(0.9,), time_scales=(10.0,))
    )
    return learned.inner_optimizer(lopt), lopt.init_meta_params(jax.random.key(1))


@pytest.mark.parametrize("case", ["momentum_quadratic", "nqm", "mlp_lopt"])
def test_agrees_with_float64_autodiff_where_float32_autodiff_is_finite(case):
    steps = 50
    if case == "momentum_quadratic":
        task, twin = _quadratic(), None
        optimizer, hparams = inner.momentum(), _momentum(0.02, 0.9)
    elif case == "nqm":
        (task, twin), optimizer, hparams = _nqm_case(), inner.momentum(), _momentum(0.2, 0.8)
    else:
        task, twin = _quadratic(dim=3), None
        optimizer, hparams = _lopt_case()
    result = _log_scaled(task, optimizer, "log_loss", hparams, steps)
    value32, grad32 = _autodiff(task, optimizer, "log_loss", hparams, steps)
    assert np.all(np.isfinite(_flat(grad32)))  # where float32 autodiff is finite
    value64, grad64 = _float64_autodiff(twin or task, optimizer, "log_loss", hparams, steps)
    _assert_direction_and_norm(result, grad64, cosine=0.9999, log_tol=1e-4)
    assert float(result.value) == pytest.approx(value64, rel=1e-5)  # float32 log-loss
    assert float(result.value) == pytest.approx(float(value32), rel=1e-5)
    assert not bool(result.saturated)


@pytest.mark.parametrize(
    "optimizer, hparams",
    [(inner.gd(), jnp.float32(0.03)), (inner.momentum(), _momentum(0.03, 0.5))],
)
def test_matches_the_closed_form_of_stable(optimizer, hparams):
    """GD and heavy ball on a quadratic, 300 steps, float32 both: 1e-4 relative."""
    task, steps = _quadratic(), 300
    F_log = metagrad.meta_objective(task, optimizer, "log_loss", steps=steps, grad="logscaled")
    F_stable = metagrad.meta_objective(task, optimizer, "log_loss", steps=steps, grad="stable")
    value, grad = jax.value_and_grad(F_log)(hparams)
    ref_value, ref_grad = jax.value_and_grad(F_stable)(hparams)
    assert float(value) == pytest.approx(float(ref_value), rel=1e-4)
    g, ref = _flat(grad), _flat(ref_grad)
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-4 * np.max(np.abs(ref)))


@pytest.mark.parametrize(
    "regime, eta_l, steps",
    # heavy ball (beta = 0.5) on a quadratic, spectral radius rho of its steps:
    # past the boundary 2 (1 + beta) / L (rho = 1.32): f(w_t) overflows float32 after
    # ~160 steps, w_t after ~320; converging (rho = 0.90): f(w_t) underflows after
    # ~420 steps, w_t after ~840
    [("overflow", 3.2, 240), ("underflow", 0.5, 600)],
)
def test_finite_where_float32_autodiff_is_not(regime, eta_l, steps):
    task = _quadratic()
    optimizer, hparams = inner.momentum(), _momentum(eta_l / float(task.smoothness), 0.5)
    value32, _ = _autodiff(task, optimizer, "log_loss", hparams, steps)
    # float32 autodiff fails here: f(w_t) = inf or 0, gradient 0 or NaN
    assert not np.isfinite(float(value32))
    result = _log_scaled(task, optimizer, "log_loss", hparams, steps)
    assert np.isfinite(float(result.value)) and np.all(np.isfinite(_flat(result.grad)))
    value64, grad64 = _float64_autodiff(task, optimizer, "log_loss", hparams, steps)
    _assert_direction_and_norm(result, grad64, cosine=0.999, log_tol=1e-3)
    assert float(result.value) == pytest.approx(value64, rel=1e-4)


def test_saturates_where_the_meta_gradient_overflows():
    """last_loss past the boundary (Thm 3): f(w_t) ~ 1e38 is finite, its meta-gradient is
    not (float32 autodiff: NaN); direction and log-norm stay finite and agree with
    float64, and the float gradient saturates to +-inf with the direction's signs."""
    task, steps = _quadratic(), 160
    optimizer, hparams = inner.momentum(), _momentum(3.2 / float(task.smoothness), 0.5)
    _, grad32 = _autodiff(task, optimizer, "last_loss", hparams, steps)
    assert not np.all(np.isfinite(_flat(grad32)))
    result = _log_scaled(task, optimizer, "last_loss", hparams, steps)
    value64, grad64 = _float64_autodiff(task, optimizer, "last_loss", hparams, steps)
    assert np.linalg.norm(grad64) > MAX32  # the gradient itself is out of float32 range
    assert float(result.value) == pytest.approx(value64, rel=1e-4)
    _assert_direction_and_norm(result, grad64, cosine=0.999, log_tol=1e-3)
    assert bool(result.saturated)
    np.testing.assert_array_equal(_flat(result.grad), np.sign(grad64) * np.inf)


def test_stores_no_more_than_plain_reverse_mode():
    """Compiled temporary memory of the meta-gradient at t = 1000: the log-scaled pass
    stores each step's state (w, v), plain reverse mode each step's linearization; the
    log-scaled pass must not exceed it (measured: about half), and with remat both shrink
    to ~sqrt(t) segments (below 1/4 of their unsegmented size)."""
    task, steps = _quadratic(dim=32), 1000
    optimizer, hparams = inner.momentum(), _momentum(0.01, 0.9)

    def temp_bytes(grad, remat):
        F = metagrad.meta_objective(
            task, optimizer, "log_loss", steps=steps, grad=grad, remat=remat
        )
        compiled = jax.jit(jax.grad(F._fn)).lower(hparams, task, None).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain, ours = temp_bytes("autodiff", None), temp_bytes("logscaled", None)
    state_bytes = steps * 2 * 32 * 4  # (w, v) of every step, float32
    assert state_bytes <= ours <= plain
    assert temp_bytes("logscaled", True) <= ours / 4


def test_remat_and_stochastic_keys_match_autodiff_in_float64():
    """SGD on a quadratic's examples (minibatch keys) in segments of 7 steps over 50 (a
    remainder of 1): the same unroll as inner.unroll, so float64 value and gradient agree
    with autodiff to 1e-10 relative (the same terms, summed in another order)."""
    with jax.enable_x64(True):
        task = tasks.Quadratic.random(jax.random.key(3), dim=6, dtype=jnp.float64)
        key, optimizer, eta = jax.random.key(4), inner.sgd(batch_size=2), jnp.float64(0.02)
        ref = metagrad.meta_objective(task, optimizer, "log_loss", steps=50, key=key)
        F = metagrad.meta_objective(
            task, optimizer, "log_loss", steps=50, key=key, remat=7, grad="logscaled"
        )
        (v, g), (v_ref, g_ref) = jax.value_and_grad(F)(eta), jax.value_and_grad(ref)(eta)
        assert float(v) == pytest.approx(float(v_ref), rel=1e-10)
        assert float(g) == pytest.approx(float(g_ref), rel=1e-10)


def test_batched_validation_log_loss_matches_autodiff():
    """A batch of least-squares tasks (vmap of the custom VJP) and log-TbV: the validation
    loss, without a homogeneous rescaling; float32 autodiff is the reference here (both
    finite), to 1e-5 relative (20 steps of float32 rounding)."""
    batch = tasks.LeastSquares.sample_batch(jax.random.key(5), 3, 4, 6, 5, 0.5)
    F = {
        g: metagrad.meta_objective(batch, inner.gd(), "log_tbv", steps=20, batched=True, grad=g)
        for g in ("autodiff", "logscaled")
    }
    (v, g), (v_ref, g_ref) = (jax.value_and_grad(F[k])(jnp.float32(0.1)) for k in F)
    assert float(v) == pytest.approx(float(v_ref), rel=1e-5)
    assert float(g) == pytest.approx(float(g_ref), rel=1e-5)


def test_refuses_what_it_does_not_differentiate():
    task = _quadratic()
    with pytest.raises(ValueError, match="objectives of the whole trajectory"):
        metagrad.meta_objective(task, inner.gd(), "mean_loss", steps=5, grad="logscaled")
    with pytest.raises(ValueError, match="max_norm"):
        metagrad.meta_objective(
            task, inner.gd(), "log_loss", steps=5, grad="logscaled", max_norm=1.0
        )
    trajectory = objectives.trajectory_objective(lambda task, w: task.loss(w))
    with pytest.raises(ValueError, match="final iterate"):
        logscaled.value_and_grad(task, inner.gd(), trajectory, jnp.float32(0.1), steps=5)
