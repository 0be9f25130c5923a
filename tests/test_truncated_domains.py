"""Truncated meta-training keeps named hyperparameters in their domains.

The setting: Adam on a 5-d quadratic, meta-learning its learning rate, b1,
b2 and eps with horizon 24, segment 5, meta-batch 8, 30 meta-steps and the default
meta-optimizer. Unconstrained, ES and PES move b2 to 1 and eps below 0 at the first step (all
later steps non-finite and skipped) and TBPTT drives eps negative.

The inner optimizer is Adam wrapped by :class:`Strict`, which turns the parameters into NaN
whenever it is handed a hyperparameter outside its domain: the meta-loss of such a run is
then non-finite and the step is counted, so ``nonfinite_count == 0`` shows that every
value the estimators evaluated (ES/PES's perturbed ones included) was inside.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import inner, input_checks, learned, tasks, truncated
from l2l_jax.truncated import domains

TASK = tasks.Quadratic.random(jax.random.key(0), dim=5)
STEPS = 30


def in_domain(name: str, value) -> bool:
    """The domain of :data:`input_checks.HYPERPARAMETER_DOMAINS`, written out."""
    x = np.asarray(value, np.float64)
    kind = input_checks.HYPERPARAMETER_DOMAINS.get(name, "none")
    if kind == "positive":
        return bool(np.all(np.isfinite(x) & (x > 0)))
    if kind == "unit":
        return bool(np.all((x >= 0) & (x < 1)))
    return True


@dataclasses.dataclass(frozen=True)
class Strict:
    """``base`` whose update returns NaN parameters when a named hyperparameter it is given
    lies outside its domain (a jit-compatible spy on what the estimators evaluate)."""

    base: Any

    @property
    def name(self) -> str:
        return f"strict_{self.base.name}"

    @property
    def hparam_names(self) -> tuple[str, ...]:
        return self.base.hparam_names

    @property
    def batch_size(self):
        return self.base.batch_size

    def hparams(self, **values):
        return self.base.hparams(**values)

    def as_dict(self, hparams):
        return self.base.as_dict(hparams)

    def init(self, params, hparams):
        return self.base.init(params, hparams)

    def update(self, grads, state, params, hparams):
        new, state = self.base.update(grads, state, params, hparams)
        ok = jnp.asarray(True)
        for name, v in hparams.items():
            kind = input_checks.HYPERPARAMETER_DOMAINS.get(name)
            if kind == "positive":
                ok &= v > 0
            elif kind == "unit":
                ok &= (v >= 0) & (v < 1)
        return jax.tree.map(lambda p: jnp.where(ok, p, jnp.nan), new), state


def config(estimator: str) -> truncated.TruncatedConfig:
    return truncated.TruncatedConfig(
        horizon=24, segment=5, meta_batch=8, eval_batch_size=None, estimator=estimator
    )


# -- the transform, against closed forms -----------------------------------------------------


def test_transform_round_trip_and_closed_forms():
    """u = log(theta) and logit(theta) in float64 NumPy; back to theta within a few ulps."""
    pos = np.asarray([1e-30, 1e-8, 0.05, 1.0, 3e5], np.float32)
    unit = np.asarray([1e-20, 1e-3, 0.5, 0.8, 0.999, 0.99999], np.float32)
    u_pos = np.asarray(domains.positive_to_u(pos))
    u_unit = np.asarray(domains.unit_to_u(unit))
    np.testing.assert_allclose(u_pos, np.log(pos.astype(np.float64)), rtol=1e-6)
    ref = np.log(unit.astype(np.float64)) - np.log1p(-unit.astype(np.float64))
    np.testing.assert_allclose(u_unit, ref, rtol=1e-5, atol=1e-5)
    # float32 rounds u by |u| ulp, a relative error of theta of about |u| eps
    for back, theta, uu in (
        (domains.positive_from_u(u_pos), pos, u_pos),
        (domains.unit_from_u(u_unit), unit, u_unit),
    ):
        err = np.abs(np.asarray(back, np.float64) - theta) / theta
        assert np.all(err <= 2 * (np.abs(uu) + 1) * np.finfo(np.float32).eps), err
    one = 1 / (1 + np.exp(-np.float64(2.0)))
    np.testing.assert_allclose(domains.unit_from_u(np.float32(2.0)), one, rtol=1e-6)


def test_transform_at_the_float_limits():
    """Finite and inside the domain for any u: exp over/underflows past |u| ~ 88 and
    sigmoid(u) rounds to exactly 1.0 in float32 for u > ~17; those are clipped to
    [tiny, max] and to 1 - epsneg (the float below 1), never 1.0; the clip passes the
    derivative of the smooth map through: sigmoid(u) sigmoid(-u) = 2e-9 > 0 at u = 20,
    where float32's s (1 - s) is 0, and exp(u) itself."""
    info = np.finfo(np.float32)
    u = [-np.inf, -1e4, -100.0, -90.0, 0.0, 17.0, 20.0, 100.0, 1e4, np.inf]
    u = np.asarray(u, np.float32)
    assert np.float32(1) / (np.float32(1) + np.exp(np.float32(-20.0))) == 1.0  # the rounding
    pos = np.asarray(domains.positive_from_u(u))
    unit = np.asarray(domains.unit_from_u(u))
    assert np.all(np.isfinite(pos)) and np.all(pos >= info.tiny) and np.all(pos <= info.max)
    assert np.all(unit >= 0) and np.all(unit < 1)
    assert unit[6] == unit[-1] == np.float32(1) - info.epsneg
    assert pos[-1] == info.max and pos[0] == info.tiny
    grad = float(jax.grad(domains.unit_from_u)(jnp.float32(20.0)))
    s = 1 / (1 + np.exp(-20.0))
    np.testing.assert_allclose(grad, s * (1 - s), rtol=1e-3)
    grad = float(jax.grad(domains.positive_from_u)(jnp.float32(-3.0)))
    np.testing.assert_allclose(grad, np.exp(-3.0), rtol=1e-6)
    # the edges of the domains map to finite u, and back inside
    edges = np.asarray([0.0, 1.0], np.float32)
    u_edges = np.asarray(domains.unit_to_u(edges))
    assert np.all(np.isfinite(u_edges))
    assert np.all(np.asarray(domains.unit_from_u(u_edges)) < 1)
    assert np.isfinite(domains.positive_to_u(np.float32(0.0)))


