"""Deprecated: ``l2l_jax.meta`` was split in two.

``meta.meta_objective``, ``meta.train`` (now :func:`l2l_jax.metagrad.minimize`) and the
other full-unroll names live in :mod:`l2l_jax.metagrad`; ``meta.meta_train``,
``meta.TruncatedConfig`` and the other truncated meta-training names live in
:mod:`l2l_jax.truncated`. This module forwards the names the documentation promised, with a
``DeprecationWarning`` naming the new home, and keeps scripts written for it running:
``meta.truncated`` is the :mod:`l2l_jax.truncated` package, and ``meta.TruncatedConfig``
still takes the removed ``es_sigma``/``es_pairs`` settings, moved into the estimator they
were meant for (:func:`l2l_jax.truncated.config.legacy_estimator`).
"""

from __future__ import annotations

import warnings
from typing import Any

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
    "init_state": ("truncated", "init_state"),
    "make_meta_step": ("truncated", "make_meta_step"),
    "truncated": ("truncated", None),  # the package itself
}


def _truncated_config(*args: Any, es_sigma=None, es_pairs=None, **kwargs: Any):
    """``truncated.TruncatedConfig`` with the removed ``es_sigma``/``es_pairs`` moved into
    the estimator they were meant for (``estimator="pes", es_pairs=1`` is
    ``estimator=truncated.PES(pairs=1)``; TBPTT ignores them, as it did)."""
    from l2l_jax.truncated import config

    old = {k: v for k, v in (("es_sigma", es_sigma), ("es_pairs", es_pairs)) if v is not None}
    if old:
        name = kwargs.get("estimator", config.TruncatedConfig.estimator)
        kwargs["estimator"] = config.legacy_estimator(name, old)
    return config.TruncatedConfig(*args, **kwargs)


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(
            f"l2l_jax.meta has no {name!r}: it was split into l2l_jax.metagrad (full-unroll "
            "meta-objectives and their gradients) and l2l_jax.truncated (truncated "
            "meta-training)."
        )
    package, new = _MOVED[name]
    warnings.warn(
        f"l2l_jax.meta.{name} moved to l2l_jax.{package}" + (f".{new}" if new else ""),
        DeprecationWarning,
        stacklevel=2,
    )
    import importlib

    module = importlib.import_module(f"l2l_jax.{package}")
    if name == "TruncatedConfig":
        return _truncated_config
    return module if new is None else getattr(module, new)
