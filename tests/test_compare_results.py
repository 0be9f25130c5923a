"""experiments.compare (scripts/compare_results.py): the check behind `make figures-check`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import compare as compare_results
from experiments import compare_rules

ROOT = Path(__file__).resolve().parents[1]


def test_equal_close_and_different_numbers():
    old = {"a": [1.0, 2.0, None], "b": {"c": 3.0, "seconds": 9.0}, "name": "x", "gone": 1}
    new = {"a": [1.0, 2.0 * (1 + 1e-7), None], "b": {"c": 3.1, "seconds": 1.0}, "name": "x"}
    old |= {"table": "| 1.38 s |", "stable": 1.0}
    new |= {"table": "| 1.16 s |", "stable": 2.0}
    res = compare_results.compare(new, old, rtol=1e-5)
    assert res["equal"] == 3  # 1.0, None, "x"; the timing and the rendered table skipped
    assert res["close"] == 1 and 0 < res["max_rel"] < 1e-6
    assert [d[0] for d in res["differ"]] == ["/b/c", "/gone", "/stable"]
    assert res["differ"][0][1:] == (3.1, 3.0)


def test_main_writes_the_report_and_fails_on_a_difference(tmp_path):
    for where, value in (("new", 1.0), ("old", 1.0), ("bad", 2.0)):
        (tmp_path / where / "exp").mkdir(parents=True)
        (tmp_path / where / "exp" / "results.json").write_text(json.dumps({"v": value}))
    out = tmp_path / "report.json"
    assert (
        compare_results.main(
            [str(tmp_path / "new"), str(tmp_path / "old"), "exp", "--out", str(out)]
        )
        == 0
    )
    assert json.loads(out.read_text())["experiments"]["exp"]["equal"] == 1
    assert out.with_suffix(".md").read_text().count("| exp |") == 1
    assert (
        compare_results.main(
            [str(tmp_path / "bad"), str(tmp_path / "old"), "exp", "--out", str(out)]
        )
        == 1
    )


def _write(root, name, payload):
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "results.json").write_text(json.dumps(payload))


def _env(**overrides):
    """This host's fingerprint as a results file records it, with ``overrides``."""
    host = compare_results.this_host()
    if host is None:
        pytest.skip("no /proc/cpuinfo: this host has no fingerprint")
    return {**host, **overrides}


def _other_isa():
    """An ``--xla_cpu_max_isa`` this process was not run under (``make test-isa`` sets one)."""
    return "SSE4_2" if compare_results.this_host()["xla_cpu_max_isa"] == "AVX" else "AVX"


def _run(tmp_path, new, old, name="fig1"):
    _write(tmp_path / "new", name, new)
    _write(tmp_path / "old", name, old)
    out = tmp_path / "report.json"
    rc = compare_results.main(
        [str(tmp_path / "new"), str(tmp_path / "old"), name, "--out", str(out)]
    )
    return rc, json.loads(out.read_text())["experiments"][name], out.with_suffix(".md").read_text()


def test_same_host_compares_bit_for_bit(tmp_path):
    old = {"environment": _env(), "trajectories": {"stable": [0.1, 0.09]}}
    new = {"environment": _env(), "trajectories": {"stable": [0.1, 0.09 * (1 + 1e-7)]}}
    rc, res, md = _run(tmp_path, new, old)
    assert rc == 1 and res["mode"] == "bitwise" and "same host" in res["why"]
    assert [d[0] for d in res["differ"]] == ["/trajectories/stable[1]"]
    assert "bitwise (stored on the same host" in md
    rc, res, _ = _run(tmp_path, old, old)
    assert rc == 0 and res["equal"] == 2


def test_another_host_compares_claims_within_the_table(tmp_path):
    # another ISA flag is another host; so is a file that records no host
    for env in (_env(xla_cpu_max_isa=_other_isa()), {"jax": "0.10.2"}):
        old = {
            "environment": env,
            "trajectories": {"stable": [0.1, 0.09]},
            "coefficients": [0.066182969, -0.3],
            "converged_at": {"stable": 73, "autodiff": None},
            "nonfinite_steps": {"stable": 0},
            "checks": {"converges": True},
        }
        new = json.loads(json.dumps(old)) | {"environment": _env()}
        new["trajectories"]["stable"][1] *= 1 + 1e-5  # float32 rounding: within 1e-3
        new["coefficients"][0] = 0.066182840  # a float32 draw, 2e-6 relative
        new["converged_at"]["stable"] = 74  # a step later
        rc, res, md = _run(tmp_path, new, old)
        assert rc == 0 and res["mode"] == "claims", res
        assert res["close"] == 3 and not res["differ"]
        assert "another host" in res["why"] and "claims (" in md and "Rules used" in md
        # a claim that changes, or a number beyond its rule, is reported
        new["checks"]["converges"] = False
        new["nonfinite_steps"]["stable"] = 1
        new["trajectories"]["stable"][0] = 0.1 * (1 + 2e-3)
        rc, res, _ = _run(tmp_path, new, old)
        assert rc == 1
        assert [d[0] for d in res["differ"]] == [
            "/checks/converges",
            "/nonfinite_steps/stable",
            "/trajectories/stable[0]",
        ]


