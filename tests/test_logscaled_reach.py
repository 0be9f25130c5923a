"""The equal-time comparison of log-scaled TBPTT, TBPTT and PES on fig4b's TbV
(``experiments/logscaled_reach.py``): its pure pieces against hand computations, its
config against the conditions it states, and a tiny end-to-end run with resume (slow)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import logscaled_reach as config
from experiments import logscaled_reach as exp

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


# -- pure pieces ------------------------------------------------------------------------------


def test_chunk_steps_spends_the_budget_to_within_half_a_step():
    # before the first step: one step, to measure its time
    assert exp.chunk_steps(0.0, 10.0, 2.0, None, 25) == 1
    # about every_s seconds of steps, at least 1, at most max_steps
    assert exp.chunk_steps(1.0, 10.0, 2.0, 0.5, 25) == 4
    assert exp.chunk_steps(1.0, 10.0, 2.0, 0.5, 3) == 3
    assert exp.chunk_steps(1.0, 10.0, 2.0, 5.0, 25) == 1
    # the last chunk fills what is left, not every_s
    assert exp.chunk_steps(9.0, 10.0, 5.0, 0.25, 25) == 4
    # done: budget spent, or less than half a step left
    assert exp.chunk_steps(10.0, 10.0, 2.0, 0.5, 25) == 0
    assert exp.chunk_steps(9.8, 10.0, 2.0, 0.5, 25) == 0
    assert exp.chunk_steps(9.7, 10.0, 2.0, 0.5, 25) == 1
    # simulated: a method at 0.3 s per step ends within half a step of the budget
    used, step_s, budget = 0.0, None, 10.0
    while n := exp.chunk_steps(used, budget, 2.0, step_s, 25):
        used, step_s = used + 0.3 * n, 0.3
    assert abs(used - budget) <= 0.15 + 1e-9


def test_the_clock_and_the_step_time():
    history = [{"step_time": t} for t in (5.0, 1.0, 2.0, 3.0, 4.0, 6.0)]
    assert exp.budget_used(history) == 21.0
    assert exp.recent_step_seconds(history) == 3.0  # median of the last 5: 1, 2, 3, 4, 6
    assert exp.recent_step_seconds([]) is None


def _record(final, best, steps, nonfinite, start=10.0, step_s=2.0, warmups=(1.0,), **extra):
    return {
        "final_score": final,
        "best_score": best,
        "start_score": start,
        "meta_steps": steps,
        "nonfinite_steps": nonfinite,
        "norm_overflow_steps": extra.get("overflow", 0),
        "saturated_steps": extra.get("saturated", 0),
        "budget_used_s": 2.0 * steps,
        "step_s_median": step_s,
        "sittings": [{"warmup_s": w} for w in warmups],
    }


def test_method_summary_by_hand():
    records = [
        _record(2.0, 1.5, 10, 4, saturated=4, warmups=(30.0, 0.5)),
        _record(4.0, 3.5, 30, 2, step_s=4.0, overflow=1),
        _record(3.0, 2.5, 20, 0, step_s=3.0),
    ]
    s = exp.method_summary(records)
    assert s["final_score_mean"] == pytest.approx(3.0)
    assert s["best_score_mean"] == pytest.approx(2.5)
    assert s["change_from_start_mean"] == pytest.approx(-7.0)
    assert s["nonfinite_fraction"] == pytest.approx(6 / 60)  # pooled over seeds
    assert s["norm_overflow_fraction"] == pytest.approx(1 / 60)
    assert s["saturated_fraction"] == pytest.approx(4 / 60)
    assert s["meta_steps_mean"] == 20 and s["meta_steps_per_seed"] == [10, 30, 20]
    assert s["step_s_median"] == 3.0 and s["warmup_s_max"] == 30.0
    # a seed whose score is not finite makes the mean non-finite, not averaged away
    records[1]["final_score"] = math.inf
    assert exp.method_summary(records)["final_score_mean"] == math.inf


def test_table_formats_non_finite_and_incomplete():
    summary = exp.method_summary([_record(2.0, 1.5, 10, 10)])
    summary["final_score_mean"] = math.inf
    results = {
        "conditions": {
            "descent_scale": 4096.0,
            "horizon": 500,
            "segment": 400,
            "meta_batch": 8,
            "predicted_overflow_float32": [241.0],
            "seeds": 1,
            "budget_s": 600.0,
            "clock": "meta-step time",
            "host": "a CPU",
        },
        "per_seed": [{"start": {"score": 10.0}}],
        "summary": {"tbptt": summary},
        "complete": False,
        "seeds_done": [0],
    }
    text = exp.table(results)
    assert "K = 400" in text and "241-241 steps" in text and "600 s" in text
    row = next(line for line in text.splitlines() if line.startswith("| tbptt"))
    assert "non-finite" in row and "100%" in row
    assert "Incomplete" in text


# -- the config against what the page states ------------------------------------------------


def test_the_config_is_past_the_overflow_horizon_at_equal_budgets():
    cfg = config.get_config()
    exp.check_config(cfg)
    assert set(cfg.methods) == {"tbptt", "tbptt_logscaled", "pes"} and len(cfg.seeds) >= 3
    assert cfg.segment > 241  # the health check's predicted float32 overflow horizon
    assert cfg.segment <= cfg.horizon and cfg.label_noise == 0.2 and cfg.n_samples == 1000
    for method in cfg.methods:
        tc = exp.truncated_config(cfg, method)
        assert tc.estimator.name == method and tc.segment == cfg.segment and tc.remat == 20
        assert tc.objective == "tbv"
    assert exp.truncated_config(cfg, "pes").estimator.sigma == cfg.es_sigma
    # the page states the budgeted time: methods x seeds x budget
    minutes = len(cfg.methods) * len(cfg.seeds) * cfg.budget_s / 60
    page = (ROOT / "docs" / exp.PAGE).read_text()
    assert f"takes {minutes:.0f} min on 2 cores" in page
    assert f"`budget_s = {cfg.budget_s:g}`" in page


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("methods", ("tbptt", "sgd"), "methods must be distinct names"),
        ("methods", ("pes", "pes"), "methods must be distinct names"),
        ("seeds", (1, 1), "seeds must be distinct"),
        ("budget_s", 0.0, "budget_s must be a positive number"),
        ("score_every_s", math.inf, "score_every_s must be a positive number"),
        ("remat", -1, "remat must be >= 0"),
        ("segment", 600, "segment .* must be <= horizon"),
    ],
)
def test_bad_settings_name_the_field(field, value, message):
    cfg = config.get_config()
    cfg[field] = value
    with pytest.raises(ValueError, match=message):
        exp.check_config(cfg)


# -- end to end ------------------------------------------------------------------------------


def tiny(budget_s: float):
    cfg = config.get_config()
    cfg.n_samples = 100
    cfg.sizes = (784, 16, 10)
    cfg.hidden_sizes = (4,)
    cfg.horizon = 12
    cfg.segment = 6
    cfg.meta_batch = 2
    cfg.remat = 3
    cfg.select_tasks = 2
    cfg.eval_batch_size = 16  # at most the 20 validation rows of 100 digits
    cfg.seeds = (0, 1)
    cfg.budget_s = budget_s
    cfg.score_every_s = 0.3
    cfg.overflow_check_steps = 6
    cfg.checkpoint_every = 2
    return cfg


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_tiny_run_records_every_method_and_resumes(tmp_path):
    """Minutes, nearly all compilation (three meta-steps, the evaluation, the health check).

    Runs :func:`tiny_end_to_end` in a child process: a fatal error in native code (once seen
    on CI, on an unknown host, as "worker crashed" without its message) then fails this
    test with the child's own stderr instead of taking the pytest worker down."""
    code = (
        "import sys; from pathlib import Path; sys.path[:0] = sys.argv[1:3]; "
        "import test_logscaled_reach as t; t.tiny_end_to_end(Path(sys.argv[3]))"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code, str(ROOT), str(TESTS), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3000,
    )
    assert child.returncode == 0, (
        f"the tiny run exited with {child.returncode}; its stderr ends:\n{child.stderr[-6000:]}"
    )


