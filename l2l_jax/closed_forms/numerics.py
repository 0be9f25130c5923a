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


def exact_product(a: Array, b: Array) -> tuple[Array, Array, Array, Array]:
    """``a*b = p + r1 + r2 + r3``: four products of significand halves.

    ``p = a_hi*b_hi``, ``r1 = a_hi*b_lo`` and ``r2 = a_lo*b_hi`` are exact; ``r3 = a_lo*b_lo``
    is exact in float32 and within one ulp of itself (about ``u^2 |p|``) in float64.
    """
    a_hi, a_lo = split_significand(a)
    b_hi, b_lo = split_significand(b)
    return a_hi * b_hi, a_hi * b_lo, a_lo * b_hi, a_lo * b_lo


def _two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    """Knuth's error-free sum: ``a + b = s + e`` exactly."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _compensated_sum(first: Array, *rest: Array) -> Array:
    """Sum of exact terms as if in twice the working precision, then rounded (Ogita et al.).

    Summing the remainders naively loses digits when the total cancels (``eta*lam`` near 1
    or 2), because their own rounding error is relative to *them*, not to the total.
    """
    s, c = first, jnp.zeros_like(first)
    for a in rest:
        s, e = _two_sum(s, a)
        c = c + e
    return s + c


def log_abs_one_minus(eta: Array, lam: Array) -> tuple[Array, Array]:
    """``(log|1 - eta*lam|, sign(1 - eta*lam))``, accurate to a few ulps for any ``eta*lam``.

    This is the per-eigenvalue contraction rate of gradient descent on a quadratic,
    the building block of Eq. 1-2 of Wang et al. (2021). At ``eta*lam == 1`` the log is
    ``-inf`` (the iterate lands on the minimizer in that direction); the sign there is +1.
    Inputs broadcast against each other.
    """
    eta, lam = jnp.broadcast_arrays(jnp.asarray(eta), jnp.asarray(lam))
    p, r1, r2, r3 = exact_product(eta, lam)
    x = p + ((r1 + r2) + r3)
    # 0.25 < x < 1.75: 1 - p is exact (Sterbenz) where it cancels (p >= 0.5); the exact
    # remainders are then subtracted with a compensated sum, so |1 - x| keeps a relative
    # error of about one ulp.
    one_minus = _compensated_sum(1 - p, -r1, -r2, -r3)
    near_one = jnp.log(jnp.abs(one_minus))
    # x <= 0.25: log1p keeps digits when x is tiny. (The branch points 0.25/1.75 keep
    # log1p's argument in [-0.25, inf): XLA's float64 log1p is ~45 ulps off near -0.4.)
    below = jnp.log1p(-x)
    # x >= 1.75: log(x - 1) = log1p(x - 2); p - 2 is exact for p in [1, 4], and x - 2 is
    # formed with the same compensated sum.
    above = jnp.log1p(_compensated_sum(p - 2, r1, r2, r3))
    log_abs = jnp.where(x <= 0.25, below, jnp.where(x >= 1.75, above, near_one))
    # the sign comes from the accurate 1 - x: x itself may round to exactly 1.
    negative = jnp.where((x <= 0.25) | (x >= 1.75), x > 1, one_minus < 0)
    sign = jnp.where(negative, -jnp.ones_like(x), jnp.ones_like(x))
    return log_abs, sign
