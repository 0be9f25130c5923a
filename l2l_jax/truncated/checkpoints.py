"""Orbax checkpoints of the whole meta-training state, restored bit-exactly.

Every leaf of the :class:`~.state.TruncatedState` (meta-parameters, meta-optimizer state,
the estimator's runs and, for PES, accumulators, the key and counters) is saved as a whole
host array next to the JSON config; a resume with another config is refused.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax.truncated.config import MOVED_TO_ESTIMATOR, TruncatedConfig, legacy_estimator
from l2l_jax.truncated.estimator import to_dict as estimator_to_dict

Array = jax.Array
_STATE, _CONFIG = "state", "config"


def to_host(x: Any) -> np.ndarray:
    """The whole array on the host (sharded arrays are gathered)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # multi-process: a collective
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def host_value(x: Any) -> np.ndarray:
    """A replicated value (a counter, a metric) on the host; in a multi-host run, from
    this process's own copy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def _leaves_dict(state) -> dict[str, np.ndarray]:
    return {f"{i:05d}": to_host(x) for i, x in enumerate(jax.tree.leaves(state))}


def _placed_like(x: np.ndarray, ref: Any) -> Array:
    """``x`` on the devices of ``ref`` with its sharding when ``ref`` spans several
    devices (a sharded state), else a default-device array as before."""
    sharding = getattr(ref, "sharding", None)
    if sharding is not None and len(sharding.device_set) > 1:
        return jax.device_put(x, sharding)
    return jnp.asarray(x)


def _saved_estimator(saved: Mapping[str, Any]) -> Any:
    """The estimator of a saved config in :func:`~.estimator.to_dict` form. A config
    written before estimators held their settings has a bare name and the
    ``es_sigma``/``es_pairs`` fields (:data:`~.config.MOVED_TO_ESTIMATOR`): they become
    the registered estimator's own fields (those it lacks, e.g. TBPTT's, were ignored)."""
    spec = saved.get("estimator", TruncatedConfig.estimator)
    if not isinstance(spec, str):
        return spec
    found = legacy_estimator(spec, saved)
    if isinstance(found, str):
        return {"name": spec}  # unknown: it will not match any config
    return estimator_to_dict(found)


def _config_with_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config with the fields it predates filled in with their defaults (the
    behaviour it was written with), and the old estimator settings translated
    (:func:`_saved_estimator`)."""
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(TruncatedConfig)
        if f.default is not dataclasses.MISSING
    }
    out = {**defaults, **saved, "estimator": _saved_estimator(saved)}
    for old in MOVED_TO_ESTIMATOR:
        out.pop(old, None)
    return json.loads(json.dumps(out))


def save_checkpoint(manager, state, config: TruncatedConfig) -> None:
    """Save ``state`` (every leaf) and ``config`` at step ``state.step`` (orbax, atomic)."""
    import orbax.checkpoint as ocp

    manager.save(
        int(host_value(state.step)),
        args=ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(_leaves_dict(state)),
                _CONFIG: ocp.args.JsonSave(config.to_dict()),
            }
        ),
    )


def restore_checkpoint(manager, template, config: TruncatedConfig, step: int | None = None):
    """The state saved at ``step`` (default: the latest), into ``template``'s structure.

    Arrays go onto the template's sharding when it is spread over several devices (a
    state placed by :func:`shard_state`), so a sharded run resumes sharded.

    Raises ``ValueError`` when the checkpoint was written with another config or a state
    of another structure, shape or dtype.
    """
    import orbax.checkpoint as ocp

    step = manager.latest_step() if step is None else step
    saved_config = manager.restore(
        step, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()})
    )[_CONFIG]
    if _config_with_defaults(saved_config) != json.loads(json.dumps(config.to_dict())):
        raise ValueError(
            f"the checkpoint at step {step} was written with config {saved_config}, not "
            f"{config.to_dict()}; resume with the same config or use a new directory."
        )
    restored = manager.restore(
        step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore()})
    )[_STATE]
    leaves, treedef = jax.tree.flatten(template)
    if len(restored) != len(leaves):
        raise ValueError(
            f"the checkpoint at step {step} has {len(restored)} arrays, the state "
            f"{len(leaves)}: it was written for another task or optimizer."
        )
    out = []
    for i, ref in enumerate(leaves):
        x = np.asarray(restored[f"{i:05d}"])
        ref_dtype = np.dtype(ref.dtype) if hasattr(ref, "dtype") else np.asarray(ref).dtype
        if x.shape != np.shape(ref) or x.dtype != ref_dtype:
            raise ValueError(
                f"checkpoint array {i} has shape {x.shape} {x.dtype}, the state expects "
                f"{np.shape(ref)} {ref_dtype}: another task or optimizer."
            )
        out.append(_placed_like(x, ref))
    return jax.tree.unflatten(treedef, out)
