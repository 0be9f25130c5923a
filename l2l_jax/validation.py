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


# The domain of each named hyperparameter: "positive" (> 0) or "unit" (in [0, 1)). One
# table for the inner optimizers' checks, meta.train's projection and hyper's defaults.
HYPERPARAMETER_DOMAINS: dict[str, str] = {
    "learning_rate": "positive",
    "eps": "positive",
    "b1": "unit",
    "b2": "unit",
    "momentum": "unit",
    "decay": "unit",
}


def float_array(name: str, x) -> jnp.ndarray:
    """``x`` as a floating-point JAX array, or a ``TypeError`` naming ``name``.

    Python numbers and lists are converted (integers to the default float dtype); an
    array with an integer, boolean or complex dtype is refused rather than cast silently.
    """
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be an array of floats, got {type(x).__name__}.")
    dtype = getattr(x, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must be an array of floats, got dtype {dtype}; cast it first, e.g. "
            f"{name}.astype(jnp.float32) (a complex matrix is not a valid input at all)."
        )
    try:
        arr = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(f"{name} must be an array of floats, got {type(x).__name__}.") from err
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be an array of real floats, got complex values.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def dtypes_match_x64(name: str, tree) -> None:
    """``TypeError`` if ``tree`` holds float64 arrays while ``jax_enable_x64`` is off (a task
    built inside ``jax.enable_x64(True)`` and used outside it)."""
    if jax.config.jax_enable_x64:
        return
    wide = [leaf.dtype for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "dtype")]
    if any(d in (jnp.float64, jnp.complex128) for d in wide):
        raise TypeError(
            f"{name} holds float64 arrays but jax_enable_x64 is off here: use it inside the "
            "same `with jax.enable_x64(True):` block it was built in, or build it in float32."
        )


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


def hyperparameter(name: str, value) -> None:
    """Checks of one named hyperparameter value (concrete values only: under ``jit`` the
    checks are skipped): a number, not a bool; finite; ``>= 0``; and ``< 1`` for the
    decays (:data:`HYPERPARAMETER_DOMAINS`)."""
    if isinstance(value, bool) or getattr(value, "dtype", None) == jnp.bool_:
        raise TypeError(f"hyperparameter {name!r} must be a number, got the bool {value!r}.")
    x = jnp.asarray(value)
    if x.ndim == 0 and is_concrete(x) and not jnp.issubdtype(x.dtype, jnp.complexfloating):
        value = float(x)  # shown as a number, not an Array repr
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"hyperparameter {name!r} must be real, got {value!r}.")
    if known_true(~jnp.isfinite(x)):
        raise ValueError(f"hyperparameter {name!r} must be finite, got {value!r}.")
    if known_true(x < 0):
        raise ValueError(
            f"hyperparameter {name!r} must be >= 0, got {value!r}. Step sizes and decay "
            "rates are non-negative; meta.train keeps them in range for you."
        )
    if HYPERPARAMETER_DOMAINS.get(name) == "unit" and known_true(x >= 1):
        raise ValueError(
            f"hyperparameter {name!r} is a decay and must be in [0, 1), got {value!r}."
        )
