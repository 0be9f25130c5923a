"""l2l_jax.xla: compiler options on CPU, and its jit usable inside other transformations."""

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import xla


def test_options_per_backend(monkeypatch):
    assert xla.options("cpu") == {"xla_cpu_prefer_vector_width": 512}
    assert xla.options("gpu") is None and xla.options("tpu") is None
    monkeypatch.setenv("L2L_JAX_XLA_DEFAULTS", "1")
    assert xla.options("cpu") is None


def test_jit_works_top_level_nested_and_lowered():
    f = xla.jit(lambda x: jnp.sin(x) * 2)
    x = jnp.linspace(0.0, 1.0, 5)
    expected = np.sin(np.linspace(0.0, 1.0, 5)) * 2
    np.testing.assert_allclose(f(x), expected, rtol=1e-6)
    # inside jit, vmap and grad (JAX refuses compiler options on nested jits)
    np.testing.assert_allclose(jax.jit(lambda x: f(x) + 1)(x), expected + 1, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(f)(x), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: f(x).sum())(x), 2 * np.cos(x), rtol=1e-6)
    assert "sine" in f.lower(x).as_text()
