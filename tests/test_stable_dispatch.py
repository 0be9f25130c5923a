"""grad="stable" chooses its closed form by the linear update an optimizer declares
(``linear_update``), never by its ``name``: over every optimizer and task it accepts, its
value and meta-gradient equal autodiff through the unroll of the same optimizer (float64,
t = 30, rtol 1e-9); an optimizer built with ``inner.from_optax`` is refused with an error
naming ``grad='autodiff'`` unless it declares its update truthfully, whatever its name.

Autodiff is the independent computation: optax's own update, unrolled by ``lax.scan``.
The accuracy of stable where autodiff fails (long t, past the stability boundary, float32)
is tests/test_stable_accuracy.py's and tests/test_projective.py's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_projective import DENSE_H, DENSE_W0, DIAG_P, LAM, _ls_task

from l2l_jax import inner, metagrad, tasks
from l2l_jax.analysis.stability import ScaledStep
from l2l_jax.inner.optimizers import LINEAR_UPDATES
from l2l_jax.metagrad import projective

STEPS = 30
RTOL = 1e-9
BETA = 0.6
BUILDERS = {"gd": inner.gd, "momentum": inner.momentum, "nesterov": inner.nesterov}


def _task(name: str):
    """One small float64 task per type: a dense 6-d quadratic (eigendecomposed by stable),
    a 6-d NQM with noise (full batch: its mean dynamics), least squares with d = 4 < n1
    and validation rows."""
    if name == "quadratic":
        return tasks.Quadratic(jnp.asarray(DENSE_H), jnp.asarray(DENSE_W0))
    if name == "nqm":
        key = jax.random.key(0)
        return tasks.NQM.from_curvature(key, jnp.asarray(LAM[:6]), noise_scale=1.0)
    return _ls_task("float64")


def _smoothness(task, p) -> float:
    """``L``: the largest eigenvalue of ``P H`` (least squares: ``H = X^T X / n``)."""
    if isinstance(task, tasks.LeastSquares):
        x = np.asarray(task.x_train)
        h = x.T @ x / x.shape[0]
    elif isinstance(task, tasks.NQM):
        h = np.diag(np.asarray(task.curvature))
    else:
        h = np.asarray(task.hessian)
    p = np.ones(h.shape[0]) if p is None else np.asarray(p)
    return float(np.linalg.eigvals(p[:, None] * h).real.max())


def _hparams(opt, big_l: float, **extra):
    """``eta = 0.4 / L`` (inside every boundary: GD's ``2 / L``, Nesterov's ``2 (1 + b) /
    (L (1 + 2 b)) = 0.73 / L`` at ``b = 0.6``) and ``beta = 0.6``, as the optimizer takes
    them."""
    values = {"learning_rate": 0.4 / big_l, "momentum": BETA, **extra}
    return opt.hparams(**{n: jnp.float64(values[n]) for n in opt.hparam_names})


def _assert_equals_autodiff(task, opt, objective, hp):
    out = {
        g: jax.value_and_grad(metagrad.meta_objective(task, opt, objective, steps=STEPS, grad=g))(
            hp
        )
        for g in ("stable", "autodiff")
    }
    (v_st, g_st), (v_ad, g_ad) = out["stable"], out["autodiff"]
    assert np.isfinite(float(v_ad))
    np.testing.assert_allclose(float(v_st), float(v_ad), rtol=RTOL)
    g_st, g_ad = ({"learning_rate": g} if not isinstance(g, dict) else g for g in (g_st, g_ad))
    assert set(g_st) == set(g_ad)
    for name in g_ad:
        np.testing.assert_allclose(float(g_st[name]), float(g_ad[name]), rtol=RTOL, err_msg=name)


# Every optimizer stable accepts, with and without a diagonal preconditioner, on every task
# type, each objective of a task at least once (least squares: tbv as well); pairs already
# compared with autodiff in test_projective.py / test_methods_agree.py are left out.
ACCEPTED = [
    ("quadratic", "gd", False, "tbt"),
    ("quadratic", "gd", True, "log_loss"),
    ("quadratic", "momentum", False, "tbt"),
    ("quadratic", "momentum", True, "log_loss"),
    ("quadratic", "nesterov", False, "log_loss"),
    ("quadratic", "nesterov", True, "tbt"),
    ("nqm", "gd", False, "log_loss"),
    ("nqm", "gd", True, "tbt"),
    ("nqm", "momentum", False, "log_loss"),
    ("nqm", "momentum", True, "tbt"),
    ("nqm", "nesterov", False, "tbt"),
    ("nqm", "nesterov", True, "log_loss"),
    ("least_squares", "gd", False, "tbv"),
    ("least_squares", "gd", True, "tbt"),
    ("least_squares", "momentum", False, "log_loss"),
    ("least_squares", "momentum", True, "tbv"),
    ("least_squares", "nesterov", False, "tbt"),
    ("least_squares", "nesterov", True, "log_loss"),
]


@pytest.mark.parametrize(("task_name", "kind", "with_p", "objective"), ACCEPTED)
def test_accepted_optimizers_equal_autodiff(task_name, kind, with_p, objective):
    with jax.enable_x64(True):
        task = _task(task_name)
        p = jnp.asarray(DIAG_P[: task.dim]) if with_p else None
        opt = BUILDERS[kind](preconditioner=p)
        assert opt.linear_update == kind
        _assert_equals_autodiff(task, opt, objective, _hparams(opt, _smoothness(task, p)))


def _sgd(name: str, momentum: bool = False, nesterov: bool = False, **kwargs):
    """optax's ``sgd`` wrapped by the user under ``name`` (heavy ball with ``momentum``,
    Nesterov with ``nesterov`` too)."""
    names = ("learning_rate", "momentum") if momentum else ("learning_rate",)
    static = {"nesterov": True} if nesterov else {}
    return inner.from_optax(optax.sgd, names, name=name, **kwargs, **static)


def _weight_decay_sgd(learning_rate):
    return optax.chain(optax.add_decayed_weights(0.1), optax.sgd(learning_rate))


# User-built optimizers: (label, optimizer, whether stable must accept it). Names mean
# nothing to stable: an undeclared update is refused under any name (the first four are the
# optimizers a name-based dispatch would misread), a declared one is
# checked on a probe (a false declaration is refused), a true one is accepted under any name.
USER = [
    ("nesterov named momentum", lambda: _sgd("momentum", True, True), False),
    ("heavy ball named nesterov", lambda: _sgd("nesterov", True), False),
    ("adam named gd", lambda: inner.from_optax(optax.adam, ("learning_rate",), name="gd"), False),
    (
        "weight decay named gd",
        lambda: inner.from_optax(_weight_decay_sgd, ("learning_rate",), name="gd"),
        False,
    ),
    ("sgd named gd", lambda: _sgd("gd"), False),
    ("sgd named sgd", lambda: _sgd("sgd"), False),
    ("minibatch sgd", lambda: inner.sgd(batch_size=2), False),
    (
        "adam named adam",
        lambda: inner.from_optax(optax.adam, ("learning_rate", "b1", "b2", "eps"), name="adam"),
        False,
    ),
    ("scaled step", lambda: ScaledStep(inner.gd()), False),
    (
        "nesterov declared momentum",
        lambda: _sgd("momentum", True, True, linear_update="momentum"),
        False,
    ),
    (
        "heavy ball declared nesterov",
        lambda: _sgd("nesterov", True, linear_update="nesterov"),
        False,
    ),
    (
        "adam declared gd",
        lambda: inner.from_optax(optax.adam, ("learning_rate",), name="gd", linear_update="gd"),
        False,
    ),
    (
        "weight decay declared gd",
        lambda: inner.from_optax(
            _weight_decay_sgd, ("learning_rate",), name="gd", linear_update="gd"
        ),
        False,
    ),
    ("sgd declared gd, named adam", lambda: _sgd("adam", linear_update="gd"), True),
    (
        "nesterov declared, named gd",
        lambda: _sgd("gd", True, True, linear_update="nesterov"),
        True,
    ),
]


@pytest.mark.parametrize(("label", "build", "accepted"), USER, ids=[u[0] for u in USER])
def test_user_optimizers_are_refused_or_equal_autodiff(label, build, accepted):
    """Refused with an error that names grad='autodiff' and the stable builders, or (a true
    declaration) equal to autodiff; never another optimizer's value."""
    with jax.enable_x64(True):
        task = _task("quadratic")
        opt = build()
        try:
            f = metagrad.meta_objective(task, opt, "log_loss", steps=STEPS, grad="stable")
        except ValueError as err:
            assert "grad='autodiff'" in str(err) and "inner.gd()" in str(err), str(err)
            assert not accepted, f"{label}: refused, but its declaration is true: {err}"
            return
        del f
        hp = _hparams(opt, _smoothness(task, None))
        _assert_equals_autodiff(task, opt, "log_loss", hp)
        assert accepted, f"{label}: accepted, and equal to autodiff, but declares no update"


def test_linear_update_declaration_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"linear_update must be one of \['gd', 'momentum'"):
        inner.from_optax(optax.sgd, ("learning_rate",), linear_update="heavy ball")
    with pytest.raises(ValueError, match=r"pass hparam_names=\('learning_rate', 'momentum'\)"):
        inner.from_optax(optax.sgd, ("learning_rate",), linear_update="momentum")
    assert set(LINEAR_UPDATES) == set(projective.STEPS)  # every declaration has its step
    assert inner.adam().linear_update is None
    assert inner.sgd().linear_update == "gd"  # GD's step; refused by stable for its minibatches
