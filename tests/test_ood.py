"""The out-of-distribution study: its measures on hand-made numbers, config
errors, and a tiny end-to-end run through the command line (results structure, resume).

The claim itself (the nominal-term optimizer diverges on fewer tasks) is reported by the
experiment's ``checks`` on its full configs (``results/ood``, ``ood_paper`` and
``ood_paper_seed1``; ``make figures``), not asserted here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from configs import ood as ood_config
from experiments import cli, ood, ood_report


def test_divergence_rule():
    initial = np.array([1.0, 1.0, 2.0, 2.0, 1.0, np.nan])
    final = np.array([0.5, 10.0, 20.1, np.inf, np.nan, 0.1])
    # final > 10 x initial, or non-finite (also a non-finite start); exactly 10x is not
    assert ood_report.diverged(initial, final, 10.0).tolist() == [
        False,
        False,
        True,
        True,
        True,
        True,
    ]
    assert ood_report.diverged([1.0], [3.0], 2.0).tolist() == [True]


def test_relative_loss_and_median():
    assert ood_report.mean_final([1.0, 3.0]) == 2.0
    assert ood_report.mean_final([1.0, np.inf]) == math.inf
    assert ood_report.relative_loss([1.0, 3.0], [0.5, 1.5]) == pytest.approx(2.0)
    assert ood_report.relative_loss([1.0, np.nan], [1.0, 1.0]) == math.inf
    assert math.isnan(ood_report.relative_loss([1.0], [0.0]))
    assert ood_report.median_ratio([0.5, 2.0, math.inf]) == 2.0
    assert ood_report.median_ratio([0.5, math.nan, 1.5]) == 1.0
    assert ood_report.median_ratio([math.inf, math.inf, 1.0]) == math.inf
    # final / best per run: climbed back x2 and x1, mean 1.5; non-finite -> inf
    assert ood_report.rise_from_best([[3.0, 1.0, 2.0], [2.0, 0.5, 0.5]]) == pytest.approx(1.5)
    assert ood_report.rise_from_best([[1.0, np.nan]]) == math.inf
    assert ood_report.rise_from_best([[1.0, 0.0, 0.0]]) == 1.0


def test_task_result_tune_and_checks():
    # (runs, points): Adam reaches 0.1, plain blows up in one run, nominal reaches 0.2
    curves = {
        "adam": np.array([[1.0, 0.1], [1.0, 0.1]]),
        "plain": np.array([[1.0, 0.1], [1.0, 50.0]]),
        "nominal": np.array([[1.0, 0.2], [1.0, 0.2]]),
    }
    r = ood_report.task_result(curves, 10.0)
    assert r["plain"]["diverged"] and r["plain"]["diverged_runs"] == 1
    assert r["plain"]["ratio_to_adam"] == pytest.approx(50.1 / 2 / 0.1)
    assert not r["nominal"]["diverged"] and r["nominal"]["ratio_to_adam"] == pytest.approx(2.0)
    assert r["adam"]["rise_from_best"] == 1.0
    assert r["plain"]["rise_from_best"] == pytest.approx((1.0 + 50.0) / 2)
    summary = ood_report.summarize_optimizers({"a": r, "b": r}, ["a", "b"])
    assert summary["plain"]["median_rise_from_best"] == pytest.approx(25.5)
    assert summary["plain"]["diverged"] == 2 and summary["nominal"]["diverged"] == 0
    c = ood_report.checks(summary)
    assert c["nominal_diverges_on_fewer_tasks"] and c["diverged_plain"] == 2
    grid = np.array([[[1.0, 0.5]], [[1.0, np.nan]], [[1.0, 0.2]], [[1.0, 0.2]]])
    tuned = ood_report.tune_adam(grid, np.array([1e-3, 1e-2, 1e-1, 1.0]))
    assert tuned["best_index"] == 2 and tuned["best_lr"] == 0.1 and tuned["score"][1] == math.inf
    assert ood.chunk_steps(5, 2) == [3, 2] and ood.chunk_steps(2, 3) == [1, 1, 0]
    assert ood.eval_points(10, 4).tolist() == [0, 3, 6, 9, 10]


def test_presets_and_config_errors():
    cfg = ood_config.get_config()
    ood.check_config(cfg)
    assert len([n for n in cfg.eval_tasks if n not in cfg.train_tasks]) >= 10
    assert ood_config.get_config("paper").meta.steps_per_task > cfg.meta.steps_per_task
    with pytest.raises(ValueError, match="preset must be one of"):
        ood_config.get_config("huge")
    bad = [
        ("train_tasks", ("nope",), "train_tasks names unknown tasks"),
        ("init_step", 0.0, "init_step must be > 0"),
    ]
    c = ood_config.get_config()
    c.plain.start = "zeros"
    with pytest.raises(ValueError, match=r"plain\.start must be one of"):
        ood.check_config(c)
    for field, value, message in bad:
        c = ood_config.get_config()
        c[field] = value
        with pytest.raises(ValueError, match=message):
            ood.check_config(c)
    c = ood_config.get_config()
    c.tasks.digits_32.sizes = (784, 10)
    with pytest.raises(ValueError, match=r"tasks.digits_32.sizes must be \(64"):
        ood.check_config(c)
    c = ood_config.get_config()
    c.tasks.nqm_p1.family = "cifar"
    with pytest.raises(ValueError, match=r"tasks\.nqm_p1\.family must be one of"):
        ood.check_config(c)
    c = ood_config.get_config()
    c.eval.adam_lrs = (1.0, 0.1, 3)
    with pytest.raises(ValueError, match=r"eval\.adam_lrs"):
        ood.check_config(c)


def test_plain_start_descent_or_random():
    """``plain.start``: ``descent_init`` of the random net (default) or the random net
    itself (paper preset); the nominal start does not depend on it."""
    import jax

    from l2l_jax import learned

    cfg = ood_config.get_config()
    assert cfg.plain.start == "descent"
    assert ood_config.get_config("paper").plain.start == "random"
    lopts = ood.make_optimizers(cfg)
    key = jax.random.key(3)
    random_net = lopts["plain"].init_meta_params(key)
    warm = ood.initial_meta_params(cfg, lopts, key)
    expected = learned.descent_init(
        lopts["plain"],
        random_net,
        feature=cfg.plain.descent_feature,
        scale=cfg.init_step / lopts["plain"].config.step_mult,
    )
    # the same descent_init call on the same inputs: same program, same host: bitwise
    jax.tree.map(np.testing.assert_array_equal, warm["plain"], expected)
    cfg.plain.start = "random"
    cold = ood.initial_meta_params(cfg, lopts, key)
    jax.tree.map(np.testing.assert_array_equal, cold["plain"], random_net)
    jax.tree.map(np.testing.assert_array_equal, cold["nominal"], warm["nominal"])
    assert not np.array_equal(cold["plain"]["out"]["kernel"], warm["plain"]["out"]["kernel"])


TINY = [
    "--no-progress",
    "--config.train_tasks=('nqm_p1',)",
    "--config.eval_tasks=('nqm_p1','nqm_power2','digits_32')",
    "--config.curve_tasks=('nqm_power2',)",
    "--config.tasks.nqm_p1.dim=4",
    "--config.tasks.nqm_power2.dim=4",
    "--config.tasks.digits_32.sizes=(64,8,10)",
    "--config.tasks.digits_32.n_train=200",
    "--config.plain.hidden_sizes=(4,)",
    "--config.meta.horizon=6",
    "--config.meta.segment=3",
    "--config.meta.meta_batch=2",
    "--config.meta.steps_per_task=3",
    "--config.meta.checkpoint_every=1",
    "--config.eval.runs=2",
    "--config.eval.points=2",
    "--config.eval.adam_lrs=(1e-2,1e-1,2)",
]


@pytest.mark.slow
def test_tiny_end_to_end_and_refused_resume(tmp_path):
    out = tmp_path / "ood"
    results = cli.main(["ood", "--out", str(out), *TINY])
    saved = json.loads((out / "results.json").read_text())
    assert saved["checks"] == results["checks"]
    assert set(results["per_task"]) == {"nqm_p1", "nqm_power2", "digits_32"}
    for name, r in results["per_task"].items():
        assert set(r) == {"adam", "plain", "nominal"}
        for o in ("plain", "nominal"):
            assert isinstance(r[o]["diverged"], bool)
            assert r[o]["ratio_to_adam"] is None or r[o]["ratio_to_adam"] > 0
        assert len(results["curves"][name]["adam"]) == 2  # runs
    assert results["tasks"]["nqm_p1"]["in_distribution"]
    assert results["aggregate"]["ood"]["plain"]["tasks"] == 2
    assert results["meta_training"]["budget_meta_steps"] == {"plain": 3, "nominal": 3}
    checks = results["checks"]
    ood = [n for n, t in results["tasks"].items() if not t["in_distribution"]]
    assert checks["ood_tasks"] == len(ood) == 2
    # the counts, recounted from the per-task records (not from the checks themselves)
    for o in ("plain", "nominal"):
        diverged = sum(results["per_task"][n][o]["diverged"] for n in ood)
        assert checks[f"diverged_{o}"] == diverged, o
    assert checks["nominal_diverges_on_fewer_tasks"] == (
        sum(results["per_task"][n]["nominal"]["diverged"] for n in ood)
        < sum(results["per_task"][n]["plain"]["diverged"] for n in ood)
    )
    for f in ("ood_ratios.png", "loss_curves.png", "meta_training.png", "table.md"):
        assert (out / f).exists()
    assert (out / "lopt_plain").is_dir() and (out / "lopt_nominal").is_dir()
    # (resuming from the checkpoints is tested with truncated.meta_train in test_truncated.py;
    # a second full run here would double the cost of this test)
    with pytest.raises(ValueError, match="another configuration"):
        cli.main(["ood", "--out", str(out), *TINY[:-1], "--config.meta.segment=2"])
