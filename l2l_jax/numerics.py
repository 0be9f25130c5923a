"""Log-space arithmetic shared by every stable meta-gradient.

The quantities of Wang et al. (2021), Eq. 1-2, are sums of terms
``w_i |1 - eta*lambda_i|^(2t)`` that over- or underflow long before their ratios do.
Everything here works with ``log|1 - eta*lambda|`` instead, computed so that its
relative error stays a few ulps for *every* eta, including:

* ``eta*lambda`` close to 0, where ``log(1 - x)`` would lose all digits (``log1p``);
* ``eta*lambda`` close to 1, where ``1 - x`` cancels (the product is formed exactly);
* ``eta*lambda`` close to 2, where ``log(x - 1)`` is tiny and cancels (``log1p(x - 2)``);
* ``eta*lambda == 1`` exactly, which gives ``-inf`` (the iterate hits the minimum).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jnp.ndarray

# Masks that keep the top half of the significand: hi*hi, hi*lo and lo*hi products of
# two such halves are exact in the working precision (Dekker/Veltkamp splitting, done
# with a bit mask so no compiler contraction can spoil it).
_SPLIT = {
    np.dtype(np.float32): (jnp.uint32, np.uint32(0xFFFFF000)),
    np.dtype(np.float64): (jnp.uint64, np.uint64(0xFFFFFFFFF8000000)),
}


def split_significand(x: Array) -> tuple[Array, Array]:
    """Exact split ``x = hi + lo`` with ``hi`` holding the top half of the significand."""
    x = jnp.asarray(x)
    if x.dtype not in _SPLIT:
        raise TypeError(
            f"split_significand supports float32 and float64, got {x.dtype}; "
            "cast the task with task.astype(jnp.float32) first."
        )
    itype, mask = _SPLIT[x.dtype]
    hi = lax.bitcast_convert_type(lax.bitcast_convert_type(x, itype) & mask, x.dtype)
    return hi, x - hi


def exact_product(a: Array, b: Array) -> tuple[Array, Array]:
    """Return ``(p, r)`` with ``a*b = p + r`` to about twice the working precision.

    ``p`` is the product of the high halves (exact), ``r`` the small remainder.
    """
    a_hi, a_lo = split_significand(a)
    b_hi, b_lo = split_significand(b)
    return a_hi * b_hi, (a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo


def log_abs_one_minus(eta: Array, lam: Array) -> tuple[Array, Array]:
    """``(log|1 - eta*lam|, sign(1 - eta*lam))``, accurate to a few ulps for any ``eta*lam``.

    This is the per-eigenvalue contraction rate of gradient descent on a quadratic,
    the building block of Eq. 1-2 of Wang et al. (2021). At ``eta*lam == 1`` the log is
    ``-inf`` (the iterate lands on the minimizer in that direction); the sign there is +1.
    Inputs broadcast against each other.
    """
    eta, lam = jnp.broadcast_arrays(jnp.asarray(eta), jnp.asarray(lam))
    p, r = exact_product(eta, lam)
    x = p + r
    # 0.5 < x < 1.5: 1 - p and p - 1 are exact (Sterbenz), so the only rounding is the
    # final subtraction of r: relative error of |1 - x| below one ulp.
    near_one = jnp.log(jnp.abs((1 - p) - r))
    # x <= 0.5: log1p keeps digits when x is tiny.
    below = jnp.log1p(-x)
    # x >= 1.5: log(x - 1) = log1p(x - 2), and p - 2 is exact for p in [1, 4].
    above = jnp.log1p((p - 2) + r)
    log_abs = jnp.where(x <= 0.5, below, jnp.where(x >= 1.5, above, near_one))
    sign = jnp.where(x > 1, -jnp.ones_like(x), jnp.ones_like(x))
    return log_abs, sign