def test_every_rule_has_a_reason_and_compiles():
    import re

    for rules in compare_rules.RULES.values():
        for pattern, tol, why in rules:
            re.compile(pattern)
            assert (
                set(tol) <= {"rel", "abs", "skip", "per_seed", "float32_range", "resolve"}
                and len(why) > 20
            )
    assert compare_rules.rule_for("fig1", "/trajectories/stable[3]")[1] == compare_rules.F32
    assert compare_rules.rule_for("fig4b", "/details/0/x") is not None
    assert compare_rules.rule_for("fig1", "/unnamed") is None


def _fig4(per_seed_values, runs):
    """A minimal fig4-like results file: per-seed numbers and the evaluation's runs."""
    names = ("tbt", "prodigy", "sgd")
    per_seed = [
        {"seed": s, **{k: dict(zip(names, v, strict=True)) for k in compare_rules.PER_SEED_KEYS}}
        for s, v in enumerate(per_seed_values)
    ]
    evaluation = {
        n: {fam: {"final": {"runs": runs}} for fam in compare_rules.PER_SEED_KEYS.values()}
        for n in names
    }
    details = {
        str(s): {"families": {"eval": {"n": 1000}}, "evaluation": evaluation}
        for s in range(len(per_seed_values))
    }
    return {"per_seed": per_seed, "details": details, "data": {"info": {"num_test": 1000}}}


def test_per_seed_bounds_by_family():
    stored = _fig4(
        [(76.0, 77.0, 81.5), (72.0, 72.0, 80.9), (74.0, 75.0, 81.6)], [0.73, 0.757, 0.796]
    )
    b = compare_rules.per_seed_bounds(stored, 0)
    s_run = compare_rules._sd([73.0, 75.7, 79.6])
    assert b[("test_acc", "sgd")][0] == 0.5  # 5 flips per run of 1000 digits
    assert abs(b[("test_acc", "prodigy")][0] - 3 * 2**0.5 * s_run / 3**0.5) < 1e-12
    assert abs(b[("test_acc", "tbt")][0] - 3 * 2**0.5 * max(2.0, s_run)) < 1e-12


def test_per_seed_bounds_read_the_runs_at_the_reported_step():
    """A file that records ``evaluated_at`` reports per-seed numbers at the meta-training
    horizon: the bounds use the runs' spread there, not at the last evaluation step."""
    stored = _fig4([(76.0, 77.0, 81.5), (72.0, 72.0, 80.9)], [0.5, 0.5, 0.5])
    at_500 = np.array([0.73, 0.757, 0.796])  # the runs at step 500; at 4000 they agree
    for d in stored["details"].values():
        d["evaluated_at"] = {"horizon": 500, "eval_horizon": 4000}
        for ev in d["evaluation"].values():
            ev |= {"steps": [0, 500, 4000], "runs": 3}
            for fam in compare_rules.PER_SEED_KEYS.values():
                ev[fam]["std"] = [0.0, float(at_500.std()), 0.0]
    b = compare_rules.per_seed_bounds(stored, 0)
    s_run = 100 * at_500.std(ddof=1)
    assert abs(b[("test_acc", "prodigy")][0] - 3 * 2**0.5 * s_run / 3**0.5) < 1e-9
    s_seed = 8**0.5  # the SD of the two seeds' TbT numbers, 76 and 72
    assert abs(b[("test_acc", "tbt")][0] - 3 * 2**0.5 * max(s_seed, s_run)) < 1e-9


