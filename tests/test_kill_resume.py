"""A meta-training run killed with SIGKILL and started again ends where an uninterrupted
run ends: bit-identical meta-parameters, one metrics line per step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("kill_worker.py")
STEPS = 24


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), str(STEPS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _kill_after(out: Path, step: int) -> int:
    """Start the worker, SIGKILL it once it reports ``step``; the last step it reported."""
    proc = _start(out)
    last = 0
    for line in proc.stdout:
        last = int(line)
        if last >= step:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    return last


@pytest.mark.slow  # two processes, one killed mid-run: end to end (make test-slow)
def test_killed_meta_training_resumes_bit_exactly(tmp_path):
    straight = tmp_path / "straight"
    proc = _start(straight)
    proc.communicate(timeout=300)
    assert proc.returncode == 0

    killed = tmp_path / "killed"
    # between checkpoints (every 3 steps: 7 and 14 are not on one), then right after a
    # checkpoint step, while orbax may still be finishing it (9, 18)
    reached = [_kill_after(killed, s) for s in (7, 9, 14, 18)]
    assert reached == sorted(reached) and reached[-1] < STEPS
    assert not (killed / "final.npy").exists()
    proc = _start(killed)
    proc.communicate(timeout=300)
    assert proc.returncode == 0

    np.testing.assert_array_equal(np.load(killed / "final.npy"), np.load(straight / "final.npy"))
    for out in (straight, killed):
        lines = (out / "ckpt" / "metrics.jsonl").read_text().splitlines()
        steps = [json.loads(line)["step"] for line in lines if line.strip()]
        assert steps == list(range(1, STEPS + 1)), out.name  # none missing, none twice
