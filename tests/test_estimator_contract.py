"""The contract of a meta-gradient estimator (:class:`l2l_jax.truncated.Estimator`), checked
for every registered estimator and for the user's estimator of docs/extending.md (its
class is taken from the page's code, so the two cannot drift apart).

What every estimator must do: be hashable (it keys the compiled meta-step) and satisfy the
protocol; keep a state whose arrays all have the meta-batch ``B`` as leading axis (it is
checkpointed and sharded along it) and that keeps its structure, shapes and dtypes from one
meta-step to the next (it is a ``jit`` carry); return a finite scalar meta-loss, a gradient
shaped like the meta-parameters (structure, shapes, dtypes) and the ``train_loss`` and
``resets`` metrics; and meta-train under ``truncated.meta_train``. Where a reference
exists, the gradient agrees with it. (That ES and PES estimate the right gradient is a
statistical property, shown where it is cheap to: tests/test_pes.py, PES against the
full-horizon gradient and TBPTT's and truncated ES's bias; tests/test_truncated.py, ES
against TBPTT's direction.)
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_docs import ROOT, python_blocks  # the docs' own block extraction

from l2l_jax import inner, tasks, truncated

B = 2  # meta-batch
CONFIG = dict(horizon=6, segment=3, meta_batch=B, eval_batch_size=None, meta_lr=1e-2)
TASK = tasks.Quadratic.random(jax.random.key(0), dim=4, scale=0.5)
OPT = inner.momentum(learning_rate=0.05, beta=0.5)
THETA = OPT.hparams()  # {"learning_rate", "momentum"}: a pytree of two float32 scalars
# the B fresh runs of init_state (TBPTT's state is the runs themselves)
RUNS = truncated.init_state(
    jax.random.key(1), TASK, OPT, truncated.TruncatedConfig(**CONFIG), meta_params=THETA
).inner


def doc_estimator(name: str = "ClippedTBPTT") -> type:
    """The class ``name`` as docs/extending.md defines it: the page's block that defines
    it, reduced to its imports and that class (the rest of the block uses names of
    earlier blocks), run in a module of its own."""
    blocks = [b for b in python_blocks((ROOT / "docs/extending.md").read_text()) if name in b]
    assert blocks, f"docs/extending.md no longer defines {name}"
    tree = ast.parse(blocks[0])
    keep = [
        node
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        or (isinstance(node, ast.ClassDef) and node.name == name)
    ]
    module = types.ModuleType("docs_extending_estimator")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(ast.Module(keep, []), "docs/extending.md", "exec"), module.__dict__)
    return getattr(module, name)


ClippedTBPTT = doc_estimator()
ESTIMATORS = [cls() for cls in truncated.ESTIMATORS.values()] + [ClippedTBPTT(max_norm=1e6)]
IDS = [e.name for e in ESTIMATORS]


def shapes(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


@pytest.fixture(scope="module", params=ESTIMATORS, ids=IDS)
def estimated(request):
    """Every estimator on the same runs: ``(estimator, config, state, out, run)``, with
    ``out`` the shapes and dtypes of its ``gradient`` (traced, not compiled) and ``run``
    two meta-steps of ``truncated.meta_train`` (the estimator under ``jit``)."""
    estimator = request.param
    config = truncated.TruncatedConfig(**CONFIG, estimator=estimator)
    state = estimator.init(RUNS, THETA, config)
    gradient = lambda s, k: estimator.gradient(THETA, s, k, TASK, OPT, config)
    out = jax.eval_shape(gradient, state, jax.random.key(2))
    run = truncated.meta_train(
        TASK, OPT, config, 2, key=jax.random.key(3), meta_params=THETA, progress=False
    )
    return estimator, config, state, out, run


def test_is_a_hashable_estimator_with_a_name(estimated):
    estimator = estimated[0]
    assert isinstance(estimator, truncated.Estimator)
    assert isinstance(estimator.name, str) and estimator.name
    twin = type(estimator)(**vars(estimator))  # equal settings: the same compiled program
    assert twin == estimator and hash(twin) == hash(estimator)
    config = truncated.TruncatedConfig(**CONFIG, estimator=estimator)
    assert config.estimator is estimator
    assert hash(config) == hash(truncated.TruncatedConfig(**CONFIG, estimator=twin))


def test_state_keeps_the_meta_batch_axis_and_its_shapes(estimated):
    _, _, state, (_, _, new_state, _), run = estimated
    for tree in (state, new_state, run.state.inner):
        assert all(jnp.shape(leaf)[:1] == (B,) for leaf in jax.tree.leaves(tree))
        assert jax.tree.structure(tree) == jax.tree.structure(state)
        assert shapes(tree) == shapes(state)


def test_gradient_is_shaped_like_the_meta_params(estimated):
    _, _, _, (loss, grad, _, aux), _ = estimated
    assert loss.shape == () and jnp.issubdtype(loss.dtype, jnp.floating)
    assert jax.tree.structure(grad) == jax.tree.structure(THETA)
    assert shapes(grad) == shapes(THETA)
    assert {"train_loss", "resets"} <= set(aux) and aux["train_loss"].shape == ()
    assert aux["resets"].shape == () and jnp.issubdtype(aux["resets"].dtype, jnp.integer)


def test_meta_trains_two_steps_with_finite_gradients(estimated):
    run = estimated[4]
    assert [m["step"] for m in run.metrics] == [1, 2] and run.nonfinite_count == 0
    for m in run.metrics:
        assert np.isfinite(m["meta_loss"]) and np.isfinite(m["train_loss"]) and m["resets"] >= 0
        assert np.isfinite(m["grad_norm"]) and m["grad_norm"] > 0
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(run.meta_params), jax.tree.leaves(THETA), strict=True)
    ]
    assert all(moved)


@functools.cache
def reference_tbptt() -> tuple[float, chex.ArrayTree]:
    """The meta-batch mean of each run's segment loss, and its gradient as the mean of
    ``jax.grad`` of each run's :func:`truncated.segment_loss`, one run at a time."""
    config = truncated.TruncatedConfig(**CONFIG)
    value_and_grad = jax.value_and_grad(truncated.segment_loss, has_aux=True)
    one = jax.jit(lambda run: value_and_grad(THETA, run, TASK, OPT, config))
    losses, grads = [], []
    for b in range(B):
        run = jax.tree.map(lambda x, b=b: x[b], RUNS)
        (loss, _), grad = one(run)
        losses.append(loss)
        grads.append(grad)
    return float(np.mean(losses)), jax.tree.map(lambda *g: np.mean(g, axis=0), *grads)


