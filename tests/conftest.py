"""Shared test settings: a reproducible hypothesis profile and float64 helpers.

Float64 is process-global in JAX, so tests scope it with ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import os

# One OpenBLAS thread (see benchmarks/__init__.py): set before jax/scipy load it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "l2l",
    max_examples=40,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("l2l")


@pytest.fixture(scope="session", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache in one folder for this session's workers: a
    program that several tests compile (the same shapes, the same function) is compiled
    once. Compiled executables are reused as they are, so results do not change; the
    folder is new for every session, so nothing carries over between runs.

    A size limit turns on JAX's file lock around every read and write of the folder
    (``jax._src.lru_cache``; without one an entry is written in place, unlocked, and
    another worker could read it half-written); 16 GiB is never reached by the suite."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if root.name.startswith("popen-gw") else root  # xdist: shared parent
    jax.config.update("jax_compilation_cache_dir", str(root / "xla-cache"))
    jax.config.update("jax_compilation_cache_max_size", 16 * 2**30)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield


def unit_roundoff(dtype) -> float:
    """``u = eps / 2`` of a float dtype."""
    return float(np.finfo(np.dtype(dtype)).eps) / 2


def as_dtype(x, dtype):
    return jnp.asarray(x, dtype)


BENCH_BEGIN = "<!-- BEGIN GENERATED bench:smoke (make bench PRESET=smoke) -->"
BENCH_END = "<!-- END GENERATED bench:smoke -->"


def _run_bench_smoke(out):
    from benchmarks import run as bench

    page = out / "docs" / "performance.md"
    page.parent.mkdir(parents=True)
    page.write_text(f"# Performance\n\nintro\n\n{BENCH_BEGIN}\nstale\n{BENCH_END}\n\noutro\n")
    x64_before = bool(jax.config.jax_enable_x64)
    results = bench.main(
        ["--preset", "smoke", "--out", str(out), "--docs", str(page), "--no-progress"]
    )
    assert bool(jax.config.jax_enable_x64) == x64_before, "the bench must not leak x64"
    return page, results


@pytest.fixture(scope="session")
def bench_smoke(tmp_path_factory):
    """One run of ``python -m benchmarks.run --preset smoke`` shared by every bench test.

    Returns ``(out, page, results)``: the output directory, a docs page whose generated
    section the run rewrote, and the results dict ``benchmarks.run.main`` returned (each
    group's section under its key). The groups' own tests read their sections from it
    instead of measuring them a second time. Under pytest-xdist the run happens once for
    all workers: the first to take the lock runs it in the session's shared temporary
    folder and pickles the results; the others wait for the lock and read them.
    """
    import fcntl
    import pickle

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:  # one process: nothing to share
        out = tmp_path_factory.mktemp("bench")
        page, results = _run_bench_smoke(out)
        return out, page, results
    shared = tmp_path_factory.getbasetemp().parent / "bench_smoke"
    shared.mkdir(exist_ok=True)
    out, done = shared / "out", shared / "results.pickle"
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                page, results = _run_bench_smoke(out)
                tmp = shared / "results.pickle.tmp"
                tmp.write_bytes(pickle.dumps(results))
                tmp.replace(done)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out, out / "docs" / "performance.md", pickle.loads(done.read_bytes())
