"""Plumbing shared by the experiments: tasks from configs, eta*, convergence, results files.

Every experiment is ``run(config, out) -> results`` plus ``summarize(results) -> str``;
``results`` is JSON-serializable and written to ``out/results.json`` atomically, so a
killed run never leaves a half-written file behind.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from l2l_jax import inner, metagrad, objectives, tasks
from l2l_jax.closed_forms import reference

# results I/O lives below the experiments (evaluation uses it too); re-exported for them
from l2l_jax.reporting import jsonable, pyplot, save_figure, write_json  # noqa: F401

DTYPES = {"float32": jnp.float32, "float64": jnp.float64}


# -- configuration -> objects ----------------------------------------------------------
def dtype_of(name: str):
    """``"float32"``/``"float64"`` -> dtype, with an error naming the field."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {name!r}.")
    return DTYPES[name]


def quadratic(cfg: ml_collections.ConfigDict, dtype=jnp.float32) -> tasks.Quadratic:
    """The random quadratic of ``cfg`` (fields ``seed, dim, width, scale, w0``)."""
    return tasks.Quadratic.random(
        jax.random.key(cfg.seed),
        cfg.dim,
        scale=cfg.scale,
        dtype=dtype,
        width=cfg.width,
        w0=cfg.w0,
    )


def spectrum64(task: tasks.Quadratic) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and coefficients of ``task`` in float64, from its stored entries.

    The float32 task's entries are taken exactly; only the eigendecomposition is in
    float64, so the reference and every dtype see the same problem.
    """
    lam, vec = np.linalg.eigh(np.asarray(task.hessian, np.float64))
    return lam, vec.T @ np.asarray(task.w0, np.float64)


def meta_step_size(cfg: ml_collections.ConfigDict, smoothness: float) -> float:
    """``c`` of ``mu_k = c / sqrt(k)``: ``cfg.c`` itself, or ``cfg.c / L^2``.

    ``F'(eta)`` of the log-loss scales like ``L`` and ``eta`` like ``1/L``, so
    ``c ~ 1/L^2`` makes the meta-steps scale-free (``cfg.c_units = "1/L^2"``).
    """
    if cfg.c_units == "absolute":
        return float(cfg.c)
    if cfg.c_units == "1/L^2":
        return float(cfg.c) / smoothness**2
    raise ValueError(f"c_units must be 'absolute' or '1/L^2', got {cfg.c_units!r}.")


def eta_star(task: tasks.Quadratic, steps: int, *, iters: int = 200) -> float:
    """Root of the stable float64 meta-gradient of the log-loss (Claim 1), by bisection.

    ``F'`` is negative below ``eta*`` and positive above, on ``[0, 2/alpha]``.
    """
    with jax.enable_x64(True):
        task64 = task.astype(jnp.float64)
        F = metagrad.meta_objective(
            task64, inner.gd(), objectives.log_loss(), steps=steps, grad="stable"
        )
        grad = jax.jit(jax.grad(F))
        lo, hi = 0.0, 2.0 / float(task64.strong_convexity)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            if mid in (lo, hi):
                break
            if float(grad(jnp.asarray(mid))) < 0:
                lo = mid
            else:
                hi = mid
    return 0.5 * (lo + hi)


# -- meta-training ------------------------------------------------------------------------
def exact_meta_gd(
    eigenvalues: np.ndarray,
    coefficients: np.ndarray,
    steps: int,
    eta0: float,
    c: float,
    meta_steps: int,
) -> np.ndarray:
    """The meta-GD of :func:`l2l_jax.metagrad.meta_gd` fed exact (mpmath) meta-gradients.

    ``eta_{k+1} = max(0, eta_k - c / sqrt(k+1) * F'(eta_k))``, ``k = 0..K-1``, with
    ``F'`` from Eq. 1 in 50-digit arithmetic: the yardstick for what the float methods
    should achieve. Returns the ``K+1`` iterates.
    """
    etas = np.empty(meta_steps + 1)
    etas[0] = eta = float(eta0)
    for k in range(meta_steps):
        g = float(reference.log_loss_grad(eta, eigenvalues, coefficients, steps))
        eta = max(0.0, eta - c / math.sqrt(k + 1.0) * g)
        etas[k + 1] = eta
    return etas


def converged_at(trajectory: Sequence[float], target: float, rtol: float) -> int | None:
    """First meta-step after which ``|eta - target| <= rtol * target`` for good, or None."""
    err = np.abs(np.asarray(trajectory, np.float64) - target)
    ok = np.isfinite(err) & (err <= rtol * abs(target))
    if not ok[-1]:
        return None
    bad = np.flatnonzero(~ok)
    return 0 if bad.size == 0 else int(bad[-1]) + 1


def succeeded(trajectory: Sequence[float], target: float, rtol: float, window: int) -> bool:
    """Success: the last ``window`` iterates are all within ``rtol`` of ``target``."""
    k = converged_at(trajectory, target, rtol)
    return k is not None and k <= len(trajectory) - window


# -- results ------------------------------------------------------------------------------
def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return None


def _git_commit() -> str | None:
    """The checkout's HEAD, when the package runs from a git checkout (else None)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def environment() -> dict:
    """Backend, devices, versions, host, date and commit: recorded in every results file."""
    devices = jax.devices()
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        **{m: _version(m) for m in ("l2l_jax", "jax", "jaxlib", "optax", "numpy", "mpmath")},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity else os.cpu_count(),
        **_host_cpu(),
        "xla_cpu_max_isa": xla_cpu_max_isa(),
        "git_commit": _git_commit(),
    }


