"""Bench groups "learned_optimizer" and "flops" on their tiny ``smoke`` presets.

The hand-written jax + optax meta-step must compute what the library's does (same
meta-loss and meta-gradient from the same state and keys, horizon resets included), the
smoke presets run and their sections have the documented keys, and without torch the
torch.func side is skipped with a message that says how to get it. Timings are not
asserted on (machines are shared and noisy).
"""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from benchmarks import flops as flops_bench
from benchmarks import learned as learned_bench
from benchmarks import run as bench
from l2l_jax import learned
from l2l_jax.meta import truncated

SMOKE = learned_bench.PRESETS["smoke"]


@pytest.fixture(scope="module")
def learned_section(bench_smoke) -> dict:
    """The group's section of the shared smoke run (``conftest.bench_smoke``)."""
    return bench_smoke[2]["learned_optimizer"]


@pytest.fixture(scope="module")
def flops_section(bench_smoke) -> dict:
    return bench_smoke[2]["flops"]


def test_hand_written_matches_library_loss_and_gradient():
    """From the same state and keys: same meta-loss, meta-gradient and new runs."""
    state, task = learned_bench.library_cell(SMOKE).args
    inner, config = learned.inner_optimizer(SMOKE.lopt()), SMOKE.config()
    library = jax.jit(lambda mp, runs, t: truncated.tbptt_gradient(mp, runs, t, inner, config))
    loss, grad, new, aux = library(state.meta_params, state.inner, task)
    # The hand-written meta-step, compiled once for the bench, returns its meta-gradient.
    _, _, h_new, h_loss, h_grad = learned_bench.hand_cell(SMOKE).out

    assert int(aux["resets"]) >= 1, "the tiny preset must cross the horizon in the segment"
    np.testing.assert_allclose(h_loss, loss, rtol=1e-6)
    chex.assert_trees_all_close(h_grad, grad, rtol=1e-5, atol=1e-8)
    assert max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grad)) > 1e-6
    library_runs = learned_bench.as_runs(new)
    chex.assert_trees_all_close(h_new.params, library_runs.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(h_new.momentum, library_runs.momentum, rtol=1e-6, atol=1e-7)
    for field in ("count", "step", "key"):
        np.testing.assert_array_equal(getattr(h_new, field), getattr(library_runs, field))


def test_learned_smoke_section(learned_section):
    section = learned_section
    impls = [r["impl"] for r in section["rows"]]
    expected = ["l2l_jax", "hand-written"]
    if learned_bench.torch_available():
        expected.append("torch.func")
    assert impls == expected
    for row in section["rows"]:
        assert row["run_ms_median"] > 0 and row["repeats"] >= 1
        assert row["inner_steps_per_s"] > 0 and row["ratio_to_hand"] > 0
    assert section["rows"][1]["ratio_to_hand"] == pytest.approx(1.0)
    assert section["ratio_library_to_hand"] > 0 and section["paired_ratio_library_to_hand"] > 0
    assert section["overhead"] == pytest.approx(section["ratio_library_to_hand"] - 1)
    assert isinstance(section["meets_target"], bool)
    settings = section["settings"]
    assert settings["meta_batch"] == SMOKE.meta_batch and settings["segment"] == SMOKE.segment
    assert settings["task_parameters"] == 784 * 10 + 10
    agree = section["agreement"]
    assert agree["meta_loss_rel_diff"] < 1e-6
    assert agree["meta_params_max_abs_diff"] < 1e-6 and agree["runs_params_max_abs_diff"] < 1e-6
    assert agree["runs_steps_equal"] and agree["runs_keys_equal"]
    assert agree["resets_in_segment"] >= 1
    md = learned_bench.render_markdown(section, "###")
    assert md.startswith("### learned-optimizer meta-training throughput")
    for impl in impls:
        assert f"| {impl} |" in md
    assert learned_bench.claim(section) in md


def test_torch_skip_path(monkeypatch, learned_section):
    monkeypatch.setattr(learned_bench, "torch_available", lambda: False)
    info, cell = learned_bench.torch_section(SMOKE, None, None, None)
    assert info == {"status": "skipped: torch not installed (pip install torch==2.13.0)"}
    assert cell is None
    rows = [r for r in learned_section["rows"] if r["impl"] != "torch.func"]
    skipped = {**learned_section, "rows": rows, "torch": info}
    assert "torch.func: skipped: torch not installed (pip install torch==2.13.0)." in (
        learned_bench.claim(skipped)
    )
    assert "| torch.func |" not in learned_bench.render_markdown(skipped)


def test_torch_matches_library(learned_section):
    pytest.importorskip("torch")
    torch_info = learned_section["torch"]
    assert torch_info["status"] == "ok"
    assert torch_info["agreement"]["meta_loss_rel_diff"] < 1e-5
    assert torch_info["agreement"]["grad_norm_rel_diff"] < 1e-4
    assert torch_info["agreement"]["runs_params_max_abs_diff"] < 1e-5


def test_flops_smoke_section(flops_section):
    section = flops_section
    step, mm = section["meta_step"], section["matmul"]
    assert step["run_ms_median"] > 0 and mm["run_ms_median"] > 0
    assert step["xla_counts_loop_body_once"] in (True, False)
    assert step["flops"] == step["loop_scale"] * step["xla_flops_reported"] > 0
    assert step["loop_trip_counts"].get(str(SMOKE.segment)) == 2  # the scan and its transpose
    assert mm["flops"] == 2 * mm["n"] ** 3 == mm["xla_flops_reported"]
    assert section["achieved_flops_per_s"] > 0 and section["matmul_flops_per_s"] > 0
    assert section["ratio"] == pytest.approx(
        section["achieved_flops_per_s"] / section["matmul_flops_per_s"]
    )
    md = flops_bench.render_markdown(section, "###")
    assert md.startswith("### achieved FLOP/s of the meta-training step")
    assert "| meta-step |" in md and f"| matmul {mm['n']} |" in md


def test_groups_registered():
    for key, module in (("learned_optimizer", learned_bench), ("flops", flops_bench)):
        assert bench.GROUPS[key] is module
        assert {"cpu-small", "accelerator", "smoke"} <= set(module.PRESETS)
