"""Multi-process meta-training on one machine: the multi-host code path, tested on CPU.

Two JAX processes, each with 2 forced host devices, join through ``jax.distributed``
(coordinator on ``127.0.0.1``, a free port) with the CPU backend's gloo collectives, so
``truncated.meta_batch_mesh()`` spans 4 devices of which each process holds 2: the arrays of
the inner runs are not fully addressable, as on several hosts. For every estimator of
``truncated.ESTIMATORS`` (read at import, so a new one is picked up) the processes
meta-train with the meta-batch split over that global mesh, and again with checkpoints
into one shared directory (orbax; every process calls save), killed after a checkpoint
and resumed from it. A third process computes the single-process, single-device
reference. ``tests/multiprocess_worker.py`` is the worker; the tests compare the arrays
it saves (gathered to whole arrays with ``process_allgather``).

Tolerance: the 2-process run reduces the meta-batch mean across 4 devices, in another
order than one device, so floats agree to rounding, not bitwise: asserted to
``rtol = 1e-5, atol = 1e-7`` after 6 meta-steps. Measured (jax 0.10.2, CPU): TBPTT
bit-identical to the one-device run; ES and PES within 1.2e-7 absolute (about 3e-6 of
each array's largest entry: ES divides loss differences by ``2 sigma``), and
bit-identical to a single process with 4 forced devices. Keys, steps and counters agree
exactly. Both processes gather identical states, and the resumed run is bit-identical to
the uninterrupted one.

The test skips if this jaxlib has no gloo collectives. Every subprocess runs under a
deadline: on a failure or a timeout all of them are killed and their stderr is shown.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from l2l_jax import truncated

pytestmark = pytest.mark.slow  # three processes compile every estimator: ~1 min

ESTIMATORS = tuple(truncated.ESTIMATORS)
ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("multiprocess_worker.py")
PROCESSES, LOCAL_DEVICES = 2, 2
TIMEOUT_S = 480  # the whole launch; about a minute on an idle 2-core machine
RTOL, ATOL = 1e-5, 1e-7
GLOO_MISSING = 77  # the worker's exit status when gloo is missing


def free_port() -> int:
    """A TCP port nobody listens on now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "OPENBLAS_NUM_THREADS": "1",
        "JAX_PLATFORMS": "cpu",
    }


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def run_workers(jobs: dict[str, tuple[list[str], dict[str, str]]], out: Path) -> dict[str, int]:
    """Start every job at once and wait for all of them, up to ``TIMEOUT_S``.

    Returns the exit statuses by name; stdout and stderr go to ``out/<name>.{out,err}``.
    If one job fails (the others would wait for it in a collective) or time runs out,
    all are killed and the test fails with their stderr.
    """
    procs: dict[str, subprocess.Popen] = {}
    files = []
    try:
        for name, (args, env) in jobs.items():
            stdout = open(out / f"{name}.out", "w")  # closed in the finally below
            stderr = open(out / f"{name}.err", "w")
            files += [stdout, stderr]
            procs[name] = subprocess.Popen(
                [sys.executable, str(WORKER), str(out), *args],
                env=env,
                cwd=ROOT,
                stdout=stdout,
                stderr=stderr,
            )
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            codes = {name: p.poll() for name, p in procs.items()}
            failed = any(c not in (None, 0) for c in codes.values())
            if all(c is not None for c in codes.values()) or failed:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for p in procs.values():
            p.wait()
        for f in files:
            f.close()
    if any(c == GLOO_MISSING for c in codes.values()):
        return codes
    if any(c != 0 for c in codes.values()):
        report = "\n".join(
            f"--- {name}: exit {'timeout, killed' if c is None else c}\n"
            + _tail(out / f"{name}.err")
            for name, c in codes.items()
        )
        pytest.fail(f"a worker failed or timed out after {TIMEOUT_S} s:\n{report}")
    return codes


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run the 2-process meta-training and the single-process reference side by side."""
    out = tmp_path_factory.mktemp("multiprocess")
    port = str(free_port())
    jobs = {
        f"p{i}": (
            ["--process-id", str(i), "--num-processes", str(PROCESSES), "--port", port],
            _env(LOCAL_DEVICES),
        )
        for i in range(PROCESSES)
    }
    jobs["ref"] = (["--reference"], _env(1))
    started = time.perf_counter()
    codes = run_workers(jobs, out)
    if any(c == GLOO_MISSING for c in codes.values()):
        reason = next(
            line
            for name in jobs
            for line in _tail(out / f"{name}.err").splitlines()
            if "GLOO UNAVAILABLE" in line
        )
        pytest.skip(f"no gloo CPU collectives in this jaxlib ({reason})")
    load = lambda name: dict(np.load(out / f"{name}.npz"))
    arrays = {}
    for est in ESTIMATORS:
        for i in range(PROCESSES):
            for label in ("straight", "resumed"):
                arrays[f"p{i}", est, label] = load(f"p{i}_{est}_{label}")
        for label in ("initial", "single"):
            arrays["ref", est, label] = load(f"ref_{est}_{label}")
    info = {f"p{i}": json.loads((out / f"p{i}.json").read_text()) for i in range(PROCESSES)}
    return {"arrays": arrays, "info": info, "out": out, "seconds": time.perf_counter() - started}


def assert_states_equal(actual, expected, exact: bool, what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for name in expected:
        a, b = actual[name], expected[name]
        message = f"{what}, leaf {name}"
        if not exact and np.issubdtype(b.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=message)
        else:  # keys, steps and counters always exactly
            np.testing.assert_array_equal(a, b, err_msg=message)


def test_processes_share_one_global_mesh(results):
    for i in range(PROCESSES):
        info = results["info"][f"p{i}"]
        assert info["process_index"] == i
        assert info["process_count"] == PROCESSES
        assert info["local_device_count"] == LOCAL_DEVICES
        assert info["device_count"] == PROCESSES * LOCAL_DEVICES
        assert info["mesh_processes"] == list(range(PROCESSES))
        for est in ESTIMATORS:
            runs = info[est]
            # each process holds B / 4 runs on each of its 2 devices, not the whole batch
            assert runs["run_fully_addressable"] is False
            assert runs["run_local_rows"] == [runs["run_global_rows"] // 4] * LOCAL_DEVICES
            assert runs["meta_spec"] == []  # meta-parameters replicated


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_two_processes_match_single_process(results, estimator):
    arrays, info = results["arrays"], results["info"]
    p0 = arrays["p0", estimator, "straight"]
    for i in range(1, PROCESSES):
        assert_states_equal(arrays[f"p{i}", estimator, "straight"], p0, True, f"p{i} vs p0")
        assert info[f"p{i}"][estimator]["meta_loss"] == info["p0"][estimator]["meta_loss"]
    single = arrays["ref", estimator, "single"]
    assert_states_equal(p0, single, False, f"{estimator}: 2 processes vs 1 device")
    initial = arrays["ref", estimator, "initial"]
    moved = [not np.array_equal(single[k], a) for k, a in initial.items()]
    assert any(moved), "meta-training did not change the state"


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_two_process_checkpoint_resumes_exactly(results, estimator):
    from multiprocess_worker import CHECKPOINT_EVERY, KILL_AT, STEPS

    arrays, info = results["arrays"], results["info"]
    last_checkpoint = KILL_AT // CHECKPOINT_EVERY * CHECKPOINT_EVERY
    for i in range(PROCESSES):
        assert info[f"p{i}"][estimator]["resumed_steps"] == list(
            range(last_checkpoint + 1, STEPS + 1)
        )
        straight = arrays[f"p{i}", estimator, "straight"]
        resumed = arrays[f"p{i}", estimator, "resumed"]
        assert_states_equal(resumed, straight, True, f"p{i}: resumed vs uninterrupted")
    # one writer for the default metrics file (process 0), cut back to the checkpoint on
    # resume: every step once
    lines = (results["out"] / f"ckpt_{estimator}" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))
