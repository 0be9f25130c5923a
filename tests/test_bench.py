"""The benchmark suite on its smoke preset: every group's section of one shared run
(``conftest.bench_smoke``), in one file so that one pytest-xdist worker runs it while the
others run the rest of the suite.

``make bench``'s entry point on the tiny ``smoke`` preset: schema, table, docs, accuracy.

Timings are not asserted on (machines are shared and noisy); only that they exist.

Bench groups "learned_optimizer", "learned_estimators" and "flops" on their tiny
``smoke`` presets.

The hand-written jax + optax meta-step must compute what the library's does (same
meta-loss and meta-gradient from the same state and keys, horizon resets included), the
smoke presets run and their sections have the documented keys, and without torch the
torch.func side is skipped with a message that says how to get it. The estimator table's
derived numbers (throughput, roofline, ratios, targets) follow from its reported fields,
and the peer comparison runs through fake peer scripts or says why it was skipped. Timings
are not asserted on (machines are shared and noisy).

The memory/compile and scaling benchmark groups on their ``smoke`` presets.

Timings are not asserted on (shared, noisy machines). XLA's memory estimate is static, so
the checkpointed reverse mode's advantage at t = 1000 is asserted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import BENCH_BEGIN as BEGIN
from conftest import BENCH_END as END

from benchmarks import estimators as estimators_bench
from benchmarks import flops as flops_bench
from benchmarks import learned as learned_bench
from benchmarks import learned_hand, learned_torch, memory, momentum, scaling, update_profile
from benchmarks import least_squares as ls_bench
from benchmarks import run as bench
from benchmarks import towers as towers_bench
from l2l_jax import learned, truncated

# The bench smoke run (~4 min of compiles on 2 cores) is an end-to-end run: make test-slow.
pytestmark = pytest.mark.slow

ENV_KEYS = {
    "preset",
    "date_utc",
    "backend",
    "device_kind",
    "device_count",
    "jax",
    "jaxlib",
    "optax",
    "python",
    "cpu_count",
}
CELL_KEYS = {
    "dtype",
    "dim",
    "eta",
    "method",
    "t",
    "compile_s",
    "run_ms_median",
    "run_ms_min",
    "repeats",
    "memory",
    "device_peak_bytes_in_use",
    "value",
    "grad",
    "value_finite",
    "grad_finite",
    "ref_value",
    "ref_grad",
    "value_rel_err",
    "grad_rel_err",
    "ratio_to_first_t",
}
# float32 / float64 relative error allowed against the mpmath reference.
TOL = {"float32": 1e-5, "float64": 1e-12}


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


@pytest.fixture(scope="module")
def smoke(bench_smoke):
    """The shared smoke run (``conftest.bench_smoke``), its JSON parsed strictly."""
    out, page, _ = bench_smoke
    data = json.loads((out / "smoke.json").read_text(), parse_constant=_reject_constant)
    return out, page, data


def test_json_schema(smoke):
    _, _, data = smoke
    preset = bench.PRESETS["smoke"]
    assert data["schema_version"] == bench.SCHEMA_VERSION
    assert ENV_KEYS <= set(data["environment"])
    assert data["environment"]["preset"] == "smoke"
    assert data["preset"]["steps"] == list(preset.steps)
    assert data["wall_time_s"] > 0
    for cell in data["cells"]:
        assert CELL_KEYS <= set(cell), CELL_KEYS - set(cell)
        assert cell["run_ms_median"] > 0 and cell["run_ms_min"] > 0 and cell["compile_s"] > 0
        assert cell["repeats"] >= 1
        assert isinstance(cell["memory"]["peak_bytes"], int) and cell["memory"]["peak_bytes"] > 0
        assert isinstance(cell["value"], float | str) and isinstance(cell["grad"], float | str)
    for summary in data["summary"]:
        assert {"stable", "forward", "autodiff"} <= set(summary)
        assert math.isfinite(summary["stable"]["time_ratio"])


def test_every_cell_present_once(smoke):
    _, _, data = smoke
    preset = bench.PRESETS["smoke"]
    got = [(c["dtype"], c["dim"], c["method"], c["t"]) for c in data["cells"]]
    want = [
        (dtype, case.dim, method, t)
        for dtype in preset.dtypes
        for case in preset.cases
        for method in bench.METHODS
        for t in preset.steps
    ]
    assert sorted(got) == sorted(want) and len(got) == len(set(got))
    ratio_rows = {(r["dtype"], r["dim"], r["t"]) for r in data["method_ratios"]}
    assert ratio_rows == {(d, dim, t) for d, dim, _, t in want}
    for row in data["method_ratios"]:
        assert row["forward/stable"] > 0 and row["autodiff/stable"] > 0


def test_markdown_table_lists_every_cell(smoke):
    out, _, data = smoke
    text = (out / "smoke.md").read_text()
    assert "| method | t | compile s | run ms (median) |" in text
    assert "![" in text and "(smoke.png)" in text
    # the method tables' sections are headed by their dtype; the groups' by their names
    dtypes = tuple(bench.PRESETS["smoke"].dtypes)
    sections = [s for s in text.split("\n## ")[1:] if s.startswith(dtypes)]
    assert len(sections) == len(data["summary"])
    for section in sections:
        dtype = section.split(",")[0]
        rows = [line for line in section.splitlines() if line.startswith("| ")]
        for cell in (c for c in data["cells"] if c["dtype"] == dtype):
            prefix = f"| {cell['method']} | {cell['t']:,} |"
            assert sum(row.startswith(prefix) for row in rows) == 1, (dtype, prefix)
    png = (out / "smoke.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_docs_section_regenerated_in_place(smoke):
    _, page, data = smoke
    text = page.read_text()
    assert text.startswith("# Performance\n\nintro\n\n") and text.endswith("\n\noutro\n")
    assert "stale" not in text and text.count(BEGIN) == 1 and text.count(END) == 1
    assert "![Run time and memory vs t per method](results/bench/smoke.png)" in text
    assert (page.parent / "results" / "bench" / "smoke.png").read_bytes().startswith(b"\x89PNG")
    assert f"| stable | {data['cells'][0]['t']:,} |" in text


def test_stable_matches_mpmath_reference(smoke):
    _, _, data = smoke
    for cell in data["cells"]:
        tol = TOL[cell["dtype"]]
        if cell["method"] == "stable":
            assert cell["value_finite"] and cell["grad_finite"], cell
        if cell["value_finite"] and cell["grad_finite"]:
            assert cell["value_rel_err"] < tol, cell
            assert cell["grad_rel_err"] < tol, cell
        else:
            assert cell["value_rel_err"] is None or cell["grad_rel_err"] is None


def test_rejects_bad_repeats(tmp_path):
    with pytest.raises(ValueError, match="repeats"):
        bench.run(bench.PRESETS["smoke"], tmp_path, repeats=0, progress=False)


# float32 agreement of the spectral grid search with the scan unroll (per-eta mean values).
LS_TOL = 1e-4


def test_least_squares_section_present(smoke):
    out, page, data = smoke
    section = data["least_squares"]
    preset = ls_bench.PRESETS["smoke"]
    assert section["settings"]["d"] == preset.d and section["settings"]["m"] == preset.m
    assert section["settings"]["t"] == 40 and section["settings"]["radius"] == 40.0
    got = sorted((r["objective"], r["grid"]) for r in section["rows"])
    assert got == sorted((o, g) for o in ("tbt", "tbv") for g in ("fig2", "paper"))
    n_etas = {r["grid"]: r["n_etas"] for r in section["rows"]}
    assert n_etas == {"fig2": 170, "paper": 25}
    for row in section["rows"]:
        for side in ("decompose", "spectral", "unroll"):
            assert row[side]["run_ms_median"] > 0 and row[side]["compile_s"] > 0, (row, side)
            assert row[side]["repeats"] >= 1
        assert row["speedup_grid"] > 0 and row["speedup_grid_plus_decompose"] > 0
        assert row["us_per_task_eta"]["spectral"] > 0 and row["us_per_task_eta"]["unroll"] > 0
    md = (out / "smoke.md").read_text()
    assert "## least-squares grid search" in md
    assert "### least-squares grid search" in page.read_text()
    for row in section["rows"]:
        assert f"| {row['objective']} | {row['grid']} | {row['n_etas']} |" in md


def test_least_squares_sides_agree(smoke):
    _, _, data = smoke
    for row in data["least_squares"]["rows"]:
        assert row["all_finite"], row
        assert row["max_rel_diff"] < LS_TOL, row
        assert row["argmin_agrees"] and row["argmin_spectral"] == row["argmin_unroll"], row


def test_momentum_section(smoke):
    """Heavy ball past its boundary: every (method, t) cell; stable finite and within 1e-4
    of mpmath at every t; the unrolls' error at t = 100 is reported as non-finite or 1."""
    section = smoke[2]["momentum"]
    rows = section["rows"]
    assert sorted((r["method"], r["t"]) for r in rows) == sorted(
        (m, t) for m in momentum.METHODS for t in momentum.PRESETS["smoke"].steps
    )
    for r in rows:
        if r["method"] == "stable":
            assert r["grad_finite"] and r["grad_rel_err"] < 1e-4 and r["value_rel_err"] < 1e-4
    worst = {r["method"]: r["grad_rel_err"] for r in rows if r["t"] == 100}
    assert worst["forward"] is None or worst["forward"] > 0.01
    assert worst["autodiff"] is None or worst["autodiff"] > 0.01
    assert "t = 100" in momentum.claim(section)


