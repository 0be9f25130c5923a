"""Bounded-memory reverse mode: ``remat`` segments the unroll's scan under
``jax.checkpoint`` without changing what is computed.

Remat and plain are different compiled programs (the scan is nested in segments, and
under differentiation XLA compiles the recomputed segments on their own and sums the
gradients per segment), so nothing here is compared bit for bit (docs/reliability.md):
forward values (the unroll and the objective) and gradients agree up to float rounding,
relative 1e-6 in float32 (~8 ulps) where the unroll converges and 1e-12 in float64
(including truncation by ``max_norm``, whose projection amplifies float32 rounding to
~1e-5). A remat bug (a step skipped or repeated at a segment boundary, another key)
moves them by one step's change, far outside these bounds. Integers (``truncated_at``,
steps, keys) are equal exactly.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, metagrad, tasks, truncated
from l2l_jax.inner.unroll import checkpointed_scan, remat_segment


def _task(dtype=jnp.float32) -> tasks.Quadratic:
    return tasks.Quadratic.random(jax.random.key(0), 20, scale=0.5, dtype=dtype)


def _unroll_fn(task, optimizer, steps, remat, max_norm=None):
    """Jitted ``eta -> ((params, losses, truncated_at), d final loss / d eta)``: one program,
    the forward values its own forward pass (the forward-only programs of remat are
    compared in ``test_meta_objective_remat_and_forward``)."""
    key = jax.random.key(1)

    def run(eta):
        r = inner.unroll(task, optimizer, eta, steps, key, max_norm=max_norm, remat=remat)
        return r.losses[-1], (r.params, r.losses, r.truncated_at)

    grad = jax.grad(run, has_aux=True)
    return jax.jit(lambda eta: grad(eta)[::-1])


def _compare(task, optimizer, steps, remat, eta, rtol, max_norm=None):
    """Forward values and gradients to ``rtol``; returns the forward values."""
    out, g = _unroll_fn(task, optimizer, steps, None, max_norm)(eta)
    out_r, g_r = _unroll_fn(task, optimizer, steps, remat, max_norm)(eta)
    _close(out_r, out, rtol)  # different programs: the gradients' bound (module docstring)
    assert np.isfinite(g) and g != 0
    np.testing.assert_allclose(g_r, g, rtol=rtol)
    return out


def _close(a, b, rtol) -> None:
    """Float leaves within ``rtol`` of the leaf's largest entry (``atol = rtol max |b|``:
    an entry near 0 carries the rounding of its neighbours' scale); other leaves (steps,
    ``truncated_at``, keys) exactly."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if np.issubdtype(y.dtype, np.floating):
            scale = float(np.max(np.abs(y), initial=0.0))
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale)
        else:
            np.testing.assert_array_equal(x, y)


# (optimizer, t, remat): t a multiple of the segment, not a multiple, shorter than it, sqrt.
CASES = [
    (inner.gd(), 37, 5),
    (inner.gd(), 10, 100),
    (inner.sgd(batch_size=4), 40, 5),
    (inner.sgd(batch_size=4), 17, True),
]


@pytest.mark.parametrize(
    ("optimizer", "steps", "remat"), CASES, ids=["gd-37-5", "gd-10-100", "sgd-40-5", "sgd-17-sqrt"]
)
def test_remat_unroll_same_values_and_gradients(optimizer, steps, remat):
    _compare(_task(), optimizer, steps, remat, jnp.asarray(0.003), rtol=1e-6)


@pytest.mark.parametrize(("steps", "remat"), [(37, 5), (12, True)])
def test_remat_with_truncation(steps, remat):
    with jax.enable_x64(True):
        task, eta = _task(jnp.float64), jnp.asarray(0.03)  # diverges: frozen at step 3
        out = _compare(task, inner.sgd(batch_size=3), steps, remat, eta, 1e-12, max_norm=3.0)
        assert int(out[2]) > 0  # truncated_at


def test_meta_objective_remat_and_forward():
    task, eta = _task(), jnp.asarray(0.003)
    plain = metagrad.meta_objective(task, inner.gd(), "last_loss", steps=50)
    value, g = jax.value_and_grad(plain)(eta)
    for grad, remat in (("autodiff", 7), ("autodiff", True), ("forward", 7)):
        f = metagrad.meta_objective(task, inner.gd(), "last_loss", steps=50, grad=grad, remat=remat)
        v_r, g_r = jax.value_and_grad(f)(eta)
        np.testing.assert_allclose(v_r, value, rtol=1e-6)
        np.testing.assert_allclose(g_r, g, rtol=1e-6)
        # forward-only value: a different program from the plain one, same bound
        np.testing.assert_allclose(f(eta), plain(eta), rtol=1e-6)
    assert "remat=7" in repr(f)


