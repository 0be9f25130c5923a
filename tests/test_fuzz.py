"""Property-based fuzz of the meta-objective and meta-training (hypothesis).

Random configurations: a quadratic, a least-squares task or a tiny MLP; GD, momentum or
Adam; step sizes from 1e-8 to far past divergence (1e4); unroll lengths t from 1 to 1e5;
float32 and float64; every gradient method that applies (``autodiff``, ``forward``, and
``stable`` for GD on the quadratic and least squares). For each one:

* ``F(eta)`` and its meta-gradient never raise;
* two steps of ``metagrad.minimize`` never apply a non-finite step: a step is counted as
  non-finite exactly when the value or the meta-gradient at its iterate is NaN/inf, and
  then the iterate does not move; every iterate stays finite and in its domain.

``make test`` runs 6 examples (t <= 300); the slow mark runs 1000 (``make test-slow``). Programs
are cached per (task, optimizer, t, method, dtype), so the examples pay for a compile only
the first time a combination appears.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2l_jax import inner, metagrad, tasks

STEPS = (1, 3, 30, 300, 3_000, 100_000)
PROBLEMS = ("quadratic", "least_squares", "mlp")
OPTIMIZERS = {"gd": inner.gd, "momentum": inner.momentum, "adam": inner.adam}
META_TX = optax.sgd(1e-3)  # one object: metagrad.minimize compiles once per objective


def _task(problem: str, dtype):
    key = jax.random.key(0)
    if problem == "quadratic":
        return tasks.Quadratic.random(key, 3, scale=0.5, dtype=dtype)
    if problem == "least_squares":
        return tasks.LeastSquares.sample(key, 3, 4, 4, 0.5, dtype=dtype)
    k1, k2, k3 = jax.random.split(key, 3)
    images = jax.random.uniform(k1, (6, 4), dtype)
    labels = jax.random.randint(k2, (6,), 0, 2)
    return tasks.MnistMLP(images, labels, init_key=k3, sizes=(4, 3, 2))


@functools.cache
def _objective(problem: str, optimizer: str, steps: int, method: str, x64: bool):
    """``(F, jitted value_and_grad of F)``: one compile per combination (built under the
    caller's x64 mode)."""
    dtype = jnp.float64 if x64 else jnp.float32
    task = _task(problem, dtype)
    f = metagrad.meta_objective(task, OPTIMIZERS[optimizer](), steps=steps, grad=method)
    return f, jax.jit(jax.value_and_grad(f))


def _methods(problem: str, optimizer: str) -> tuple[str, ...]:
    stable = problem != "mlp" and optimizer == "gd"
    return ("autodiff", "forward") + (("stable",) if stable else ())


@st.composite
def configurations(draw, max_steps: int = STEPS[-1]):
    problem = draw(st.sampled_from(PROBLEMS))
    optimizer = draw(st.sampled_from(tuple(OPTIMIZERS)))
    method = draw(st.sampled_from(_methods(problem, optimizer)))
    steps = draw(st.sampled_from([t for t in STEPS if t <= max_steps]))
    if method == "forward" and steps > 3_000:  # forward mode's cost grows with eta's size only
        steps = 3_000
    x64 = draw(st.booleans())
    eta = 10.0 ** draw(st.floats(-8.0, 4.0))
    return problem, optimizer, method, steps, x64, eta


def _check(problem, optimizer, method, steps, x64, eta):
    with jax.enable_x64(x64):
        f, value_and_grad = _objective(problem, optimizer, steps, method, x64)
        dtype = jnp.float64 if x64 else jnp.float32
        hp = OPTIMIZERS[optimizer]().hparams(learning_rate=eta)
        hp = hp if isinstance(hp, dict) else {"learning_rate": hp}  # named: domains apply
        hp = jax.tree.map(lambda x: jnp.asarray(x, dtype), hp)
        f(hp)  # never raises, whatever eta and t
        run = metagrad.minimize(f, hp, META_TX, steps=2, progress=False)
        traj = jax.tree.map(np.asarray, run.trajectory)
        for i in range(2):
            at = jax.tree.map(lambda x, i=i: jnp.asarray(x[i]), run.trajectory)
            v, g = value_and_grad(at)
            bad = not (np.isfinite(v) and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g)))
            assert bool(run.nonfinite[i]) == bad, (i, float(v))
            if bad:  # skipped: the iterate did not move
                for leaf in jax.tree.leaves(traj):
                    assert leaf[i + 1] == leaf[i]
        for name, leaf in traj.items():  # finite and in the domain, every iterate
            assert np.all(np.isfinite(leaf)) and np.all(leaf >= 0), name
            if name in ("b1", "b2", "momentum"):
                assert np.all(leaf < 1), name


@settings(max_examples=6)
@given(configurations(max_steps=300))
def test_fuzz_never_crashes_and_never_applies_a_nonfinite_step(config):
    _check(*config)


@pytest.mark.slow
@settings(max_examples=1000)
@given(configurations())
def test_fuzz_1000_configurations(config):
    _check(*config)
