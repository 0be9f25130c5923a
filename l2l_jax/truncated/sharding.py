"""Data parallelism over devices: the meta-batch axis split over a 1-d mesh.

Every array of the estimator's state (``TruncatedState.inner``: the runs, and for PES the
pairs' runs and accumulators) has the meta-batch as its leading axis and is split along
it; the meta-parameters, the meta-optimizer state, the key and the counters are
replicated, and XLA turns the mean over the meta-batch into a cross-device reduction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from l2l_jax.truncated.config import TruncatedConfig
from l2l_jax.truncated.state import TruncatedState


def meta_batch_mesh(devices: Sequence[jax.Device] | None = None, axis: str = "batch") -> Mesh:
    """A 1-d :class:`jax.sharding.Mesh` over ``devices`` (default: all of ``jax.devices()``,
    every host's in a multi-host run) with the one axis ``axis``: pass it as
    ``meta_train(..., mesh=...)`` to split the meta-batch over them."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("meta_batch_mesh needs at least one device, got none.")
    return Mesh(np.asarray(devices), (axis,))


def check_mesh(mesh: Mesh, config: TruncatedConfig) -> None:
    """``ValueError`` unless ``mesh`` is 1-d and its device count divides ``meta_batch``."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh (e.g. truncated.meta_batch_mesh()), got "
            f"{type(mesh).__name__}."
        )
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"mesh must have one axis (the meta-batch is split along it), got axes "
            f"{mesh.axis_names} of shape {tuple(mesh.devices.shape)}; build it with "
            "truncated.meta_batch_mesh(devices)."
        )
    n = mesh.devices.size
    if config.meta_batch % n:
        up = -(-config.meta_batch // n) * n
        raise ValueError(
            f"TruncatedConfig.meta_batch = {config.meta_batch} is not divisible by the {n} "
            f"devices of the mesh: each device must hold the same number of inner runs. "
            f"Use meta_batch = {up} (a multiple of {n}), or a mesh over a number of devices "
            f"that divides {config.meta_batch}."
        )


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device of ``mesh`` holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def state_sharding(mesh: Mesh):
    """The layout of a :class:`~.state.TruncatedState` on a 1-d ``mesh``, as a pytree prefix.

    Every array of ``inner`` (the estimator's state) is split along its leading
    meta-batch axis over the mesh axis; the meta-parameters, the meta-optimizer state,
    the ES key and the counters are replicated. Usable as ``in_shardings`` /
    ``out_shardings`` of :func:`jax.jit` and with :func:`jax.device_put`.
    """
    rep = replicated(mesh)
    return TruncatedState(
        meta_params=rep,
        opt_state=rep,
        inner=NamedSharding(mesh, PartitionSpec(mesh.axis_names[0])),
        key=rep,
        step=rep,
        nonfinite_count=rep,
    )


def shard_state(state, mesh: Mesh):
    """``state`` placed on ``mesh`` as :func:`state_sharding` says (no copy where it is)."""
    return jax.device_put(state, state_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array of ``tree`` (e.g. the task and its data) replicated on ``mesh``.

    Typed PRNG keys (e.g. ``MnistMLP.init_key``) travel as their raw key data:
    ``jax.device_put`` refuses to place a key array on a mesh with other processes'
    devices (multi-process runs).
    """
    sharding = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.device_put(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(x, sharding)

    return jax.tree.map(put, tree)