def test_one_group_alone(tmp_path):
    """``python -m benchmarks.group momentum --preset smoke``: the group's JSON and markdown,
    the same rows as in ``make bench``, its claim printed."""
    from benchmarks import group

    section = group.main(["momentum", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"])
    saved = json.loads((tmp_path / "momentum-smoke.json").read_text())
    assert len(saved["rows"]) == len(momentum.METHODS) * len(momentum.PRESETS["smoke"].steps)
    assert saved["rows"] == json.loads(json.dumps(section["rows"], default=str))
    assert "stable" in (tmp_path / "momentum-smoke.md").read_text()
    with pytest.raises(SystemExit):
        group.main(["momentum", "--preset", "paper", "--out", str(tmp_path)])


def test_towers_section(smoke):
    """Every (optimizer, height) of the smoke preset is timed; ratios are to height 0."""
    out, page, data = smoke
    section = data["towers"]
    rows = {(r["optimizer"], r["height"]): r for r in section["rows"]}
    heights = section["settings"]["heights"]
    assert set(rows) == {(o, h) for o in ("sgd", "adam") for h in heights}
    for (_, height), row in rows.items():
        assert row["run_ms_median"] > 0 and row["repeats"] >= 1
        if height == 0:
            assert row["ratio_to_plain"] == pytest.approx(1.0)
    md = (out / "smoke.md").read_text()
    assert "hypergradient towers" in md and "hypergradient towers" in page.read_text()


def test_tower_builder_heights():
    """Height h nests h hyper levels (a HyperState h deep); height 0 is plain optax."""
    params = {"w": jax.numpy.ones(3)}
    assert not hasattr(towers_bench.build_tower("sgd", 0).init(params), "raw")
    state = towers_bench.build_tower("adam", 3).init(params)
    depth = 0
    while hasattr(state, "raw"):
        depth, state = depth + 1, state.outer
    assert depth == 3


# ----


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
    library_runs = learned_hand.as_runs(new)
    chex.assert_trees_all_close(h_new.params, library_runs.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(h_new.momentum, library_runs.momentum, rtol=1e-6, atol=1e-7)
    for field in ("count", "step", "key"):
        np.testing.assert_array_equal(getattr(h_new, field), getattr(library_runs, field))


def test_learned_smoke_section(learned_section):
    section = learned_section
    impls = [r["impl"] for r in section["rows"]]
    expected = ["l2l_jax", "hand-written"]
    if learned_torch.torch_available():
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
    monkeypatch.setattr(learned_torch, "torch_available", lambda: False)
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
    # independently of benchmarks.flops: a 2-trip and a 6-trip fori_loop of one matmul
    x = jax.numpy.ones((16, 16))
    loop = jax.jit(lambda x, n: jax.lax.fori_loop(0, n, lambda i, c: c @ x, x), static_argnums=1)
    costs = [loop.lower(x, n).compile().cost_analysis() for n in (2, 6)]
    costs = [c[0] if isinstance(c, list | tuple) else c for c in costs]
    assert step["xla_counts_loop_body_once"] == (costs[1]["flops"] < 2 * costs[0]["flops"])
    assert step["loop_scale"] == (SMOKE.segment if step["xla_counts_loop_body_once"] else 1)
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
        ("momentum", momentum),
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
    assert [r["estimator"] for r in section["rows"]] == ["tbptt", "es", "pes"]
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
    # TBPTT with the opt-in bfloat16 reverse pass, timed in the same rounds
    low = section["reduced_precision"]
    row, acc = low["row"], low["accuracy"]
    assert row["estimator"] == "tbptt-bfloat16" and acc["dtype"] == "bfloat16"
    assert row["runs_per_inner_step"] == b and row["bytes_per_inner_step"] > 0
    assert row["repeats"] == rows["tbptt"]["repeats"]
    over = row["run_ms_median"] / rows["pes"]["run_ms_median"] * 2 * p
    assert low["tbptt_over_forward_per_run"] == pytest.approx(over)
    # the forward pass is the exact one's (two programs: rounding apart at most); the
    # meta-gradient is rounded (above float32's error) within 32 u of bfloat16 (u = 2^-8;
    # test_learned_optimizer's fused-MLP case, three roundings per path: about 8 u)
    assert acc["meta_loss_reduced"] == pytest.approx(acc["meta_loss"], rel=1e-6)
    assert 1e-5 < acc["relative_error"] < 32 * 2.0**-8 and acc["cosine"] >= 0.999
    assert f"cosine {acc['cosine']:.6f}, relative error {acc['relative_error']:.2e}" in md


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


# ----


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


# -- update_profile: the learned update, whole and in parts ---------------------------------


def test_update_profile_parts_compute_the_update():
    """The profiled update, composed from the library's pieces, is ``MLPLOpt.update`` (to
    float32 rounding: another program); without the fallback sums it is the same on a
    tensor whose sums do not overflow; the matmul MLP is the fused one; every part moves
    the accumulators as the update does; the timed loop is the part applied again."""
    preset = update_profile.PRESETS["smoke"]
    cfg, args = update_profile.inputs(preset, jax.random.key(1))
    meta, count, g, p, ms, vs = args
    lopt = learned.MLPLOpt(cfg)
    state = learned.LOptState(
        momentum=tuple({"w": m} for m in ms),
        second_moment=tuple({"w": v} for v in vs),
        count=jnp.full((preset.runs,), count),
    )
    ref, new = jax.vmap(lopt.update)(meta, {"w": g}, state, {"w": p})
    axes = (0, None, 0, 0, 0, 0)
    parts = {
        part: jax.jit(jax.vmap(update_profile.update_part(cfg, part), in_axes=axes))
        for part in update_profile.PARTS
    }
    out = {part: fn(*args) for part, fn in parts.items()}
    np.testing.assert_allclose(out["update"][0], ref["w"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["no_fallback"][0], ref["w"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["eager_fallback"][0], ref["w"], rtol=1e-5, atol=1e-7)
    unnormalized, matmul = out["unnormalized"][0], out["unnormalized_matmul"][0]
    assert np.isfinite(unnormalized).all() and not np.allclose(unnormalized, ref["w"])
    np.testing.assert_allclose(matmul, unnormalized, rtol=1e-4, atol=1e-7)
    # b m + (1 - b) g with terms of size ~1: a few float32 ulp of 1 where they cancel
    want = [x["w"] for x in (*new.momentum, *new.second_moment)]
    for part, (_, m, v) in out.items():
        for got, expected in zip((*m, *v), want, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=part)
    run = jax.jit(
        jax.vmap(update_profile.looped(update_profile.update_part(cfg, "update"), 2), in_axes=axes)
    )
    p2, ms2, vs2 = run(*args)
    once = out["update"]
    twice = parts["update"](meta, count, g, p + once[0], once[1], once[2])
    np.testing.assert_allclose(p2, p + once[0] + twice[0], rtol=1e-5, atol=1e-6)
    for got, expected in zip((*ms2, *vs2), (*twice[1], *twice[2]), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_update_profile_costs_are_the_right_differences_of_parts():
    """Known fractions, costs worked out by hand: each cost takes the parts it names."""
    fractions = {
        "update": 1.0,
        "eager_fallback": 1.1,
        "no_fallback": 0.95,
        "unnormalized": 0.7,
        "unnormalized_matmul": 1.3,
        "accumulators": 0.1,
    }
    rows = [{"part": k, "paired_fraction": v} for k, v in fractions.items()]
    c = update_profile.costs({"rows": rows})
    want = {
        "accumulators": 0.1,
        "normalization": 0.3,
        "fallback_pass": 0.15,
        "fallback_skipped": 0.05,
        "fused_mlp": 0.6,
        "matmul_over_fused": 2.0,
    }
    assert c == pytest.approx(want)


def test_update_profile_section(bench_smoke):
    section = bench_smoke[2]["update_profile"]
    assert [r["part"] for r in section["rows"]] == list(update_profile.PARTS)
    update = section["rows"][0]
    assert update["fraction_of_update"] == 1.0 and update["paired_fraction"] == 1.0
    steps = update_profile.PRESETS["smoke"].steps
    for r in section["rows"]:
        assert r["repeats"] >= 1 and r["ms_per_update_median"] > 0
        assert r["ms_per_update_median"] == pytest.approx(r["run_ms_median"] / steps)
    text = update_profile.render_markdown(section, "###")
    assert text.startswith("### the learned update in parts")
    assert "| no_fallback |" in text and "fused MLP" in text
