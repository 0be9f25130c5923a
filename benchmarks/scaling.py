"""Meta-training throughput against the number of devices.

One meta-step of truncated meta-training (:func:`l2l_jax.truncated.make_meta_step`) of the
learned optimizer (``learned.MLPLOpt()``: TBPTT, train-by-train) on the MNIST MLP
784-100-20-10 (synthetic data of MNIST's shapes), with the meta-batch of ``B`` runs split
over a 1-d mesh of ``N`` devices (``mesh=truncated.meta_batch_mesh(devices[:N])``: each device
advances ``B / N`` runs; XLA reduces the meta-gradient across devices). Throughput is
inner steps per second, ``B K / (meta-step time)``; the speedup is over the smallest
``N`` measured with a mesh (1, except in the smoke preset). The unsharded program
(``mesh=None``) is timed beside the 1-device mesh, side by side, as the sharding's own
overhead.

* **CPU**: the device count of a process is fixed when JAX starts, so each ``N`` runs in
  its own subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``. Those
  are simulated devices sharing the machine's cores, so this is no measurement of
  multi-device scaling: no speedup is expected beyond what the cores one device's
  program leaves idle allow. It shows that the sharded program runs, and its cost. The
  ``N`` are timed one after another (separate processes), not interleaved.
* **GPU/TPU**: the real devices, ``N`` = 1, 2, 4, ... up to ``jax.device_count()`` (those
  that divide ``B``), all in this process, timed in interleaved rounds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any

import jax

from benchmarks import common, timing
from l2l_jax import learned, truncated

_MARK = "SCALING-RESULT "


@dataclasses.dataclass(frozen=True)
class ScalingPreset:
    """Sizes: the MLP's ``sizes``, ``n`` synthetic rows, minibatch ``batch``; ``B =
    meta_batch`` runs of ``horizon`` steps advanced ``K = segment`` steps per meta-step;
    ``devices`` the device counts (``None``: 1, 2, 4, ... up to all devices);
    ``hidden`` the learned optimizer's hidden sizes (``None``: its default);
    ``repeats``/``budget_s`` timing; ``timeout_s`` per subprocess."""

    sizes: tuple[int, ...] = (784, 100, 20, 10)
    n: int = 1000
    batch: int = 32
    meta_batch: int = 4
    segment: int = 2
    horizon: int = 200
    devices: tuple[int, ...] | None = (1, 2, 4)
    hidden: tuple[int, ...] | None = None
    repeats: int = 7
    budget_s: float = 6.0
    timeout_s: float = 600.0


PRESETS: dict[str, ScalingPreset] = {
    "cpu-small": ScalingPreset(),  # B = 4, K = 2: small, since compiling dominates on a CPU
    "accelerator": ScalingPreset(
        meta_batch=64, segment=20, devices=None, repeats=20, budget_s=20.0
    ),
    "smoke": ScalingPreset(
        sizes=(784, 8, 10),
        n=64,
        meta_batch=2,
        segment=2,
        horizon=10,
        devices=(2,),
        hidden=(4,),
        repeats=2,
        budget_s=1.0,
    ),
}


def build_lopt(preset: ScalingPreset) -> learned.MLPLOpt:
    """The learned optimizer: its default, or with the preset's hidden sizes."""
    if preset.hidden is None:
        return learned.MLPLOpt()
    return learned.MLPLOpt(learned.LOptConfig(hidden_sizes=preset.hidden))


def build_config(preset: ScalingPreset) -> truncated.TruncatedConfig:
    """TBPTT at the library's defaults with the preset's sizes."""
    return truncated.TruncatedConfig(
        horizon=preset.horizon,
        segment=preset.segment,
        meta_batch=preset.meta_batch,
        batch_size=preset.batch,
        eval_batch_size=preset.batch,
    )


