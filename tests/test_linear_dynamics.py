"""grad="stable" by capability: a task that declares its linear dynamics
(``tasks.LinearDynamicsTask``) gets it, whatever its type; one that does not is refused
with an error naming ``grad='autodiff'``.

The user's task here is a diagonal quadratic with a minimizer and an offset written from
scratch (no subclass of a library task). Autodiff through the unroll of its own ``loss`` is
the independent computation (float64, t = 30, rtol 1e-10).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, metagrad, tasks

STEPS = 30
RTOL = 1e-10
H = np.geomspace(0.2, 2.0, 5)  # L = 2
W0 = np.cos(np.arange(5.0)) + 0.5
W_MIN = np.linspace(-0.3, 0.4, 5)
P = np.exp(0.4 * np.sin(np.arange(5.0)))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Offset:
    """``f(w) = 1/2 sum_i h_i (w_i - m_i)^2 + c`` from ``w0``: no linear dynamics."""

    h: jax.Array
    m: jax.Array
    w0: jax.Array
    c: jax.Array

    def init_params(self, key=None):
        return self.w0

    def loss(self, w):
        return 0.5 * jnp.sum(self.h * (w - self.m) ** 2) + self.c


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeclaredOffset(Offset):
    """The same task, declaring its dynamics: already in its eigenbasis, start ``w0 - m``,
    residual ``c``; with ``P``, curvature ``P h`` and start ``P^(-1/2) (w0 - m)``."""

    closed_form: bool = dataclasses.field(default=True, metadata={"static": True})

    def linear_dynamics(self, preconditioner=None):
        p = jnp.ones_like(self.h) if preconditioner is None else preconditioner
        start = (self.w0 - self.m) / jnp.sqrt(p)
        return tasks.LinearDynamics(
            self.h * p, start, residual=self.c, gd_closed_form=self.closed_form
        )


def _task(cls=DeclaredOffset, **kwargs):
    arrays = (jnp.asarray(a) for a in (H, W_MIN, W0))
    return cls(*arrays, jnp.asarray(np.float64(0.05)), **kwargs)


CASES = [  # (linear update, preconditioner, GD's closed form allowed, objective)
    ("gd", False, True, "log_loss"),
    ("gd", True, False, "tbt"),
    ("momentum", True, True, "log_loss"),
    ("nesterov", False, True, "tbt"),
]


@pytest.mark.parametrize(("kind", "with_p", "closed_form", "objective"), CASES)
def test_user_task_with_linear_dynamics_equals_autodiff(kind, with_p, closed_form, objective):
    with jax.enable_x64(True):
        task = _task(closed_form=closed_form)
        assert isinstance(task, tasks.LinearDynamicsTask)
        assert not isinstance(task, tasks.Quadratic)
        p = jnp.asarray(P) if with_p else None
        opt = {"gd": inner.gd, "momentum": inner.momentum, "nesterov": inner.nesterov}[kind](
            preconditioner=p
        )
        big_l = float(np.max(H * (P if with_p else 1.0)))
        values = {"learning_rate": 0.4 / big_l, "momentum": 0.6}
        hp = opt.hparams(**{n: jnp.float64(values[n]) for n in opt.hparam_names})
        out = {}
        for g in ("stable", "autodiff"):
            f = metagrad.meta_objective(task, opt, objective, steps=STEPS, grad=g)
            value, grads = jax.value_and_grad(f)(hp)
            grads = grads if isinstance(grads, dict) else {"learning_rate": grads}
            out[g] = (float(value), {n: float(x) for n, x in grads.items()})
        (v_st, g_st), (v_ad, g_ad) = out["stable"], out["autodiff"]
        assert np.isfinite(v_ad) and set(g_st) == set(g_ad)
        np.testing.assert_allclose(v_st, v_ad, rtol=RTOL)
        for name in g_ad:
            np.testing.assert_allclose(g_st[name], g_ad[name], rtol=RTOL, err_msg=name)


def test_task_without_linear_dynamics_is_refused_naming_autodiff():
    task = _task(Offset)
    assert not isinstance(task, tasks.LinearDynamicsTask)
    for opt in (inner.gd(), inner.momentum()):
        with pytest.raises(ValueError) as info:
            metagrad.meta_objective(task, opt, "log_loss", steps=STEPS, grad="stable")
        msg = str(info.value)
        assert "task Offset, which declares no linear dynamics" in msg
        assert "grad='autodiff'" in msg and "linear_dynamics" in msg
    # the same task with the method is accepted; it has no validation rows for tbv
    metagrad.meta_objective(_task(), inner.gd(), "log_loss", steps=STEPS, grad="stable")
    with pytest.raises(ValueError, match="objective 'log_tbv' on task DeclaredOffset"):
        metagrad.meta_objective(_task(), inner.gd(), "log_tbv", steps=STEPS, grad="stable")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Malformed(Offset):
    """Declares dynamics whose start does not match its eigenvalues."""

    def linear_dynamics(self, preconditioner=None):
        return tasks.LinearDynamics(self.h, self.w0[:3])


def test_malformed_dynamics_name_the_method():
    with pytest.raises(ValueError, match=r"Malformed\.linear_dynamics\(\) must return"):
        metagrad.meta_objective(_task(Malformed), inner.gd(), "log_loss", steps=3, grad="stable")
