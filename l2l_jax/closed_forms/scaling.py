"""Exact power-of-two scaling: the arithmetic of every log-scaled computation.

A value ``x`` is carried as ``2^e x_hat`` with an integer exponent ``e`` and a mantissa
``x_hat`` of moderate size. Multiplying by a power of two built from its bits is exact
(unless the result leaves the normal range), so scaling adds no rounding of its own: the
rounding of any computation on ``x_hat`` is that of the same computation on ``x`` in a
float type with an unbounded exponent. Used by the log-scaled reverse pass
(:mod:`l2l_jax.metagrad.logscaled`) and by the tasks' log-space losses
(:mod:`l2l_jax.tasks.log_space`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def max_abs(tree) -> Array:
    """The largest magnitude over the leaves (in the widest of their dtypes)."""
    leaves = jax.tree.leaves(tree)
    dtype = jnp.result_type(*leaves)
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(dtype) for x in leaves]))


def _int_type(dtype):
    return jnp.int64 if jnp.finfo(dtype).bits == 64 else jnp.int32


def exponent(x: Array) -> Array:
    """``e`` with ``|x|`` in ``[2^(e-1), 2^e)`` (``frexp``'s exponent) for a normal ``x``,
    read from its bits; ``0`` for zero, subnormal and non-finite ``x`` (so a NaN or inf
    propagates unscaled). Not differentiable: under autodiff, pass a constant
    (:func:`jax.lax.stop_gradient`)."""
    if jnp.dtype(x.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        ok = jnp.isfinite(x) & (x != 0)
        return jnp.where(ok, jnp.frexp(jnp.where(ok, x, 1))[1], 0).astype(jnp.int32)
    info = jnp.finfo(x.dtype)
    bits = jax.lax.bitcast_convert_type(x, _int_type(x.dtype))
    field = ((bits >> info.nmant) & (2 ** (info.bits - 1 - info.nmant) - 1)).astype(jnp.int32)
    normal = (field > 0) & (field < 2 * info.maxexp - 1)
    return jnp.where(normal, field - (info.maxexp - 2), 0)


def power_of_two(n: Array, dtype) -> Array:
    """``2^n`` for an integer ``n`` in the normal exponent range of ``dtype``, built from
    its bits (exact)."""
    info = jnp.finfo(dtype)
    biased = (n.astype(_int_type(dtype)) + (info.maxexp - 1)) << info.nmant
    return jax.lax.bitcast_convert_type(biased, dtype)


def ldexp(tree, shift: Array):
    """``tree * 2^shift``: exact unless the result leaves the normal range (then ``0`` or
    ``+-inf``, as the true product rounds). The shift is applied as two powers of two of
    the same sign, each in the normal exponent range, so the intermediate product lies
    between the input and the result. Shifts are clipped to twice that range, beyond
    which a value of magnitude in ``[2^-1, 1)`` (all this is used to scale that far) is 0
    or inf anyway. Differentiable in ``tree`` (the factors are constants)."""
    factors = {}

    def scale(x):
        dtype = jnp.dtype(x.dtype)
        if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
            return jnp.ldexp(x, jnp.clip(shift, -(2**12), 2**12).astype(jnp.int32))
        if dtype not in factors:
            info = jnp.finfo(dtype)
            n = jnp.clip(shift, 2 * info.minexp, 2 * (info.maxexp - 1)).astype(jnp.int32)
            half = n >> 1  # floor(n / 2): same sign as n
            factors[dtype] = (power_of_two(half, dtype), power_of_two(n - half, dtype))
        first, second = factors[dtype]
        return x * first * second

    return jax.tree.map(scale, tree)
