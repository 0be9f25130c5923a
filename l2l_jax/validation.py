"""Checks at API boundaries: each names the offending field and says how to fix it."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

_ABSTRACT = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
)


def is_concrete(x) -> bool:
    """True when ``x`` has a value now (not an abstract tracer under ``jit``/``vmap``)."""
    try:
        np.asarray(x)
    except _ABSTRACT:
        return False
    return True


def known_true(predicate) -> bool:
    """``bool(predicate)`` when its value is known now, else False.

    Under ``jax.grad``/``jax.jvp`` (outside ``jit``) values are still known and checks
    run; under ``jit``/``vmap`` they cannot, and are skipped.
    """
    try:
        return bool(predicate)
    except _ABSTRACT:
        return False


def float_array(name: str, x) -> jnp.ndarray:
    """``x`` as a floating-point JAX array, or a ``TypeError`` naming ``name``."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be an array of floats, got {type(x).__name__}.")
    try:
        arr = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(f"{name} must be an array of floats, got {type(x).__name__}.") from err
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def finite(name: str, x) -> None:
    """``ValueError`` if a concrete ``x`` holds NaN or inf."""
    if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name} must be finite, got NaN or inf entries.")


def positive_int(name: str, x) -> int:
    """``x`` as a Python int >= 1, else a clear error."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {x!r}.")
    if x <= 0:
        raise ValueError(f"{name} must be a positive integer, got {x}.")
    return int(x)


def positive(name: str, x) -> float:
    """A concrete real ``x > 0``."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not x > 0:
        raise ValueError(f"{name} must be a positive number, got {x!r}.")
    return float(x)


def non_negative_values(name: str, tree) -> None:
    """``ValueError`` if any concrete leaf of ``tree`` is negative or NaN."""
    for leaf in jax.tree_util.tree_leaves(tree):
        leaf = jnp.asarray(leaf)
        if known_true(jnp.any(jnp.isnan(leaf) | (leaf < 0))):
            raise ValueError(
                f"{name} must be >= 0 and not NaN. Step sizes and decay rates are "
                "non-negative; meta.train projects eta onto eta >= 0 for you."
            )
