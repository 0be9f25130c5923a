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
# table for the inner optimizers' checks, metagrad.minimize's projection and hyper's defaults.
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
                "non-negative; metagrad.minimize projects eta onto eta >= 0 for you."
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
            "rates are non-negative; metagrad.minimize keeps them in range for you."
        )
    if HYPERPARAMETER_DOMAINS.get(name) == "unit" and known_true(x >= 1):
        raise ValueError(
            f"hyperparameter {name!r} is a decay and must be in [0, 1), got {value!r}."
        )


def _raw_key_size() -> int:
    """Length of a legacy raw key (``jax.random.PRNGKey``) under the default PRNG impl."""
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape[-1]


def prng_key(name: str, key, *, batched: bool = False) -> jax.Array:
    """``key`` if it is one PRNG key (or, with ``batched``, an array of keys), else a
    ``TypeError``/``ValueError`` naming ``name``.

    Accepted: a typed key (``jax.random.key(seed)``, the library's convention) or a
    legacy raw ``uint32`` key (``jax.random.PRNGKey(seed)``), returned unchanged. An int
    seed is refused rather than converted: every entry point takes keys, so that one
    seed is split explicitly (``jax.random.split``) and never reused by accident in two
    places; the message gives the one-call fix. Works on tracers (only dtype and shape
    are read).
    """
    if isinstance(key, (bool, numbers.Integral, np.integer)):
        raise TypeError(
            f"{name} must be a PRNG key, got the int {int(key)}; pass "
            f"{name}=jax.random.key({int(key)})."
        )
    dtype = getattr(key, "dtype", None)
    shape = tuple(getattr(key, "shape", ()))
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != () and not batched:
            raise ValueError(
                f"{name} must be one PRNG key, got a batch of keys of shape {shape}; "
                f"pick one (e.g. {name}[0]) or build it with jax.random.key(seed)."
            )
        return key
    if dtype == np.uint32 and (shape[-1:] if batched else shape) == (_raw_key_size(),):
        return key
    got = f"dtype {dtype} and shape {shape}" if dtype is not None else type(key).__name__
    raise TypeError(f"{name} must be a PRNG key from jax.random.key(seed), got {got}.")


def meta_params(name: str, params, optimizer) -> None:
    """``ValueError`` naming ``name`` unless ``params`` has the tree structure and leaf
    shapes of ``optimizer.meta_params_shapes`` (a learned optimizer's; nothing to check
    for an optimizer without them). Catches meta-parameters made for another
    architecture, e.g. ``LOptConfig(hidden_sizes=(8,))`` given to a ``(4,)`` optimizer.
    """
    expected = getattr(optimizer, "meta_params_shapes", None)
    if expected is None:
        return
    fix = (
        "they were made for another configuration of the learned optimizer (e.g. other "
        "hidden_sizes or features); build them with this optimizer's init_meta_params(key) "
        "or load them with the optimizer they were trained with (learned.load)."
    )
    want = jax.tree_util.tree_structure(expected)
    got = jax.tree_util.tree_structure(params)
    if want != got:
        raise ValueError(
            f"{name} does not have the structure of the optimizer's meta-parameters "
            f"({got.num_leaves} arrays, expected {want.num_leaves}): {fix}"
        )
    for (path, leaf), spec in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree_util.tree_leaves(expected),
        strict=True,
    ):
        if tuple(np.shape(leaf)) != tuple(spec.shape):
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)} has shape {tuple(np.shape(leaf))}, the "
                f"optimizer expects {tuple(spec.shape)}: {fix}"
            )


def domain_of(path: tuple, hparam_names: tuple[str, ...] = ()) -> str:
    """The domain of the leaf at ``path`` (a ``jax.tree_util`` key path) of a pytree of
    hyperparameters: :data:`HYPERPARAMETER_DOMAINS` of its last dict key (``"positive"``
    or ``"unit"``), ``"none"`` for a leaf not named there or not under a dict key. A bare
    array (empty ``path``) is the optimizer's single hyperparameter when ``hparam_names``
    holds one (``inner.gd()``'s step size is a scalar, not a dict)."""
    key = path[-1] if path else None
    name = key.key if isinstance(key, jax.tree_util.DictKey) else None
    if not path and len(hparam_names) == 1:
        name = hparam_names[0]
    return HYPERPARAMETER_DOMAINS.get(name, "none")
