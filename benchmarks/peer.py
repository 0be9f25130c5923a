"""The estimators group's peer comparison: google/learned_optimization's own scripts.

When ``setup.sh`` exists in the peers folder (``$L2L_PEERS_DIR``, by default
``shared/peers`` beside the project's checkout) and builds learned_optimization's
environment (it prints the venv's path last), the peers' throughput scripts run in
subprocesses, one process at a time, interleaved round by round: ``l2l_throughput.py
pes|tbptt`` (this project, ``sys.executable``) and ``lo_throughput.py pes|grad`` (the
peer's venv). Each prints one JSON line with its ``inner_steps_per_s`` and ``compile_s``.
The ratio is project / peer inner steps/s, ratio of the medians over rounds. Otherwise
the section says ``peer skipped: <reason>``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

from benchmarks.common import ROOT

PEERS_ENV = "L2L_PEERS_DIR"
# Which of the peer's estimators each of ours is compared with (lo_throughput.py's names).
PEER_ESTIMATOR = {"pes": "pes", "tbptt": "grad"}


class PeerSettings(Protocol):
    """What :func:`peer_section` reads of a preset: whether to run, why not, and how much."""

    peer: bool
    peer_skip: str
    peer_rounds: int
    peer_repeats: int
    peer_timeout_s: float


def peers_dir() -> Path:
    """``$L2L_PEERS_DIR``, else ``shared/peers`` beside the project's checkout."""
    env = os.environ.get(PEERS_ENV)
    return Path(env) if env else ROOT.parent / "shared" / "peers"


def _skipped(reason: str) -> dict[str, Any]:
    return {"status": f"peer skipped: {reason}"}


def _json_line(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """The last stdout line of ``cmd`` as JSON, or ``{"error": ...}``."""
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:300]}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": f"not JSON: {lines[-1][:300]}"}


def peer_section(preset: PeerSettings, progress: bool = False) -> dict[str, Any]:
    """The peer comparison (module docstring), or ``{"status": "peer skipped: ..."}``."""
    if not preset.peer:
        return _skipped(preset.peer_skip or "disabled")
    here = peers_dir()
    setup = here / "setup.sh"
    if not setup.is_file():
        return _skipped(f"{setup} not found (set ${PEERS_ENV} to the peers folder)")
    try:
        built = subprocess.run(
            ["bash", str(setup)], capture_output=True, text=True, timeout=1800, check=False
        )
    except subprocess.TimeoutExpired:
        return _skipped("setup.sh did not finish within 30 minutes")
    venv = Path((built.stdout.strip().splitlines() or [""])[-1])
    if built.returncode != 0 or not (venv / "bin" / "python").exists():
        tail = (built.stderr.strip().splitlines() or ["no output"])[-1]
        return _skipped(f"setup.sh failed (exit {built.returncode}): {tail[:300]}")
    base = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    ours_env = {**base, "PYTHONPATH": str(ROOT)}
    peer_env = {**base, "PYTHONPATH": str(here), "TF_CPP_MIN_LOG_LEVEL": "3"}
    reps, timeout = str(preset.peer_repeats), preset.peer_timeout_s
    runs_: list[dict[str, Any]] = []
    for round_ in range(preset.peer_rounds):
        for ours, theirs in PEER_ESTIMATOR.items():
            for impl, cmd, env in (
                ("l2l_jax", [sys.executable, str(here / "l2l_throughput.py"), ours], ours_env),
                (
                    "learned_optimization",
                    [str(venv / "bin" / "python"), str(here / "lo_throughput.py"), theirs],
                    peer_env,
                ),
            ):
                if progress:
                    print(f"peer round {round_ + 1}: {impl} {cmd[-1]}", file=sys.stderr)
                out = _json_line([*cmd, reps], env, timeout)
                runs_.append({**out, "round": round_, "impl": impl, "for": ours})
    ratios = {}
    for ours, theirs in PEER_ESTIMATOR.items():
        mine = [r for r in runs_ if r["for"] == ours and r["impl"] == "l2l_jax"]
        peer = [r for r in runs_ if r["for"] == ours and r["impl"] != "l2l_jax"]
        errors = [r["error"] for r in mine + peer if "error" in r]
        if errors:
            ratios[ours] = {"peer_estimator": theirs, "ratio": None, "error": errors[0]}
            continue
        a = statistics.median(r["inner_steps_per_s"] for r in mine)
        b = statistics.median(r["inner_steps_per_s"] for r in peer)
        ratios[ours] = {
            "peer_estimator": theirs,
            "inner_steps_per_s": a,
            "peer_inner_steps_per_s": b,
            "ratio": a / b,
            "compile_s": statistics.median(r["compile_s"] for r in mine),
            "peer_compile_s": statistics.median(r["compile_s"] for r in peer),
        }
    return {"status": "ok", "peers_dir": str(here), "venv": str(venv), "runs": runs_, **ratios}


def peer_text(peer: dict[str, Any]) -> str:
    if peer["status"] != "ok":
        return peer["status"] + "."
    parts = []
    for ours, theirs in PEER_ESTIMATOR.items():
        r = peer.get(ours, {})
        if r.get("ratio") is None:
            parts.append(f"{ours} vs {theirs}: failed ({r.get('error', 'not run')})")
        else:
            parts.append(
                f"{ours} {r['inner_steps_per_s']:.3g} vs learned_optimization {theirs} "
                f"{r['peer_inner_steps_per_s']:.3g} inner steps/s: **{r['ratio']:.2f}×**"
            )
    return "peer (learned_optimization, subprocesses): " + "; ".join(parts) + "."
