"""numerics.log_abs_one_minus against mpmath, in float32 and float64 (a few ulps)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from l2l_jax.closed_forms.numerics import log_abs_one_minus


def _cases(dtype):
    dt = np.dtype(dtype)
    one, two = dt.type(1), dt.type(2)
    xs = [0.0, 1e-30, 1e-12, 1e-6, 0.24, 0.25, 0.26, 0.3, 0.4, 0.49, 0.5, 0.51, 0.6, 0.9, 0.999]
    xs += [1.4, 1.5, 1.6, 1.74, 1.75, 1.76, 1.999]
    xs += [2.001, 2.5, 10.0, 1e3, 1e6]
    xs = [dt.type(x) for x in xs]
    for k in (1, 2, 5, 100):  # a few ulps around 1 and 2
        xs += [one + k * np.spacing(one), one - k * np.spacing(one) / 2]
        xs += [two + k * np.spacing(two), two - k * np.spacing(two) / 2]
    lams = [dt.type(v) for v in (1.0, 0.7, 3.3e-4, 1234.5)]
    pairs = [(x / lam, lam) for x in xs for lam in lams]  # eta = x/lam rounded: x not exact
    pairs += [(dt.type(1) / lam, lam) for lam in lams]  # eta = 1/lam as a float
    return [(dt.type(e), dt.type(lam)) for e, lam in pairs]


def _mp_ref(eta, lam):
    with mpmath.workdps(60):
        y = 1 - mpmath.mpf(float(eta)) * mpmath.mpf(float(lam))
        if y == 0:
            return -np.inf, 1.0
        return float(mpmath.log(abs(y))), (1.0 if y > 0 else -1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_abs_one_minus_matches_mpmath(dtype):
    with jax.enable_x64(dtype == "float64"):
        cases = _cases(dtype)
        eta = jnp.asarray([c[0] for c in cases], dtype)
        lam = jnp.asarray([c[1] for c in cases], dtype)
        got, sign = log_abs_one_minus(eta, lam)
        assert got.dtype == jnp.dtype(dtype)
        got, sign = np.asarray(got, np.float64), np.asarray(sign)
    eps = float(np.finfo(np.dtype(dtype)).eps)
    for (e, lam), g, s in zip(cases, got, sign, strict=True):
        ref, ref_sign = _mp_ref(e, lam)
        if np.isneginf(ref):
            assert np.isneginf(g), (e, lam, g)
            continue
        # a few ulps relative; an absolute floor of one ulp of the result's scale
        tol = 4 * eps * abs(ref) + np.finfo(np.dtype(dtype)).tiny
        assert abs(g - ref) <= tol, (dtype, e, lam, g, ref, abs(g - ref) / max(abs(ref), 1e-300))
        if ref != 0:
            assert s == ref_sign, (e, lam, s, ref_sign)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exactly_one_gives_minus_inf(dtype):
    with jax.enable_x64(dtype == "float64"):
        for lam in (1.0, 0.5, 4.0, 0.25):  # powers of two: eta*lam == 1 exactly
            val, sign = log_abs_one_minus(jnp.asarray(1 / lam, dtype), jnp.asarray(lam, dtype))
            assert np.isneginf(float(val))
            assert float(sign) == 1.0