def tiny_end_to_end(tmp_path: Path) -> None:
    """The tiny run's checks: every method recorded, resumed, rescored, continued, and a
    changed setting refused."""
    out = tmp_path / "run"
    first = exp.run(tiny(1.0), out, progress=False)
    assert first["complete"] and first["seeds_done"] == [0, 1]
    assert (out / "results.json").exists() and (out / "table.md").exists()
    assert (out / "logscaled_reach.png").exists()
    for seed in first["per_seed"]:
        start = seed["start"]
        assert start["check_steps"] == 6 and start["score"] is not None
        for method in tiny(1.0).methods:
            r = seed["methods"][method]
            assert r["meta_steps"] >= 1 and len(r["meta_loss"]) == r["meta_steps"]
            curve = r["curve"]
            assert curve[0] == {"step": 0, "seconds": 0.0, "score": start["score"]}
            assert [c["step"] for c in curve] == sorted({c["step"] for c in curve})
            assert curve[-1]["step"] == r["meta_steps"]
            assert curve[-1]["seconds"] == pytest.approx(r["budget_used_s"])
            # finite or flagged: a non-finite score is null in JSON and False here
            assert [c["score"] is not None for c in curve] == r["scores_finite"]
            # the budget is spent to within about a meta-step (the first chunk is 1 step)
            assert r["budget_used_s"] >= 1.0 - r["step_s_median"]
            assert len(r["sittings"]) == 1 and r["sittings"][0]["to_step"] == r["meta_steps"]
    assert set(first["summary"]) == {"tbptt", "tbptt_logscaled", "pes"}

    # the same call again: everything is loaded, no meta-step runs
    metrics = out / "seed_0" / "pes" / "metrics.jsonl"
    before = metrics.read_text()
    again = exp.run(tiny(1.0), out, progress=False)
    assert metrics.read_text() == before
    for a, b in zip(first["per_seed"], again["per_seed"], strict=True):
        for method in a["methods"]:
            assert a["methods"][method]["curve"] == b["methods"][method]["curve"]
            assert a["methods"][method]["meta_steps"] == b["methods"][method]["meta_steps"]

    # killed after a chunk, before its score: the checkpoint's state is scored, not retrained
    curve_path = out / "seed_1" / "tbptt" / "curve.json"
    saved = json.loads(curve_path.read_text())
    lost = saved["curve"].pop()
    curve_path.write_text(json.dumps(saved))
    rescored = exp.run(tiny(1.0), out, progress=False)
    point = rescored["per_seed"][1]["methods"]["tbptt"]["curve"][-1]
    assert point["step"] == lost["step"] and point["score"] == lost["score"]

    # a larger budget continues every method from its last meta-step
    more = exp.run(tiny(2.0), out, progress=False)
    for a, b in zip(rescored["per_seed"], more["per_seed"], strict=True):
        for method, old in a["methods"].items():
            new = b["methods"][method]
            assert new["meta_steps"] > old["meta_steps"]
            assert new["curve"][: len(old["curve"])] == old["curve"]
            assert new["meta_loss"][: old["meta_steps"]] == old["meta_loss"]
    lines = _lines(metrics)
    assert [h["step"] for h in lines] == list(range(1, len(lines) + 1))

    # a setting that changes meta-training is refused on resume
    other = tiny(2.0)
    other.segment = 4
    with pytest.raises(ValueError, match="another configuration"):
        exp.run(other, out, progress=False)