def test_leaves_without_a_domain_are_untouched():
    """A learned optimizer's weights (no name in the table, also NominalLOpt's
    ``momentum_logits``) are the same objects after the transform, and its optimizer is
    not wrapped: the meta-step is today's program. A bare scalar takes the domain of the
    optimizer's single hyperparameter (``inner.gd()``'s step size)."""
    for lopt in (learned.MLPLOpt(), learned.NominalLOpt()):
        mp = lopt.init_meta_params(jax.random.key(0))
        opt = learned.inner_optimizer(lopt)
        assert not domains.is_constrained(mp, opt)
        assert domains.reparameterize(opt, mp) is opt
        for f in (domains.to_unconstrained, domains.from_unconstrained):
            out = f(mp, opt)
            for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(mp), strict=True):
                assert a is b
    gd = inner.gd()
    assert domains.leaf_domain((), gd) == "positive"
    u = domains.to_unconstrained(gd.hparams(learning_rate=0.05), gd)
    np.testing.assert_allclose(u, np.log(0.05), rtol=1e-6)
    hp = inner.adam().hparams(learning_rate=0.05)
    assert isinstance(domains.reparameterize(inner.adam(), hp), domains.Unconstrained)


def test_out_of_domain_start_is_refused():
    opt = inner.adam()
    with pytest.raises(ValueError, match="b2"):
        truncated.init_state(
            jax.random.key(0), TASK, opt, config("tbptt"), meta_params=opt.hparams(b2=1.0)
        )


# -- the measured setting ----------------------------------------------------------------------


@pytest.mark.parametrize("estimator", list(truncated.ESTIMATORS))
def test_hyperparameters_stay_in_their_domains(estimator):
    """Every meta-step's hyperparameters are in their domains, no step is non-finite, and
    meta_train (the same compiled step) ends where the step-by-step loop does."""
    opt = Strict(inner.adam())
    hp = opt.hparams(learning_rate=0.05, b1=0.8)
    cfg = config(estimator)
    state = truncated.init_state(jax.random.key(1), TASK, opt, cfg, meta_params=hp)
    step = truncated.make_meta_step(opt, cfg)
    for _ in range(STEPS):
        state, metrics = step(state, TASK)
        assert not bool(metrics["nonfinite"]), int(state.step)
        for name, value in state.meta_params.items():
            assert in_domain(name, value), (int(state.step), name, float(value))
    assert int(state.nonfinite_count) == 0
    moved = [not np.array_equal(state.meta_params[n], hp[n]) for n in hp]
    assert all(moved)  # every hyperparameter is meta-learned, none frozen
    run = truncated.meta_train(
        TASK, opt, cfg, STEPS, key=jax.random.key(1), meta_params=hp, progress=False
    )
    assert run.nonfinite_count == 0
    assert not any(m["nonfinite"] for m in run.metrics)
    for name in hp:
        np.testing.assert_array_equal(run.meta_params[name], state.meta_params[name])


def test_from_optax_hyperparameters_with_declared_names():
    """A user's ``inner.from_optax`` optimizer whose hyperparameter names are in the domain
    table gets the same treatment (ES, whose perturbations of eps ~ 1e-8 with sigma 0.01
    would otherwise be negative half the time)."""
    opt = Strict(inner.from_optax(optax.adam, ("learning_rate", "eps")))
    hp = opt.hparams(learning_rate=0.05, eps=1e-8)
    run = truncated.meta_train(
        TASK, opt, config("es"), STEPS, key=jax.random.key(2), meta_params=hp, progress=False
    )
    assert run.nonfinite_count == 0
    for name, value in run.meta_params.items():
        assert in_domain(name, value), (name, float(value))
    assert run.meta_params["eps"] != np.float32(1e-8)  # meta-learned, not frozen
