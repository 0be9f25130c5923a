"""Deprecated: ``l2l_jax.meta`` was split in two.

``meta.meta_objective``, ``meta.train`` (now :func:`l2l_jax.metagrad.minimize`) and the
other full-unroll names live in :mod:`l2l_jax.metagrad`; ``meta.meta_train``,
``meta.TruncatedConfig`` and the other truncated meta-training names live in
:mod:`l2l_jax.truncated`. This module forwards the names the documentation promised, with a
``DeprecationWarning`` naming the new home.
"""

from __future__ import annotations

import warnings

_MOVED = {
    "meta_objective": ("metagrad", "meta_objective"),
    "MetaObjective": ("metagrad", "MetaObjective"),
    "METHODS": ("metagrad", "METHODS"),
    "train": ("metagrad", "minimize"),
    "TrainResult": ("metagrad", "MinimizeResult"),
    "meta_gd": ("metagrad", "meta_gd"),
    "MetaGD": ("metagrad", "MetaGD"),
    "NonFiniteWarning": ("metagrad", "NonFiniteWarning"),
    "meta_train": ("truncated", "meta_train"),
    "TruncatedConfig": ("truncated", "TruncatedConfig"),
    "TruncatedResult": ("truncated", "TruncatedResult"),
}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(
            f"l2l_jax.meta has no {name!r}: it was split into l2l_jax.metagrad (full-unroll "
            "meta-objectives and their gradients) and l2l_jax.truncated (truncated "
            "meta-training)."
        )
    package, new = _MOVED[name]
    warnings.warn(
        f"l2l_jax.meta.{name} moved to l2l_jax.{package}.{new}",
        DeprecationWarning,
        stacklevel=2,
    )
    import importlib

    return getattr(importlib.import_module(f"l2l_jax.{package}"), new)
