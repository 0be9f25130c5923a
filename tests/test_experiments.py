"""Experiments and their command line: the papers' claims, on the configs that ship.

fig1 and the float32-stable/exact half of the sweep run on their full default configs
(seconds); thm3 and the autodiff half of the sweep on a few cells. ``make figures`` runs
everything in full and writes the results the docs show.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cli, common, sweep, thm3
from l2l_jax import inner, metagrad, objectives
from l2l_jax.closed_forms import reference


def _run(name, out, *overrides):
    return cli.main([name, "--out", str(out), "--no-progress", *overrides])


# -- command line -------------------------------------------------------------------------
def test_overrides_parse_to_the_fields_type():
    cfg = cli.load_config("sweep")
    cli.apply_overrides(
        cfg,
        [
            "--config.meta_steps=7",
            "--config.c=0.5",
            "--config.task.seed=3",
            "--config.exact=false",
            "--config.steps=(20, 40)",
            "--config.c_units=absolute",
        ],
    )
    assert cfg.meta_steps == 7 and cfg.c == 0.5 and cfg.task.seed == 3 and cfg.exact is False
    assert cfg.steps == (20, 40) and cfg.c_units == "absolute"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.meta_step=7", "no field 'meta_step'"),
        ("--config.nope.seed=1", "no section 'nope'"),
        ("--config.meta_steps=many", "bad value for config field 'meta_steps'"),
        ("--config.meta_steps=1.5", "'meta_steps': expected an integer, got '1.5'"),
        ("--config.c=abc", "'c': .*not a Python literal"),
        ("--config.c=True", "'c': expected a number"),
        ("--meta_steps=7", "overrides look like --config.F=V"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        cli.apply_overrides(cli.load_config("fig1"), [override])


def test_out_must_be_a_writable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="not a writable folder"):
        cli.check_out(blocker / "sub")
    cli.check_out(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir() and not list((tmp_path / "new" / "dir").iterdir())


@pytest.mark.parametrize("name", ["fig2", "fig4b", "towers"])
def test_experiment_help_lists_every_field_with_its_default(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    cfg = cli.load_config(name)
    paths = [path for path, _ in cli._flatten(cfg)]
    assert paths and all(f"--config.{p}=" in text for p in paths)
    for path, doc in cli.field_docs(name).items():
        if path in paths:  # the comment of its line in configs/ is its doc
            assert doc in text, path
    assert text.splitlines()[2] == cli._first_line(__import__(f"configs.{name}", fromlist=["x"]))


def test_main_help_describes_each_experiment(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for name in ("fig1", "fig4b", "ood"):
        assert any(
            line.split()[:1] == [name] and len(line.split()) > 3 for line in text.splitlines()
        )


def test_results_json_is_readable_by_others(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        common.write_json(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644


def test_unknown_preset_and_settings_are_errors():
    with pytest.raises(ValueError, match="preset"):
        cli.load_config("fig1", "huge")
    cfg = cli.load_config("fig1")
    cfg.c_units = "per-step"
    with pytest.raises(ValueError, match="c_units"):
        common.meta_step_size(cfg, 1.0)
    with pytest.raises(ValueError, match="dtype"):
        common.dtype_of("float16")


# -- convergence criteria --------------------------------------------------------------------
def test_converged_at_and_succeeded():
    traj = [2.0, 1.5, 1.005, 0.98, 1.001, 1.0]
    assert common.converged_at(traj, 1.0, 0.01) == 4  # 0.98 is out, then in for good
    assert common.succeeded(traj, 1.0, 0.01, window=2)
    assert not common.succeeded(traj, 1.0, 0.01, window=3)
    assert common.converged_at([1.0, float("nan")], 1.0, 0.01) is None


def test_exact_meta_gd_matches_stable_meta_gd_float64():
    """The mpmath-fed yardstick and metagrad.minimize on the stable float64 objective agree."""
    task32 = common.quadratic(cli.load_config("fig1").task)
    lam, coef = common.spectrum64(task32)
    c = 0.3 / lam[-1] ** 2
    exact = common.exact_meta_gd(lam, coef, 80, 0.1, c, 60)
    with jax.enable_x64(True):
        task = task32.astype(jnp.float64)
        F = metagrad.meta_objective(
            task, inner.gd(), objectives.log_loss(), steps=80, grad="stable"
        )
        run = metagrad.minimize(F, jnp.asarray(0.1), metagrad.meta_gd(c), 60, progress=False)
    np.testing.assert_allclose(np.asarray(run.trajectory), exact, rtol=1e-9)


# -- fig1: Figure 1's claims, on the shipped default config -----------------------------------
def test_fig1_default(tmp_path):
    res = _run("fig1", tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "fig1.png").stat().st_size > 10_000
    assert set(saved) >= {
        "eigenvalues",
        "coefficients",
        "eta_star",
        "trajectories",
        "nonfinite_steps",
    }
    cfg, k = res["config"], res["config"]["meta_steps"]
    assert cfg["dtype"] == "float32" and cfg["steps"] == 80 and cfg["eta0"] == 0.1
    lam, coef = np.asarray(saved["eigenvalues"]), np.asarray(saved["coefficients"])
    np.testing.assert_allclose(np.sum(coef**2), 1.0, rtol=1e-6)  # w0 on the unit sphere
    target = saved["eta_star"]
    assert target == pytest.approx(reference.eta_star(lam, coef, 80), rel=1e-9)
    assert abs(float(reference.log_loss_grad(target, lam, coef, 80))) < 1e-6
    # autodiff (and forward) never get a finite meta-gradient: eta stays eta0
    for method in ("autodiff", "forward"):
        assert saved["nonfinite_steps"][method] == k
        assert np.all(np.asarray(saved["trajectories"][method]) == np.float32(0.1))
    # stable converges to within 1% of eta* within 300 meta-steps and stays there
    assert saved["nonfinite_steps"]["stable"] == 0
    assert res["converged_at"]["stable"] is not None and res["converged_at"]["stable"] <= 300
    assert abs(saved["trajectories"]["stable"][-1] - target) <= 0.01 * target


# -- sweep ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_stable_float32_succeeds_wherever_exact_does(tmp_path):
    """Full default grid of t and eta0, float32 stable against exact-gradient meta-GD."""
    res = _run("sweep", tmp_path, "--config.methods=('stable',)", "--config.dtypes=('float32',)")
    cells = res["cells"]
    assert len(cells) == 2 * 5 * 2
    assert res["stable_float32_matches_exact"] is True
    exact_ok = {
        (c["t"], c["eta0_factor"]) for c in cells if c["method"] == "exact" and c["success"]
    }
    assert {(20, 0.5), (80, 2.4), (320, 2.4)} <= exact_ok  # not a vacuous comparison
    assert "| stable | float32 |" in (tmp_path / "table.md").read_text()
    assert sweep.stable_matches_exact([*cells[:1], {**cells[1], "success": False}]) is (
        not cells[0]["success"]
    )


def test_sweep_autodiff_fails_where_values_overflow(tmp_path):
    res = _run(
        "sweep",
        tmp_path,
        "--config.steps=(80,)",
        "--config.exact=false",
        "--config.meta_steps=300",
        "--config.window=50",
    )
    cell = {(c["method"], c["dtype"], c["eta0_factor"]): c for c in res["cells"]}
    # above 2/L: |1 - eta0 L|^160 = 3.8^160 overflows float32 but not float64
    for m in ("autodiff", "forward"):
        assert cell[(m, "float32", 2.4)]["nonfinite_steps"] == 300
        assert not cell[(m, "float32", 2.4)]["success"]
        assert cell[(m, "float64", 2.4)]["nonfinite_steps"] == 0
    for d in ("float32", "float64"):
        assert cell[("stable", d, 2.4)]["success"] and cell[("stable", d, 0.5)]["success"]
    assert res["stable_float32_matches_exact"] is None  # no exact column was run


# -- thm3 -----------------------------------------------------------------------------------
def test_thm3_exponential_vs_bounded(tmp_path):
    res = _run(
        "thm3",
        tmp_path,
        "--config.steps=(1, 50, 200)",
        "--config.dtypes=('float32',)",
    )
    curves = {(c["objective"], c["eta_label"]): c for c in res["curves"]}
    below, above = curves[("last_loss", "1/L")], curves[("last_loss", "2.4/L")]
    checks = res["checks"]
    assert checks["last_loss eta=1/L: exact obeys Theorem 3 bound"]
    assert checks["last_loss eta=2.4/L: exact obeys Theorem 3 bound"]
    assert below["exact_log10"][-1] < below["exact_log10"][0] - 5  # vanishes
    assert above["exact_log10"][-1] > above["exact_log10"][0] + 50  # explodes
    for label in ("1/L", "2.4/L"):
        log_curve = curves[("log_loss", label)]
        assert checks[f"log_loss eta={label}: max |F'| <= Claim 2 bound"]
        # stable float32 matches the exact log-loss meta-gradient at every t
        exact = 10.0 ** np.asarray(log_curve["exact_log10"])
        np.testing.assert_allclose(np.abs(log_curve["stable_float32"]), exact, rtol=1e-4)
        assert checks["failures_from_t"][f"log_loss eta={label}"]["stable_float32"] is None
    # float32 autodiff of the log-loss already fails at t = 200 above 2/L
    assert checks["failures_from_t"]["log_loss eta=2.4/L"]["autodiff_float32"] == 200
    assert (
        thm3.fails_from({"t": [1, 2], "autodiff": [0.5, 0.0], "exact_log10": [0, -3]}, "autodiff")
        == 2
    )
