"""Sharded meta-batches: the same meta-training on 1 and on 4 devices.

The device count of a JAX process is fixed when the backend starts, so the 4-device part
runs this file as a script in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (four simulated CPU devices). The
worker meta-trains a learned optimizer on a tiny MLP task with synthetic data, once
without a mesh (one device) and once with the meta-batch split over the 4 devices, then
kills and resumes the sharded run from a checkpoint; the tests here compare the saved
arrays.

Tolerance: the sharded run sums the meta-batch mean in another order (a cross-device
reduction), so the meta-parameters agree to float32 rounding, not bitwise: asserted to
``atol = rtol = 1e-5`` after 6 meta-steps (observed differences are ~1e-7). The resumed
sharded run is asserted bit-identical to the uninterrupted sharded run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from l2l_jax import learned, truncated
from l2l_jax.tasks import MnistMLP

DEVICES = 4
STEPS = 6
ATOL = RTOL = 1e-5
LOPT = learned.MLPLOpt(
    learned.LOptConfig(hidden_sizes=(4,), decays=(0.9,), time_scales=(10.0,), step_mult=0.1)
)
CONFIG = truncated.TruncatedConfig(
    horizon=12,
    segment=4,
    meta_batch=8,
    batch_size=8,
    eval_batch_size=8,
    objective="tbv",
    meta_lr=1e-2,
)


def small_task() -> MnistMLP:
    """An MLP 16-8-4 on 64 synthetic training and 32 validation rows."""
    kx, ky, kvx, kvy = jax.random.split(jax.random.key(0), 4)
    return MnistMLP(
        jax.random.normal(kx, (64, 16)),
        jax.random.randint(ky, (64,), 0, 4),
        jax.random.normal(kvx, (32, 16)),
        jax.random.randint(kvy, (32,), 0, 4),
        init_key=jax.random.key(1),
        sizes=(16, 8, 4),
    )


# -- the worker (runs with 4 devices) ----------------------------------------------------------


class _Interrupt(Exception):
    pass


def _kill_at(step: int):
    def callback(current, _):
        if current == step:
            raise _Interrupt

    return callback


def _leaves(state) -> dict[str, np.ndarray]:
    return {f"{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}


def worker(out: Path) -> None:
    """Meta-train without and with the 4-device mesh; kill and resume the sharded run."""
    assert jax.device_count() == DEVICES, jax.devices()
    task = small_task()
    kwargs = dict(key=jax.random.key(3), progress=False)
    single = truncated.meta_train(task, LOPT, CONFIG, STEPS, **kwargs)
    mesh = truncated.meta_batch_mesh()
    sharded = truncated.meta_train(task, LOPT, CONFIG, STEPS, mesh=mesh, **kwargs)
    ckpt = out / "ckpt"
    try:
        truncated.meta_train(
            task, LOPT, CONFIG, STEPS, mesh=mesh, checkpoint_dir=ckpt, checkpoint_every=3,
            callback=_kill_at(5), **kwargs,
        )  # fmt: skip
    except _Interrupt:
        pass
    resumed = truncated.meta_train(
        task, LOPT, CONFIG, STEPS, mesh=mesh, checkpoint_dir=ckpt, resume=True, **kwargs
    )
    bad = truncated.TruncatedConfig(**{**CONFIG.to_dict(), "meta_batch": 6})
    try:
        truncated.meta_train(task, LOPT, bad, 1, mesh=mesh, **kwargs)
        message = None
    except ValueError as err:
        message = str(err)
    initial = truncated.init_state(kwargs["key"], task, LOPT, CONFIG)
    states = {
        "initial": initial,
        "single": single.state,
        "sharded": sharded.state,
        "resumed": resumed.state,
    }
    for name, state in states.items():
        np.savez(out / f"{name}.npz", **_leaves(state))
    run_leaf = jax.tree.leaves(resumed.state.inner)[0]
    meta_leaf = jax.tree.leaves(resumed.state.meta_params)[0]
    info = {
        "devices": jax.device_count(),
        "resumed_steps": [m["step"] for m in resumed.metrics],
        "run_spec": list(run_leaf.sharding.spec),
        "run_devices": len(run_leaf.sharding.device_set),
        "run_shard_rows": [s.data.shape[0] for s in run_leaf.addressable_shards],
        "meta_spec": list(meta_leaf.sharding.spec),
        "divisibility_error": message,
    }
    (out / "info.json").write_text(json.dumps(info))


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharding")
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}",
        "OPENBLAS_NUM_THREADS": "1",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, __file__, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = ("initial", "single", "sharded", "resumed")
    arrays = {name: dict(np.load(out / f"{name}.npz")) for name in names}
    return arrays, json.loads((out / "info.json").read_text())


@pytest.mark.slow  # a 4-device subprocess meta-trains
def test_sharded_meta_training_matches_one_device(four_devices):
    arrays, info = four_devices
    assert info["devices"] == DEVICES
    single, sharded = arrays["single"], arrays["sharded"]
    assert single.keys() == sharded.keys()
    for name in single:
        a, b = single[name], sharded[name]
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=name)
        else:
            np.testing.assert_array_equal(b, a, err_msg=name)  # steps, keys, counters
    moved = [not np.array_equal(single[k], a) for k, a in arrays["initial"].items()]
    assert any(moved), "meta-training did not change the state"


@pytest.mark.slow  # a 4-device subprocess meta-trains
def test_sharded_resume_is_bit_exact_and_stays_sharded(four_devices):
    arrays, info = four_devices
    assert info["resumed_steps"] == [4, 5, 6]  # from the checkpoint at step 3
    for name, a in arrays["sharded"].items():
        np.testing.assert_array_equal(arrays["resumed"][name], a, err_msg=name)
    assert info["run_spec"] == ["batch"] and info["run_devices"] == DEVICES
    assert info["run_shard_rows"] == [CONFIG.meta_batch // DEVICES] * DEVICES
    assert info["meta_spec"] == []


@pytest.mark.slow  # a 4-device subprocess meta-trains
def test_meta_batch_must_divide_by_devices(four_devices):
    _, info = four_devices
    message = info["divisibility_error"]
    assert message is not None
    assert "meta_batch = 6" in message and "4 devices" in message
    assert "meta_batch = 8" in message  # the fix


def test_mesh_checks():
    mesh = truncated.meta_batch_mesh()
    truncated.check_mesh(mesh, CONFIG)  # one device divides anything
    square = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("a", "b"))
    with pytest.raises(ValueError, match="one axis"):
        truncated.check_mesh(square, CONFIG)
    with pytest.raises(TypeError, match=r"jax\.sharding\.Mesh"):
        truncated.make_meta_step(LOPT, CONFIG, mesh=jax.devices())
    spec = truncated.state_sharding(mesh)
    assert spec.inner.spec == jax.sharding.PartitionSpec("batch")
    assert spec.meta_params.spec == jax.sharding.PartitionSpec()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