def test_fig4_on_another_host_uses_the_derived_bounds(tmp_path):
    old = _fig4([(76.0, 77.0, 81.5), (72.0, 72.0, 80.9), (74.0, 75.0, 81.6)], [0.73, 0.757, 0.796])
    old["environment"] = _env(xla_cpu_max_isa=_other_isa())
    old["details"]["0"]["meta_loss"] = [1.0, 0.5]
    new = json.loads(json.dumps(old)) | {"environment": _env()}
    for key in compare_rules.PER_SEED_KEYS:
        new["per_seed"][0][key] |= {"tbt": 71.6, "prodigy": 76.3, "sgd": 81.52}
    new["details"]["0"]["meta_loss"] = [1.0, 0.7]  # a record, not a claim: skipped
    rc, res, _ = _run(tmp_path, new, old, name="fig4b")
    assert rc == 0 and res["mode"] == "claims" and res["skipped"] >= 1, res
    for key in compare_rules.PER_SEED_KEYS:
        new["per_seed"][0][key]["sgd"] = 80.9  # 0.6 points: more than 5 flips per run
    rc, res, _ = _run(tmp_path, new, old, name="fig4b")
    assert rc == 1 and {d[0] for d in res["differ"]} == {
        f"/per_seed[0]/{k}/sgd" for k in compare_rules.PER_SEED_KEYS
    }


def test_thm3_float32_beyond_its_range_is_not_a_claim(tmp_path):
    # t = 1000 and 2000: the exact |F'| (1e-39, 1e-80) lies below float32's normal range
    curve = {
        "objective": "last_loss",
        "eta_label": "1/L",
        "t": [1, 1000, 2000],
        "exact_log10": [2.18, -39.0, -79.7],
        "autodiff_float32": [-153.0, -1.5e-35, 0.0],
    }
    old = {
        "environment": {},
        "curves": [curve],
        "checks": {"failures_from_t": {"last_loss eta=1/L": {"autodiff_float32": 2000}}},
    }
    new = json.loads(json.dumps(old))
    new["curves"][0]["autodiff_float32"] = [-153.0 * (1 + 1e-6), -1.4e-35, -1.5e-35]
    new["checks"]["failures_from_t"]["last_loss eta=1/L"]["autodiff_float32"] = None
    rc, res, _ = _run(tmp_path, new, old, name="thm3")
    assert rc == 0 and res["skipped"] == 2 and res["close"] == 2, res
    # within float32's range, a failure that appears or moves is a changed claim
    new["checks"]["failures_from_t"]["last_loss eta=1/L"]["autodiff_float32"] = 1
    new["curves"][0]["autodiff_float32"][0] = -150.0
    rc, res, _ = _run(tmp_path, new, old, name="thm3")
    assert rc == 1 and len(res["differ"]) == 2


def _least_squares(eta_best, eta_star, objective, path_eta, gap):
    """A fig2-like results file: a geometric grid of 4 points (ratio 1.1), one setting."""
    grid = [0.1 * 1.1**k for k in range(4)]
    setting = {
        "eta_grid_best_tbt": eta_best,
        "eta_star_tbt": eta_star,
        "meta_objective_tbt": objective,
        "meta_gd_tbt": {"eta": path_eta},
        "test_rmse_tbt": 0.5,
        "test_rmse_tbv": 0.45,
    }
    return {
        "environment": {"jax": "0.10.2"},  # no host: another host
        "config": {"refine_lr": 0.02},
        "eta_grid": grid,
        "settings": [setting],
        "checks": {"test_rmse_gap_per_n": [gap]},
    }


def test_least_squares_tuned_step_sizes_within_their_derived_tolerances(tmp_path):
    grid = [0.1 * 1.1**k for k in range(4)]
    flat = [2.0, 1.0005, 1.0, 3.0]  # the grid's minimum at 2, its neighbour 1 within 1e-3
    old = _least_squares(grid[2], grid[2] * 1.01, flat, [grid[2], grid[2] * 1.01], 0.05)
    # another iterate one Adam step away (2% at refine_lr = 0.02), a cancelling gap moved by
    # 1e-3 x 0.95 absolute: a pass
    new = _least_squares(grid[2], grid[2] * 1.01 * 1.019, flat, [grid[2], grid[2] * 1.01], 0.0495)
    rc, res, _ = _run(tmp_path, new, old, "fig2")
    assert rc == 0, res["differ"]
    # beyond one Adam step: reported
    new["settings"][0]["eta_star_tbt"] = grid[2] * 1.01 * 1.03
    rc, res, _ = _run(tmp_path, new, old, "fig2")
    assert [d[0] for d in res["differ"]] == ["/settings[0]/eta_star_tbt"]
    # the grid's pick moves to a neighbour where the objective is as low: accepted, eta*
    # within a grid spacing and a step, and the path from another start is not compared
    new = _least_squares(grid[1], grid[1] * 1.05, flat, [grid[1], grid[1] * 1.2], 0.05)
    rc, res, _ = _run(tmp_path, new, old, "fig2")
    assert rc == 0 and res["skipped"] == 1, res["differ"]  # the path, one subtree
    # ... but not to a neighbour where it is not flat, nor two points away
    for k, objective in ((3, flat), (1, [2.0, 1.01, 1.0, 3.0]), (0, flat)):
        old["settings"][0]["meta_objective_tbt"] = objective
        new["settings"][0]["eta_grid_best_tbt"] = grid[k]
        rc, res, _ = _run(tmp_path, new, old, "fig2")
        assert "/settings[0]/eta_grid_best_tbt" in [d[0] for d in res["differ"]], k


