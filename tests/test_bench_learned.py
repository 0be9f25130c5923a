"""Bench groups "learned_optimizer", "learned_estimators" and "flops" on their tiny
``smoke`` presets.

The hand-written jax + optax meta-step must compute what the library's does (same
meta-loss and meta-gradient from the same state and keys, horizon resets included), the
smoke presets run and their sections have the documented keys, and without torch the
torch.func side is skipped with a message that says how to get it. The estimator table's
derived numbers (throughput, roofline, ratios, targets) follow from its reported fields,
and the peer comparison runs through fake peer scripts or says why it was skipped. Timings
are not asserted on (machines are shared and noisy).
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap

import chex
import jax
import numpy as np
import pytest

from benchmarks import estimators as estimators_bench
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
    for key, module in (
        ("learned_optimizer", learned_bench),
        ("learned_estimators", estimators_bench),
        ("flops", flops_bench),
    ):
        assert bench.GROUPS[key] is module
        assert {"cpu-small", "accelerator", "smoke"} <= set(module.PRESETS)


# -- learned_estimators: every estimator, the roofline, the peer ----------------------------

EST_SMOKE = estimators_bench.PRESETS["smoke"]


@pytest.fixture(scope="module")
def estimators_section(bench_smoke) -> dict:
    return bench_smoke[2]["learned_estimators"]


def test_estimators_table_follows_from_its_fields(estimators_section):
    section = estimators_section
    step = section["settings"]["step"]
    b, k, p = step["meta_batch"], step["segment"], section["settings"]["es_pairs"]
    assert [r["estimator"] for r in section["rows"]] == list(truncated.ESTIMATORS)
    bw = section["bandwidth"]
    assert bw["bytes"] == 2 * bw["array_bytes"] * bw["iters"]
    assert bw["bytes_per_s"] == pytest.approx(bw["bytes"] / (1e-3 * bw["run_ms_median"]))
    # XLA's cost analysis of the stream: the first pass plus the loop body counted once,
    # each 2 x nbytes, so its bytes convention is the bandwidth's.
    assert bw["xla_bytes_reported"] == pytest.approx(2 * 2 * bw["array_bytes"], rel=1e-3)
    runs = {"tbptt": b, "pes": 2 * b * p, "es": b + 2 * b * p}
    for r in section["rows"]:
        seconds = 1e-3 * r["run_ms_median"]
        assert r["runs_per_inner_step"] == runs[r["estimator"]]
        assert r["inner_steps_per_s"] == pytest.approx(b * k / seconds)
        assert r["ms_per_inner_step"] == pytest.approx(1e3 * seconds / k)
        assert r["bytes_per_inner_step"] > 0 and r["flops_per_inner_step"] > 0
        roofline_s = r["bytes_per_inner_step"] / bw["bytes_per_s"]
        assert r["roofline_ms"] == pytest.approx(1e3 * roofline_s)
        assert r["roofline_fraction"] == pytest.approx(roofline_s / (seconds / k))
        assert r["flops_per_s"] == pytest.approx(r["flops_per_inner_step"] / (seconds / k))
        assert r["compile_s"] > 0 and r["repeats"] >= 1
        assert r["peer_ratio"] is None
        # no scan in the one-step functions: only the PRNG's 5-round loops
        assert set(r["one_step_loops"]) <= {"5"}
    rows = {r["estimator"]: r for r in section["rows"]}
    # a batch of runs moves more bytes than its part: ES steps PES's runs and B more
    assert rows["es"]["bytes_per_inner_step"] > rows["pes"]["bytes_per_inner_step"]
    assert section["tbptt_over_pes"] == pytest.approx(
        rows["tbptt"]["run_ms_median"] / rows["pes"]["run_ms_median"]
    )
    targets = {t["target"].split()[0]: t for t in section["targets"]}
    assert set(targets) == {"es", "pes", "TBPTT"}
    for name in ("es", "pes"):
        assert targets[name]["value"] == rows[name]["roofline_fraction"]
        assert targets[name]["met"] == (rows[name]["roofline_fraction"] >= 0.5)
    per_run = section["tbptt_over_pes"] * 2 * section["settings"]["es_pairs"]
    assert section["tbptt_over_forward_per_run"] == pytest.approx(per_run)
    assert targets["TBPTT"]["value"] == section["tbptt_over_forward_per_run"]
    assert targets["TBPTT"]["met"] == (per_run <= 3.0)
    assert section["peer"] == {"status": "peer skipped: not run in the smoke preset"}
    md = estimators_bench.render_markdown(section, "###")
    assert md.startswith("### learned-optimizer estimators")
    for r in section["rows"]:
        assert f"| {r['estimator']} | {r['compile_s']:.2f} |" in md
        assert f"| {100 * r['roofline_fraction']:.1f}% |" in md
    assert "peer skipped: not run in the smoke preset." in md
    assert estimators_bench.claim(section) in md


def test_one_step_bytes_match_a_tiny_unroll():
    """The one-step PES function moves the bytes of one step: XLA's estimate for two
    steps written out (no loop) is about twice it."""
    cfg = EST_SMOKE.config("pes")
    state, task = estimators_bench.estimator_cell(EST_SMOKE, "pes").args
    fn, args_of = estimators_bench.one_step_fn("pes", cfg, EST_SMOKE.step.lopt())
    args = args_of(state, task)

    def two(thetas, paired, task):
        advanced, _, _ = fn(thetas, paired, task)
        return fn(thetas, advanced, task)

    one_bytes = flops_bench.reported(jax.jit(fn).lower(*args).compile())["bytes"]
    two_bytes = flops_bench.reported(jax.jit(two).lower(*args).compile())["bytes"]
    assert 1.6 * one_bytes < two_bytes < 2.4 * one_bytes


def test_peer_skipped_with_reason(monkeypatch, tmp_path):
    monkeypatch.setenv(estimators_bench.PEERS_ENV, str(tmp_path / "missing"))
    on = dataclasses.replace(EST_SMOKE, peer=True)
    status = estimators_bench.peer_section(on)["status"]
    assert status.startswith("peer skipped: ") and "setup.sh not found" in status
    assert str(tmp_path / "missing" / "setup.sh") in status
    # a setup.sh that fails: its exit code and last stderr line are the reason
    (tmp_path / "setup.sh").write_text("echo building >&2\necho 'no network' >&2\nexit 3\n")
    monkeypatch.setenv(estimators_bench.PEERS_ENV, str(tmp_path))
    status = estimators_bench.peer_section(on)["status"]
    assert status == "peer skipped: setup.sh failed (exit 3): no network"
    # --no-peer on the command line
    off = bench.group_preset(estimators_bench, "cpu-small", peer=False)
    assert off.peer is False and off.peer_skip == "--no-peer given"
    assert estimators_bench.peer_section(off) == {"status": "peer skipped: --no-peer given"}
    assert (
        bench.group_preset(estimators_bench, "cpu-small") is estimators_bench.PRESETS["cpu-small"]
    )
    assert (
        bench.group_preset(learned_bench, "cpu-small", peer=False)
        is learned_bench.PRESETS["cpu-small"]
    )


def _fake_peers(folder, ours: dict, theirs: dict) -> None:
    """setup.sh printing a venv whose python is this one; throughput scripts that print
    fixed inner steps/s per estimator (the peers' JSON line format)."""
    venv = folder / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (folder / "setup.sh").write_text(f"echo {venv}\n")
    script = textwrap.dedent(
        """
        import json, sys
        rates = {rates!r}
        print("compiling...")
        print(json.dumps({{"impl": {impl!r}, "estimator": sys.argv[1], "compile_s": 1.5,
                          "inner_steps_per_s": rates[sys.argv[1]], "repeats": sys.argv[2]}}))
        """
    )
    (folder / "l2l_throughput.py").write_text(script.format(rates=ours, impl="l2l_jax"))
    (folder / "lo_throughput.py").write_text(script.format(rates=theirs, impl="lo"))


def test_peer_ratios_from_subprocesses(monkeypatch, tmp_path):
    _fake_peers(tmp_path, {"pes": 30.0, "tbptt": 5.0}, {"pes": 12.0, "grad": 4.0})
    monkeypatch.setenv(estimators_bench.PEERS_ENV, str(tmp_path))
    preset = dataclasses.replace(EST_SMOKE, peer=True, peer_rounds=2, peer_repeats=3)
    peer = estimators_bench.peer_section(preset)
    assert peer["status"] == "ok" and peer["venv"] == str(tmp_path / "venv")
    # interleaved: ours, theirs, ours, theirs, ... round by round
    order = [(r["round"], r["impl"], r["for"], r["estimator"]) for r in peer["runs"]]
    assert order == [
        (i, impl, ours, est)
        for i in range(2)
        for ours, theirs in (("pes", "pes"), ("tbptt", "grad"))
        for impl, est in (("l2l_jax", ours), ("learned_optimization", theirs))
    ]
    assert all(r["repeats"] == "3" for r in peer["runs"])
    assert peer["pes"]["ratio"] == pytest.approx(30.0 / 12.0)
    assert peer["tbptt"]["ratio"] == pytest.approx(5.0 / 4.0)
    assert peer["tbptt"]["peer_estimator"] == "grad" and peer["pes"]["compile_s"] == 1.5
    md = estimators_bench.render_markdown({**_section_stub(), "peer": peer}, "###")
    assert "| pes | pes | 2 | 30 | 12 | 2.50× |" in md
    assert "| tbptt | grad | 2 | 5 | 4 | 1.25× |" in md
    # a failing peer run: no ratio, the error instead
    (tmp_path / "lo_throughput.py").write_text("import sys; sys.exit('no haiku')\n")
    peer = estimators_bench.peer_section(dataclasses.replace(preset, peer_rounds=1))
    assert peer["pes"]["ratio"] is None and peer["pes"]["error"] == "exit 1: no haiku"


def _section_stub() -> dict:
    """A minimal section with no rows, for rendering the peer part alone."""
    return {
        "settings": {**dataclasses.asdict(EST_SMOKE), "task_parameters": 7850},
        "xla_counts_loop_body_once": True,
        "bandwidth": {
            "array_bytes": 8, "iters": 1, "run_ms_median": 1.0, "bytes_per_s": 1e9,
            "xla_bytes_reported": 32.0,
        },
        "rows": [],
        "tbptt_over_pes": None,
        "tbptt_over_forward_per_run": None,
        "targets": [],
    }  # fmt: skip