def device_counts(preset: ScalingPreset, available: int) -> list[int]:
    """The preset's counts, or 1, 2, 4, ... and ``available``; those dividing ``B``."""
    if preset.devices is not None:
        counts = list(preset.devices)
    else:
        counts = sorted({2**i for i in range(available.bit_length()) if 2**i <= available})
        counts = sorted(set(counts) | {available})
    return [n for n in counts if n <= available and preset.meta_batch % n == 0]


def _cell(preset: ScalingPreset, devices: int | None) -> timing.Timed:
    """The public meta-step on ``devices`` devices (``None``: no mesh), called once
    (compile + one step, recorded as ``lower_s``) and calibrated for timing."""
    task = common.mnist_like_task(preset.sizes, preset.n)
    lopt, config = build_lopt(preset), build_config(preset)
    state = truncated.init_state(jax.random.key(0), task, lopt, config)
    mesh = None if devices is None else truncated.meta_batch_mesh(jax.devices()[:devices])
    if mesh is not None:
        state, task = truncated.shard_state(state, mesh), truncated.replicate(task, mesh)
    step = truncated.make_meta_step(lopt, config, mesh=mesh)
    name = "no mesh" if devices is None else str(devices)
    start = time.perf_counter()
    jax.block_until_ready(step(state, task))
    cell = timing.Timed(name, step, (state, task), time.perf_counter() - start, 0.0)
    start = time.perf_counter()
    cell.out = jax.block_until_ready(step(state, task))
    cell.warm_s = cell.call_s = time.perf_counter() - start
    return cell


def _row(preset: ScalingPreset, cell: timing.Timed, devices: int) -> dict[str, Any]:
    summary = cell.summary()
    ms = summary["run_ms_median"]
    return {
        "devices": devices,
        "mesh": cell.name != "no mesh",
        "first_call_s": cell.lower_s,
        "meta_step_ms_median": ms,
        "meta_step_ms_min": summary["run_ms_min"],
        "repeats": summary["repeats"],
        "calls_per_sample": summary["calls_per_sample"],
        "meta_steps_per_s": 1e3 / ms,
        "inner_steps_per_s": 1e3 * preset.meta_batch * preset.segment / ms,
        "meta_loss": float(cell.out[1]["meta_loss"]),
    }


def measure_here(preset: ScalingPreset, counts: list[int], baseline: bool) -> list[dict]:
    """Time the meta-step on each of ``counts`` devices of this process (and without a
    mesh when ``baseline``), side by side in interleaved rounds."""
    cells = [_cell(preset, None)] if baseline else []
    cells += [_cell(preset, n) for n in counts]
    timing.time_interleaved(cells, preset.repeats, preset.budget_s)
    devices = ([1] if baseline else []) + counts
    return [_row(preset, c, n) for c, n in zip(cells, devices, strict=True)]


def _subprocess_env(devices: int) -> dict[str, str]:
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    return {
        **os.environ,
        "XLA_FLAGS": " ".join(flags),
        "OPENBLAS_NUM_THREADS": "1",
        "JAX_PLATFORMS": "cpu",
    }


def _to_json(preset: ScalingPreset) -> str:
    return json.dumps(dataclasses.asdict(preset))


def _from_json(text: str) -> ScalingPreset:
    fields = json.loads(text)
    for name in ("sizes", "devices", "hidden"):
        if fields[name] is not None:
            fields[name] = tuple(fields[name])
    return ScalingPreset(**fields)