def _towers(acc_seeds):
    """A towers-like file: one row (sgd, height 1), lr0 points with 3 seeds each."""
    acc = [sum(s) / len(s) for s in acc_seeds]
    row = {
        "variant": "sgd",
        "height": 1,
        "test_accuracy": acc,
        "test_accuracy_seeds": acc_seeds,
        "spread": max(acc) - min(acc),
    }
    return {
        "environment": {"jax": "0.10.2"},
        "settings": {"n_test": 1000},
        "rows": [row],
        "spread": {"sgd": {"1": row["spread"]}},
    }


def test_towers_points_within_their_seeds_spread(tmp_path):
    seeds = [[0.85, 0.86, 0.87], [0.30, 0.10, 0.20]]  # the second: chaotic, a wide spread
    old = _towers(seeds)
    bound = 3 * 2**0.5 * 0.01 / 3**0.5  # 3 sqrt(2) s / sqrt(3), s = 0.01
    new = _towers([[0.85 + bound * 0.9, 0.86, 0.87], [0.45, 0.40, 0.42]])
    new["rows"][0]["test_accuracy"][0] = 0.86 + bound * 0.9
    rc, res, _ = _run(tmp_path, new, old, "towers")
    assert rc == 0, res["differ"]
    new["rows"][0]["test_accuracy"][0] = 0.86 + bound * 1.1
    rc, res, _ = _run(tmp_path, new, old, "towers")
    assert "/rows[0]/test_accuracy[0]" in [d[0] for d in res["differ"]]


def test_sweep_converged_runs_within_steps_unconverged_not_compared(tmp_path):
    def sweep(converged_at, final_eta, success):
        cell = {"converged_at": converged_at, "final_eta": final_eta, "success": success}
        return {"environment": {"jax": "0.10.2"}, "config": {"meta_steps": 1000}, "cells": [cell]}

    rc, res, _ = _run(tmp_path, sweep(230, 0.03533, True), sweep(209, 0.03533, True), "sweep")
    assert rc == 0, res["differ"]
    rc, res, _ = _run(tmp_path, sweep(260, 0.03533, True), sweep(209, 0.03533, True), "sweep")
    assert [d[0] for d in res["differ"]] == ["/cells[0]/converged_at"]  # 51 > 50 steps
    rc, res, _ = _run(tmp_path, sweep(None, 0.0351, False), sweep(994, 0.0353, False), "sweep")
    assert rc == 0 and res["skipped"] == 2
    rc, res, _ = _run(tmp_path, sweep(994, 0.0353, True), sweep(994, 0.0353, False), "sweep")
    assert "/cells[0]/success" in [d[0] for d in res["differ"]]  # the claim itself


def test_health_meta_gradients_within_a_decade(tmp_path):
    def health(g):
        return {"environment": {"jax": "0.10.2"}, "mnist": {"rows": [{"meta_gradient_abs": g}]}}

    old = health({"100": 0.057, "400": None})
    rc, res, _ = _run(tmp_path, health({"100": 0.026, "400": None}), old, "health")
    assert rc == 0, res["differ"]
    for new in ({"100": 0.0056, "400": None}, {"100": 0.057, "400": 1.0}):
        rc, res, _ = _run(tmp_path, health(new), old, "health")
        assert rc == 1


def test_a_rule_shared_by_several_experiments_is_explained_once(tmp_path):
    pattern = "/summary/.*"
    holders = [n for n, rules in compare_rules.RULES.items() if any(r[0] == pattern for r in rules)]
    assert len(holders) > 1  # the case this checks: fig4a-c share it
    old = {"environment": {"jax": "0.10.2"}, "summary": {"mean": 1.0}}
    new = {"environment": _env(), "summary": {"mean": 2.0}}
    rc, res, md = _run(tmp_path, new, old, name=holders[0])
    assert rc == 0 and res["skipped"] == 1
    assert md.count(f"- `{pattern}`") == 1
