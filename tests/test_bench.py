"""``make bench``'s entry point on the tiny ``smoke`` preset: schema, table, docs, accuracy.

Timings are not asserted on (machines are shared and noisy); only that they exist.
"""

from __future__ import annotations

import json
import math

import jax
import pytest
from conftest import BENCH_BEGIN as BEGIN
from conftest import BENCH_END as END

from benchmarks import least_squares as ls_bench
from benchmarks import run as bench
from benchmarks import towers as towers_bench

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