def measure_subprocess(preset: ScalingPreset, devices: int) -> list[dict]:
    """``measure_here`` in a fresh process with ``devices`` simulated CPU devices."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--worker", _to_json(preset), str(devices)],
        env=_subprocess_env(devices),
        cwd=common.ROOT,
        capture_output=True,
        text=True,
        timeout=preset.timeout_s,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"scaling worker with {devices} devices failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len(_MARK) :])


def measure(preset: ScalingPreset, progress: bool = True) -> dict[str, Any]:
    """Throughput per device count: subprocesses on CPU, this process elsewhere."""
    from tqdm.auto import tqdm

    backend = jax.default_backend()
    simulated = backend == "cpu"
    if simulated:
        rows = []
        for n in tqdm(preset.devices or (1,), desc="scaling (subprocesses)", disable=not progress):
            rows += measure_subprocess(preset, n)
    else:
        rows = measure_here(preset, device_counts(preset, jax.device_count()), baseline=True)
    base = min((r for r in rows if r["mesh"]), key=lambda r: r["devices"])
    for row in rows:
        row["speedup"] = row["inner_steps_per_s"] / base["inner_steps_per_s"]
    return {
        "settings": dataclasses.asdict(preset),
        "backend": backend,
        "simulated_devices": simulated,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "speedup_base_devices": base["devices"],
        "rows": rows,
    }


def claim(section: dict[str, Any]) -> str:
    """One sentence: throughput speedup per device count, and what it means here."""
    rows = [r for r in section["rows"] if r["mesh"]]
    parts = ", ".join(f"{r['devices']} → {r['speedup']:.2f}×" for r in rows)
    unsharded = [r for r in section["rows"] if not r["mesh"]]
    one = [r for r in rows if r["devices"] == 1]
    extra = ""
    if unsharded and one:
        ratio = one[0]["meta_step_ms_median"] / unsharded[0]["meta_step_ms_median"]
        extra = f"; a 1-device mesh costs {ratio:.2f}× the unsharded step"
    if section["simulated_devices"]:
        where = (
            f"simulated CPU devices sharing {section['cpus_usable']} cores: no speedup is "
            "expected, and this is not a measure of multi-device scaling"
        )
    else:
        where = f"{section['backend']} devices"
    base = section["speedup_base_devices"]
    unit = "device" if base == 1 else "devices"
    return f"meta-training throughput vs {base} {unit} ({where}): {parts}{extra}."


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    """The scaling section: settings, the simulated-device caveat, one row per count."""
    s = section["settings"]
    lines = [
        f"{heading} meta-training throughput against device count",
        "",
        f"One meta-step of `truncated.make_meta_step(learned.MLPLOpt(), config, mesh=...)` (TBPTT, "
        f"train-by-train) on the MLP {'-'.join(map(str, s['sizes']))}, minibatch {s['batch']}, "
        f"meta-batch B = {s['meta_batch']} split over N devices, segment K = {s['segment']}; "
        "throughput = B·K inner steps per meta-step time; speedup over the smallest N "
        f"(N = {section['speedup_base_devices']}) with a mesh.",
        "",
    ]
    if section["simulated_devices"]:
        lines += [
            f"**These are simulated CPU devices** "
            f"(`XLA_FLAGS=--xla_force_host_platform_device_count=N`, one subprocess per N, "
            f"timed one after another): all N share the same {section['cpus_usable']} CPU "
            "cores, so no speedup is expected on this machine (at most what the cores one "
            "device's program leaves idle allow, and the timings of separate processes on "
            "a shared machine differ by tens of percent); the table shows that the sharded "
            "program runs and what it costs. Run `make bench PRESET=accelerator` on a "
            "multi-GPU or TPU machine for real scaling.",
            "",
        ]
    lines += [
        claim(section),
        "",
        "| devices | mesh | meta-step ms (median) | inner steps/s | speedup | first call s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['devices']} | {'yes' if r['mesh'] else 'no (unsharded)'} "
            f"| {r['meta_step_ms_median']:.4g} | {r['inner_steps_per_s']:,.0f} "
            f"| {r['speedup']:.2f} | {r['first_call_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _worker(preset_json: str, devices: int) -> None:
    """Subprocess entry: time ``devices`` devices (and, for 1, the unsharded step)."""
    if jax.device_count() != devices:
        raise RuntimeError(f"expected {devices} devices, JAX sees {jax.devices()}")
    rows = measure_here(_from_json(preset_json), [devices], baseline=devices == 1)
    print(_MARK + json.dumps(rows), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit("usage: python -m benchmarks.scaling --worker PRESET_JSON DEVICES")
