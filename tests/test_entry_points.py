"""Bad input at the public entry points: a ValueError/TypeError raised where it enters,
naming the field. One row per entry point and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import experiments
from experiments import cli
from l2l_jax import evaluation, inner, input_checks, learned, metagrad, tasks, truncated
from l2l_jax.inner.rollout import rollout

KEY = jax.random.key(0)
H = jnp.eye(2)
W0 = jnp.ones(2)
# NumPy's eigh fails on this one ("Eigenvalues did not converge") rather than returning NaN
NAN_H = jnp.asarray([[2.0, 1.0, 0.0], [1.0, 2.0, jnp.nan], [0.0, jnp.nan, 2.0]])
LSQ = tasks.LeastSquares.sample(KEY, 2, 4, 2, 0.1)
SMALL_CFG = truncated.TruncatedConfig(horizon=2, segment=1, meta_batch=1, eval_batch_size=None)


def _lopt(hidden):
    return learned.MLPLOpt(learned.LOptConfig(hidden_sizes=hidden))


def _nnx(**bad):
    data = {"x": jnp.ones((4, 2)), "y": jnp.zeros((4, 1)), **bad}
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    mse = lambda p, t: jnp.mean((p - t) ** 2)
    valid = {"x_valid": data.pop("x_valid", data["x"]), "y_valid": data.pop("y_valid", data["y"])}
    return tasks.nnx_task(model, mse, data["x"], data["y"], **valid)


def _meta_train(**kwargs):
    args = {"key": KEY, "progress": False, **kwargs}
    return truncated.meta_train(LSQ, _lopt((4,)), SMALL_CFG, 1, **args)


CASES = {
    # (a) finiteness before the eigendecomposition ("Eigenvalues did not converge")
    "Quadratic hessian NaN": (
        lambda: tasks.Quadratic(NAN_H, jnp.ones(3)),
        ValueError,
        "hessian must be finite",
    ),
    "Quadratic factor NaN": (
        lambda: tasks.Quadratic(H, W0, factor=jnp.full((2, 2), jnp.nan)),
        ValueError,
        "factor must be finite",
    ),
    # (d) meta-parameters of another architecture
    "meta_train meta_params": (
        lambda: _meta_train(meta_params=_lopt((8,)).init_meta_params(KEY)),
        ValueError,
        r"meta_params\['.*'\].* has shape .*expects.*hidden_sizes",
    ),
    # (e) an int seed where a key belongs
    "meta_train key int": (lambda: _meta_train(key=0), TypeError, r"key=jax\.random\.key\(0\)"),
    "meta_train key batch": (
        lambda: _meta_train(key=jax.random.split(KEY, 2)),
        ValueError,
        "key must be one PRNG key",
    ),
    # (f) NaN data in an NNX task
    "nnx_task x NaN": (lambda: _nnx(x=jnp.full((4, 2), jnp.nan)), ValueError, "x must be finite"),
    "nnx_task y_valid inf": (
        lambda: _nnx(y_valid=jnp.full((4, 1), jnp.inf)),
        ValueError,
        "y_valid must be finite",
    ),
    # (h) PRNG keys at the other entry points
    "Quadratic.random key": (lambda: tasks.Quadratic.random(0, 2), TypeError, "key must be"),
    "LeastSquares.sample key": (
        lambda: tasks.LeastSquares.sample(0, 2, 4, 2, 0.1),
        TypeError,
        "key must be",
    ),
    "LeastSquares.sample_batch key": (
        lambda: tasks.LeastSquares.sample_batch(jnp.zeros(3), 2, 2, 4, 2, 0.1),
        TypeError,
        "key must be",
    ),
    "inner.unroll key": (
        lambda: inner.unroll(LSQ, inner.sgd(batch_size=1), 0.1, 2, key=7),
        TypeError,
        "key must be",
    ),
    "inner.rollout key": (
        lambda: rollout(LSQ, inner.gd(), 0.1, LSQ.init_params(), 2, key=7, record=lambda w, s: w),
        TypeError,
        "key must be",
    ),
    "evaluation.evaluate key": (
        lambda: evaluation.evaluate(LSQ, inner.sgd(batch_size=1), 0.1, 2, key=7),
        TypeError,
        "key must be",
    ),
    "evaluation.tune_learning_rate key": (
        lambda: evaluation.tune_learning_rate(LSQ, inner.sgd(batch_size=1), [0.1], 2, key=7),
        TypeError,
        "key must be",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_the_field(case):
    call, error, match = CASES[case]
    with pytest.raises(error, match=match):
        call()


def test_prng_key_accepts_typed_and_raw_keys():
    assert input_checks.prng_key("key", KEY) is KEY
    raw = jax.random.PRNGKey(0)
    assert input_checks.prng_key("key", raw) is raw
    batch = jax.random.split(KEY, 3)
    assert input_checks.prng_key("key", batch, batched=True) is batch
    with pytest.raises(TypeError, match=r"seed must be a PRNG key.*jax\.random\.key\(3\)"):
        input_checks.prng_key("seed", np.int64(3))


def test_matching_meta_params_pass():
    lopt = _lopt((4,))
    input_checks.meta_params("meta_params", lopt.init_meta_params(KEY), lopt)
    input_checks.meta_params("meta_params", {"anything": 1.0}, inner.adam())  # no shapes


def test_cli_config_error_is_a_usage_error(tmp_path, capsys):
    """(c) A config that fails TruncatedConfig's consistency check: exit 2, one line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fig4b", "--out", str(tmp_path), "--config.segment=1000"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: segment (K = 1000) must be <= horizon" in err and "Traceback" not in err


def test_cli_does_not_catch_errors_of_the_run(tmp_path, monkeypatch):
    class Failing:
        @staticmethod
        def run(cfg, out, progress=True):
            raise ValueError("from the run")

    monkeypatch.setattr(experiments, "get", lambda name: Failing)
    with pytest.raises(ValueError, match="from the run"):
        cli.main(["fig1", "--out", str(tmp_path)])


def test_meta_objective_names_a_bad_key():
    """``metagrad.meta_objective(key=0)`` is refused where it enters, naming ``key``."""
    task = tasks.Quadratic.random(jax.random.key(0), dim=3, scale=0.5)
    with pytest.raises(TypeError, match=r"key must be a PRNG key, got the int 0"):
        metagrad.meta_objective(task, inner.sgd(), "log_loss", steps=3, key=0)


@pytest.mark.parametrize("entry", ["as_optax", "descent_init"])
def test_learned_entry_points_name_mismatched_meta_params(entry):
    """Meta-parameters of another architecture are refused by name (a ``ValueError``), not
    by a bare ``AssertionError`` from a shape check."""
    lopt = learned.MLPLOpt(learned.LOptConfig(hidden_sizes=(4,)))
    other = learned.MLPLOpt(learned.LOptConfig(hidden_sizes=(8,)))
    wrong = other.init_meta_params(jax.random.key(0))
    call = {
        "as_optax": lambda: learned.as_optax(lopt, wrong),
        "descent_init": lambda: learned.descent_init(lopt, wrong),
    }[entry]
    with pytest.raises(ValueError, match=r"meta_params\[.*has shape \(8,?.*expects"):
        call()