_SIMD = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")


def _host_cpu() -> dict:
    """The host CPU's model and vector extensions (Linux ``/proc/cpuinfo``; empty
    elsewhere): XLA compiles for the host's instruction set, so float32 results are
    bit-for-bit reproducible on the same kind of CPU, and may differ in the last digits on
    another."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {
        "cpu_model": fields.get("model name", "unknown"),
        "cpu_simd": [f for f in _SIMD if f in flags],
    }


def xla_cpu_max_isa() -> str | None:
    """The ``--xla_cpu_max_isa`` of ``XLA_FLAGS`` (``AVX``, ``AVX2``, ``SSE4_2``...), or
    None: under it XLA compiles as for an older CPU, so a run under the flag is another
    host for the comparisons of results (see :func:`host_fingerprint`)."""
    isa = None
    for flag in os.environ.get("XLA_FLAGS", "").split():
        if flag.startswith("--xla_cpu_max_isa="):
            isa = flag.split("=", 1)[1] or None  # the last one wins, as in XLA
    return isa


HOST_KEYS = ("cpu_model", "cpu_simd", "xla_cpu_max_isa", "jax", "jaxlib")


def host_fingerprint(env: dict | None) -> dict | None:
    """What decides whether two runs compiled the same program: the CPU model, its vector
    extensions, ``--xla_cpu_max_isa`` and the jax/jaxlib versions, from a results file's
    ``environment`` (or from :func:`environment`). None when the record lacks the CPU
    (results written before it was recorded, or not on Linux): an unknown host, never
    taken for this one.

    Results are compared bit for bit only between equal fingerprints; results from
    another host are compared at the level of claims (``scripts/compare_results.py``,
    docs/reliability.md, "Stored results on another host")."""
    env = env or {}
    if env.get("cpu_model") in (None, "unknown") or "cpu_simd" not in env:
        return None
    out = {k: env.get(k) for k in HOST_KEYS}
    out["cpu_simd"] = sorted(out["cpu_simd"] or ())
    return out


def this_host() -> dict | None:
    """:func:`host_fingerprint` of the running process (without the device query of
    :func:`environment`)."""
    return host_fingerprint(
        {
            **_host_cpu(),
            "xla_cpu_max_isa": xla_cpu_max_isa(),
            "jax": _version("jax"),
            "jaxlib": _version("jaxlib"),
        }
    )


def same_host(env: dict | None) -> bool:
    """Whether a results file's ``environment`` was written on this host (same
    fingerprint, known CPU): then a rerun must reproduce it bit for bit."""
    here = this_host()
    return here is not None and host_fingerprint(env) == here


def save_results(out: Path, results: dict) -> dict:
    """Write ``out/table.md`` (when ``results`` has a ``"table"``) and ``out/results.json``
    (atomically), and return the JSON-safe form of ``results``."""
    out = Path(out)
    if "table" in results:
        (out / "table.md").write_text(results["table"] + "\n")
    write_json(out / "results.json", results)
    return jsonable(results)


CHECKPOINT_CONFIG = "experiment_config.json"


def guard_checkpoints(settings: dict, directory: Path) -> None:
    """Refuse to resume checkpoints in ``directory`` written with other ``settings``.

    ``truncated.meta_train`` checks its own config, but not what an experiment builds around
    it (data, optimizer, starting point): the experiment passes those ``settings`` (a
    JSON-able dict), saved next to the checkpoints on the first run and compared after.
    """
    wanted = json.loads(json.dumps(jsonable(settings)))
    path = Path(directory) / CHECKPOINT_CONFIG
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != wanted:
            changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
            raise ValueError(
                f"{directory} holds meta-training checkpoints of another configuration "
                f"(fields {changed} differ); delete it or use another --out directory."
            )
    else:
        write_json(path, wanted)
