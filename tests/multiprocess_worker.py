"""Worker of ``tests/test_multiprocess.py`` (not collected by pytest: no ``test_`` prefix).

Two roles:

``python tests/multiprocess_worker.py OUT --process-id I --num-processes 2 --port P``
    One process of a multi-process run on this machine (started by the test with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=2``): the CPU backend's gloo
    collectives and ``jax.distributed.initialize`` with the coordinator on
    ``127.0.0.1:P``, so ``jax.devices()`` lists every process's devices. For each
    estimator of ``truncated.ESTIMATORS`` it meta-trains with the meta-batch split
    over the global mesh ``truncated.meta_batch_mesh()``: once straight through, once with
    checkpoints into ``OUT/ckpt_<estimator>`` (shared by the processes) killed after step
    ``KILL_AT``, and resumed from that checkpoint. It writes the final states, gathered to
    whole arrays, to ``OUT/p<I>_<estimator>_{straight,resumed}.npz`` and what it saw
    (devices, shard shapes, metrics) to ``OUT/p<I>.json``.

``python tests/multiprocess_worker.py OUT --reference [--sharded]``
    The single-process reference: for each estimator the initial state and a run without
    a mesh (one device), in ``OUT/ref_<estimator>_{initial,single}.npz``; with
    ``--sharded`` also a run on a mesh over all of its devices (``ref_*_sharded.npz``; run
    it with 4 forced host devices to compare with the 2 x 2-device run).

Exit status 77 (and a line on stderr) when this jaxlib has no gloo CPU collectives: the
test skips then.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

STEPS = 6  # meta-steps per run
CHECKPOINT_EVERY = 2
KILL_AT = 5  # the interrupted run dies after step 5; the resume restarts from step 4
GLOO_MISSING = 77


def setup(args: argparse.Namespace) -> None:
    """gloo collectives and ``jax.distributed`` (multi-process role only), before any
    computation starts the backend."""
    import jax

    if args.reference:
        return
    try:
        from jax._src.lib import _jax

        has_gloo = hasattr(_jax, "make_gloo_tcp_collectives")
    except ImportError:  # private module moved: let the config update decide
        has_gloo = True
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError) as err:
        has_gloo, reason = False, repr(err)
    else:
        reason = "jaxlib has no make_gloo_tcp_collectives"
    if not has_gloo:
        print(f"GLOO UNAVAILABLE: {reason}", file=sys.stderr)
        sys.exit(GLOO_MISSING)
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{args.port}",
        num_processes=args.num_processes,
        process_id=args.process_id,
        local_device_ids=None,
        initialization_timeout=60,
    )


def parts():
    """The tiny task, inner optimizer, initial meta-parameters and configs (one per
    estimator of ``truncated.ESTIMATORS``).

    Small enough that every process compiles each estimator's meta-step in seconds: a
    softmax regression (``MnistMLP`` with sizes 4-2; it carries a typed PRNG key, as the
    MNIST tasks do) on 32 synthetic training and 16 validation rows, with the step size
    of full-batch gradient descent as the meta-parameter.
    """
    import jax
    import jax.numpy as jnp

    from l2l_jax import inner, truncated
    from l2l_jax.tasks import MnistMLP

    kx, ky, kvx, kvy = jax.random.split(jax.random.key(0), 4)
    task = MnistMLP(
        jax.random.normal(kx, (32, 4)),
        jax.random.randint(ky, (32,), 0, 2),
        jax.random.normal(kvx, (16, 4)),
        jax.random.randint(kvy, (16,), 0, 2),
        init_key=jax.random.key(1),
        sizes=(4, 2),
    )
    base = dict(
        horizon=4,
        segment=2,
        meta_batch=8,
        eval_batch_size=None,
        objective="tbv",
        meta_lr=1e-2,
    )

    def two_pairs(cls):  # each estimator of the registry, with 2 pairs where it has pairs
        return cls(pairs=2) if "pairs" in {f.name for f in dataclasses.fields(cls)} else cls()

    configs = {
        name: truncated.TruncatedConfig(**base, estimator=two_pairs(cls))
        for name, cls in truncated.ESTIMATORS.items()
    }
    gd = inner.gd()  # hashable: the compiled-step cache serves the killed and the resumed run
    return task, gd, jnp.float32(0.5), configs


class Interrupt(Exception):
    pass


def kill_at(step: int):
    def callback(current, _):
        if current == step:
            raise Interrupt

    return callback


def gathered(state) -> dict[str, np.ndarray]:
    """Every leaf of ``state`` as a whole host array (a collective in a multi-process
    run: every process calls it)."""
    import jax
    from jax.experimental import multihost_utils

    def host(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return {f"{i:05d}": host(x) for i, x in enumerate(jax.tree.leaves(state))}


def multi_process(out: Path, pid: int) -> None:
    import jax

    from l2l_jax import truncated

    task, opt, meta_params, configs = parts()
    mesh = truncated.meta_batch_mesh()
    info: dict = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "mesh_processes": sorted({d.process_index for d in mesh.devices.flat}),
    }
    for name, config in configs.items():
        kwargs = dict(key=jax.random.key(3), meta_params=meta_params, progress=False, mesh=mesh)
        straight = truncated.meta_train(task, opt, config, STEPS, **kwargs)
        ckpt = out / f"ckpt_{name}"
        try:
            truncated.meta_train(
                task, opt, config, STEPS, checkpoint_dir=ckpt,
                checkpoint_every=CHECKPOINT_EVERY, callback=kill_at(KILL_AT), **kwargs,
            )  # fmt: skip
            raise AssertionError("the interrupted run was not interrupted")
        except Interrupt:
            pass
        resumed = truncated.meta_train(
            task, opt, config, STEPS, checkpoint_dir=ckpt, resume=True, **kwargs,
        )  # fmt: skip
        run_leaf = jax.tree.leaves(straight.state.inner)[0]
        meta_leaf = jax.tree.leaves(straight.state.meta_params)[0]
        info[name] = {
            "resumed_steps": [m["step"] for m in resumed.metrics],
            "meta_loss": [m["meta_loss"] for m in straight.metrics],
            "run_fully_addressable": run_leaf.is_fully_addressable,
            "run_local_rows": [s.data.shape[0] for s in run_leaf.addressable_shards],
            "run_global_rows": run_leaf.shape[0],
            "meta_spec": list(meta_leaf.sharding.spec),
        }
        for label, state in (("straight", straight.state), ("resumed", resumed.state)):
            np.savez(out / f"p{pid}_{name}_{label}.npz", **gathered(state))
    (out / f"p{pid}.json").write_text(json.dumps(info))


def reference(out: Path, sharded: bool) -> None:
    import jax

    from l2l_jax import truncated

    task, opt, meta_params, configs = parts()
    for name, config in configs.items():
        kwargs = dict(key=jax.random.key(3), meta_params=meta_params, progress=False)
        states = {
            "initial": truncated.init_state(kwargs["key"], task, opt, config, meta_params),
            "single": truncated.meta_train(task, opt, config, STEPS, **kwargs).state,
        }
        if sharded:
            mesh = truncated.meta_batch_mesh()
            states["sharded"] = truncated.meta_train(
                task, opt, config, STEPS, mesh=mesh, **kwargs
            ).state
        for label, state in states.items():
            np.savez(out / f"ref_{name}_{label}.npz", **gathered(state))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--sharded", action="store_true", help="reference: also on a mesh")
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    setup(args)
    if args.reference:
        reference(args.out, args.sharded)
    else:
        multi_process(args.out, args.process_id)


if __name__ == "__main__":
    main()