def test_checkpointed_scan_matches_scan_with_pytrees():
    def f(carry, x):
        a, b = carry
        return (a * x["u"] + b, b + 1.0), {"y": a + x["u"], "z": x["v"] * 2}

    xs = {"u": jnp.linspace(0.9, 1.1, 23), "v": jnp.arange(23)}
    init = (jnp.asarray(1.0), jnp.asarray(0.5))
    ref = jax.lax.scan(f, init, xs)
    # A nested scan is another program: each of the 23 steps may round a * u + b once
    # differently (a fused multiply-add, say), so a is held to 23 float32 ulps.
    rtol = 23 * np.finfo(np.float32).eps
    for segment in (1, 4, 5, 23, 50):
        _close(checkpointed_scan(f, init, xs, 23, segment), ref, rtol)
    # segment=None is jax.lax.scan itself: the same program, same host: bitwise
    none = checkpointed_scan(f, init, xs, 23, None)
    jax.tree.map(np.testing.assert_array_equal, none, ref)


def _temp_bytes(steps: int, remat) -> int:
    task = _task()
    f = metagrad.meta_objective(task, inner.gd(), "last_loss", steps=steps, remat=remat)
    compiled = jax.jit(jax.grad(f)).lower(jnp.asarray(0.003)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_remat_bounds_memory_and_program_size():
    plain, ckpt = _temp_bytes(10_000, None), _temp_bytes(10_000, True)
    assert ckpt * 10 < plain, (ckpt, plain)

    task = _task()

    def size(steps):
        f = lambda eta: inner.unroll(task, inner.gd(), eta, steps, remat=10).final_loss
        return len(re.sub(r"[\d\s]+", "", str(jax.make_jaxpr(jax.grad(f))(0.01))))

    assert size(100) == size(10_000)


def test_remat_segment_and_errors():
    assert remat_segment(None, 100) is None and remat_segment(False, 100) is None
    assert remat_segment(True, 100) == 10 and remat_segment(True, 10) == 4
    assert remat_segment(True, 1) == 1 and remat_segment(7, 5) == 5
    for bad in (0, -3, 2.5, "sqrt"):
        with pytest.raises(ValueError, match="remat"):
            remat_segment(bad, 10)
        with pytest.raises(ValueError, match="remat"):
            metagrad.meta_objective(_task(), inner.gd(), steps=10, remat=bad)
        with pytest.raises(ValueError, match="remat"):
            truncated.TruncatedConfig(remat=bad)


def test_truncated_segment_remat():
    """tbptt through a K-step segment gives the same gradient with remat."""
    task = _task()
    opt = inner.momentum()
    hp = opt.hparams(learning_rate=0.003, momentum=0.5)
    base = dict(horizon=9, segment=7, meta_batch=2, batch_size=4, eval_batch_size=4)

    def gradient(remat):
        cfg = truncated.TruncatedConfig(**base, remat=remat)
        state = truncated.init_state(jax.random.key(0), task, opt, cfg, meta_params=hp)
        fn = jax.jit(lambda mp, runs: truncated.tbptt_gradient(mp, runs, task, opt, cfg))
        return fn(state.meta_params, state.inner)

    loss, g, runs, _ = gradient(None)
    loss_r, g_r, runs_r, _ = gradient(3)
    # different programs (remat recomputes the segment): float32 rounding, ~8 ulps
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    _close(runs_r, runs, 1e-6)
    for a, b in zip(jax.tree.leaves(g_r), jax.tree.leaves(g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_old_checkpoint_configs_resume():
    """A config saved before ``remat`` existed means ``remat=None``."""
    cfg = truncated.TruncatedConfig()
    saved = {k: v for k, v in cfg.to_dict().items() if k != "remat"}
    assert truncated._config_with_defaults(saved) == cfg.to_dict()
    other = truncated.TruncatedConfig(remat=4).to_dict()
    assert truncated._config_with_defaults(saved) != other
