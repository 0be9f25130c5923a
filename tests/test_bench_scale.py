"""The issue 6 benchmark groups on their ``smoke`` presets: memory/compile and scaling.

Timings are not asserted on (shared, noisy machines). XLA's memory estimate is static, so
the checkpointed reverse mode's advantage at t = 1000 is asserted.
"""

from __future__ import annotations

import math

import pytest

from benchmarks import memory, scaling

ROW_KEYS = {
    "method",
    "t",
    "segment",
    "peak_bytes",
    "temp_bytes",
    "compile_s",
    "compile_s_all",
    "memory_vs_autodiff",
    "compile_vs_first_t",
}
TIMED_KEYS = {"run_ms_median", "run_ms_min", "repeats", "time_vs_autodiff", "value", "grad"}


@pytest.fixture(scope="module")
def memory_section(bench_smoke):
    """The group's section of the shared smoke run (``conftest.bench_smoke``)."""
    return bench_smoke[2]["memory"]


def test_memory_schema(memory_section):
    preset = memory.PRESETS["smoke"]
    rows = {(r["method"], r["t"]): r for r in memory_section["rows"]}
    assert set(rows) == {(m, t) for m in preset.methods for t in preset.steps}
    for (method, steps), row in rows.items():
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert isinstance(row["peak_bytes"], int) and row["peak_bytes"] > 0
        assert row["compile_s"] > 0 and len(row["compile_s_all"]) == preset.compile_rounds
        assert (row["segment"] is None) == (method != memory.CHECKPOINTED)
        if steps in preset.time_at:
            assert TIMED_KEYS <= set(row), TIMED_KEYS - set(row)
            assert math.isfinite(row["value"]) and math.isfinite(row["grad"])
    # the same meta-gradient with and without checkpointing (float32 rounding)
    for steps in preset.time_at:
        plain, ckpt = rows[(memory.BASELINE, steps)], rows[(memory.CHECKPOINTED, steps)]
        assert ckpt["value"] == pytest.approx(plain["value"], rel=1e-5)
        assert ckpt["grad"] == pytest.approx(plain["grad"], rel=1e-4, abs=1e-6)


def test_checkpointing_bounds_memory_at_t_1000(memory_section):
    """XLA's static estimate: remat=True stores ~2 sqrt(t) steps' residuals, not t."""
    rows = {(r["method"], r["t"]): r for r in memory_section["rows"]}
    plain, ckpt = rows[(memory.BASELINE, 1000)], rows[(memory.CHECKPOINTED, 1000)]
    assert ckpt["segment"] == 32
    assert ckpt["peak_bytes"] * 10 <= plain["peak_bytes"], (ckpt, plain)
    summary = memory_section["summary"]
    assert summary["t_max"] == 1000 and summary["memory_ok"]
    assert summary["memory_reduction_at_t_max"] >= 10


def test_memory_markdown(memory_section):
    text = memory.render_markdown(memory_section, "##")
    assert text.startswith("## memory and compile time against t")
    assert memory.claim(memory_section) in text
    for row in memory_section["rows"]:
        assert f"| {row['method']} | {row['t']:,} |" in text


@pytest.fixture(scope="module")
def scaling_section(bench_smoke):
    return bench_smoke[2]["scaling"]


def test_scaling_schema_and_caveat(scaling_section):
    section = scaling_section
    assert section["backend"] == "cpu" and section["simulated_devices"]
    (row,) = section["rows"]  # smoke: one subprocess with 2 simulated devices
    assert row["devices"] == 2 and row["mesh"]
    assert row["meta_step_ms_median"] > 0 and row["repeats"] >= 1
    assert row["speedup"] == pytest.approx(1.0)
    assert math.isfinite(row["meta_loss"])
    preset = scaling.PRESETS["smoke"]
    expected = preset.meta_batch * preset.segment * 1e3 / row["meta_step_ms_median"]
    assert row["inner_steps_per_s"] == pytest.approx(expected)
    text = scaling.render_markdown(section, "###")
    assert text.startswith("### meta-training throughput against device count")
    assert "simulated CPU devices" in text and "no speedup is expected" in text
    assert "| 2 | yes |" in text


def test_scaling_device_counts():
    preset = scaling.ScalingPreset(meta_batch=64, devices=None)
    assert scaling.device_counts(preset, 8) == [1, 2, 4, 8]
    assert scaling.device_counts(preset, 6) == [1, 2, 4]  # 6 does not divide 64
    assert scaling.device_counts(scaling.PRESETS["cpu-small"], 2) == [1, 2]
    assert scaling._from_json(scaling._to_json(preset)) == preset
