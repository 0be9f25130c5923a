"""Pieces shared by learned optimizers: checkpoints of (architecture, meta-parameters)
and decays parametrized in logit space.

:mod:`l2l_jax.learned.mlp_lopt` and :mod:`l2l_jax.learned.nominal` save and load through
these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
MetaParams = dict[str, Any]

_PARAMS, _CONFIG = "meta_params", "config"

# Decays are sigmoid(logit) with |logit| <= MAX_LOGIT: in [3.1e-7, 1 - 3.1e-7], so they
# stay strictly inside (0, 1) even in float32 (whose spacing just below 1 is 6e-8).
MAX_LOGIT = 15.0


def logit(p: float) -> float:
    """``log(p / (1 - p))`` of a probability in ``(0, 1)`` (in float64, on the host)."""
    return math.log(p) - math.log1p(-p)


def decay_terms(base: Array, offset: Array) -> tuple[Array, Array, Array]:
    """``(b, 1 - b, log b)`` for ``b = sigmoid(base + offset)``, logit clipped to
    ``[-MAX_LOGIT, MAX_LOGIT]``.

    ``1 - b = sigmoid(-z)`` and ``log b = log_sigmoid(z)`` are computed directly, so they
    keep full relative precision when ``b`` is close to 1 (``1 - 0.999`` is not a
    difference of two rounded numbers).
    """
    z = jnp.clip(base + offset, -MAX_LOGIT, MAX_LOGIT)
    return jax.nn.sigmoid(z), jax.nn.sigmoid(-z), jax.nn.log_sigmoid(z)


def save_checkpoint(
    path: str | Path, meta_params: MetaParams, config: Mapping[str, Any], shapes: MetaParams
) -> Path:
    """Write ``meta_params`` and the JSON ``config`` as an orbax checkpoint (atomic).

    ``shapes`` is the expected ``ShapeDtypeStruct`` tree (checked before writing). The
    directory must not exist yet (orbax writes a temporary one and renames it).
    """
    import orbax.checkpoint as ocp

    chex.assert_trees_all_equal_shapes(meta_params, shapes)
    path = Path(path).absolute()
    meta_params = jax.tree.map(np.asarray, meta_params)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            path,
            args=ocp.args.Composite(
                **{
                    _PARAMS: ocp.args.StandardSave(meta_params),
                    _CONFIG: ocp.args.JsonSave(dict(config)),
                }
            ),
        )
    return path


def load_config(path: str | Path) -> dict[str, Any]:
    """The JSON ``config`` item of a checkpoint written by :func:`save_checkpoint`."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no learned-optimizer checkpoint at {path}.")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(path, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))
    return dict(restored[_CONFIG])


def load_meta_params(path: str | Path, shapes: MetaParams) -> MetaParams:
    """The ``meta_params`` item of a checkpoint, checked against ``shapes``."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(
            path, args=ocp.args.Composite(**{_PARAMS: ocp.args.StandardRestore()})
        )
    meta_params = jax.tree.map(jnp.asarray, restored[_PARAMS])
    chex.assert_trees_all_equal_shapes(meta_params, shapes)
    return meta_params