@pytest.mark.parametrize("estimator", [truncated.TBPTT(), ClippedTBPTT(max_norm=1e6)], ids=str)
def test_gradient_agrees_with_its_reference(estimator):
    """TBPTT is ``jax.grad`` of the segment loss (float32 rounding of one scan in a
    different order: ``rtol`` 1e-5); the docs' clipped TBPTT equals it where no run's
    gradient reaches ``max_norm``, and has norm at most ``max_norm`` where each does. ES
    and PES: module docstring."""
    config = truncated.TruncatedConfig(**CONFIG, estimator=estimator)
    gradient = jax.jit(type(estimator).gradient, static_argnums=(0, 5, 6))
    loss, grad, _, _ = gradient(estimator, THETA, RUNS, None, TASK, OPT, config)
    ref_loss, ref_grad = reference_tbptt()
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for g, r in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)
    if isinstance(estimator, ClippedTBPTT):
        assert optax.tree.norm(ref_grad) < estimator.max_norm  # the clip did not bind
        tight = ClippedTBPTT(max_norm=1e-3 * float(optax.tree.norm(ref_grad)))
        _, clipped, _, _ = gradient(tight, THETA, RUNS, None, TASK, OPT, config)
        assert optax.tree.norm(clipped) <= tight.max_norm * (1 + 1e-5)


def test_registry_names_resolve_to_default_objects():
    """A name of the registry is its class's default object, in the config and back from
    its ``to_dict`` (what checkpoints store)."""
    for name, cls in truncated.ESTIMATORS.items():
        config = truncated.TruncatedConfig(**CONFIG, estimator=name)
        assert config.estimator == cls() and config.estimator.name == name
        assert truncated.TruncatedConfig(**config.to_dict()) == config
    names = re.escape(str(tuple(truncated.ESTIMATORS)))
    with pytest.raises(ValueError, match=f"estimator must be one of {names}"):
        truncated.TruncatedConfig(estimator="sgd")
    with pytest.raises(TypeError, match="estimator must be a name"):
        truncated.TruncatedConfig(estimator=object())


@pytest.mark.parametrize("cls", [truncated.ES, truncated.PES])
def test_perturbation_settings_are_checked(cls):
    assert cls(sigma=0.03, pairs=2) == cls(sigma=0.03, pairs=2) != cls()
    with pytest.raises(ValueError, match=rf"{cls.__name__}.sigma .* must be a positive number"):
        cls(sigma=0.0)
    with pytest.raises(TypeError, match=rf"{cls.__name__}.pairs .* must be a positive integer"):
        cls(pairs=2.5)
    with pytest.raises(ValueError, match=rf"{cls.__name__}.pairs .* must be a positive integer"):
        cls(pairs=0)
