"""``learned.as_optax`` as users jit it: the meta-parameters reach the compiled
update as arguments, never as constants; a 10^5-parameter model trains; and the docs'
example runs in a process limited to 8 GiB of address space.

Closed over, the meta-parameters would be folded into the compiled update as constants:
XLA's CPU compiler takes over 18 GB to compile that on an AVX-512 CPU.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import learned
from l2l_jax.learned import adapters

ROOT = Path(__file__).resolve().parents[1]
_CONSTANT = re.compile(r"stablehlo\.constant dense<.*?> : tensor<([^>]*)>")
_LOPTS = {"mlp": learned.MLPLOpt(), "nominal": learned.NominalLOpt()}


def _constant_sizes(stablehlo: str) -> list[int]:
    """Element counts of the ``stablehlo.constant`` tensors of a lowered program."""
    sizes = []
    for type_ in _CONSTANT.findall(stablehlo):
        dims = type_.split("x")[:-1]  # "31x32xf32" -> ["31", "32"]; "f32" -> []
        sizes.append(math.prod(int(d) for d in dims))
    return sizes


def _mlp_params(key, sizes=(784, 128, 10)):
    """An MLP's weights: 784-128-10 has 101,770 parameters."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {
            "w": jax.random.normal(k, (m, n)) / np.sqrt(m),
            "b": jnp.zeros((n,)),
        }
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def _mlp_loss(params, x, labels):
    h = x
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@pytest.mark.parametrize("kind", sorted(_LOPTS))
def test_jitted_update_takes_meta_params_as_arguments_not_constants(kind):
    lopt = _LOPTS[kind]
    meta_params = lopt.init_meta_params(jax.random.key(0))
    largest = max(math.prod(leaf.shape) for leaf in jax.tree.leaves(meta_params))
    assert largest >= 16  # a meta-parameter leaf no scalar constant could be mistaken for
    tx = learned.as_optax(lopt, meta_params)
    params = {"w": jnp.ones((16, 16)), "b": jnp.ones((3,))}
    state = tx.init(params)
    text = jax.jit(tx.update).lower(params, state, params).as_text()
    sizes = _constant_sizes(text)
    assert sizes, "no constants parsed: the StableHLO format changed, update _CONSTANT"
    assert max(sizes) < largest, f"a constant of {max(sizes)} elements: meta-params baked in"
    # The meta-parameters are among the program's inputs instead.
    n_inputs = len(jax.tree.leaves((params, state, params)))
    assert n_inputs >= len(jax.tree.leaves(meta_params)) + 2 * len(jax.tree.leaves(params))


def test_state_holds_the_meta_params_and_the_optimizer_state():
    lopt = _LOPTS["mlp"]
    meta_params = lopt.init_meta_params(jax.random.key(0))
    tx = learned.as_optax(lopt, meta_params)
    params = {"w": jnp.ones((4, 3))}
    state = tx.init(params)
    assert isinstance(state, adapters.OptaxState)
    assert jax.tree.structure(state.meta_params) == jax.tree.structure(meta_params)
    assert int(state.count) == 0
    _, state = tx.update(params, state, params)
    assert int(state.count) == 1 and state.meta_params is meta_params
    with pytest.raises(TypeError, match=r"tx\.init"):
        tx.update(params, lopt.init(params), params)


# A small MLP of the learned optimizer (hidden 4, one decay): compiling the paper's (hidden
# 32, three decays) for four tensor shapes costs ~12 CPU-seconds; the 8 GiB test uses it.
_SMALL = learned.LOptConfig(hidden_sizes=(4,), decays=(0.9,), time_scales=(10.0,), step_mult=0.01)


def test_jitted_update_of_a_1e5_parameter_mlp_is_the_learned_optimizer_and_trains():
    lopt = learned.MLPLOpt(_SMALL)
    init = jax.jit(lambda key: learned.descent_init(lopt, lopt.init_meta_params(key)))
    meta_params = init(jax.random.key(0))  # an Adam-like descent step (RMS step_mult)
    params = _mlp_params(jax.random.key(1))
    assert sum(p.size for p in jax.tree.leaves(params)) == 101_770
    kx, ky = jax.random.split(jax.random.key(2))
    x, labels = jax.random.normal(kx, (128, 784)), jax.random.randint(ky, (128,), 0, 10)
    tx = learned.as_optax(lopt, meta_params)

    @jax.jit
    def step(params, state, x, labels):
        loss, grads = jax.value_and_grad(_mlp_loss)(params, x, labels)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, grads, updates

    state = tx.init(params)
    losses = []
    for i in range(8):
        new_params, state, loss, grads, updates = step(params, state, x, labels)
        if i == 0:  # the adapter's step is the learned optimizer's
            expected, _ = jax.jit(lopt.update)(meta_params, grads, lopt.init(params), params)
            for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * _SMALL.step_mult)
        params = new_params
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and all(
        np.isfinite(p).all() for p in jax.tree.leaves(params)
    )
    assert losses[-1] < 0.9 * losses[0], losses
    assert int(state.count) == 8


_LIMIT = 8 << 30  # bytes of address space (RLIMIT_AS) for the child
_CHILD = """
import resource
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
import re
from pathlib import Path
block = re.findall(r"^```python[ \\t]*\\n(.*?)^```[ \\t]*$", Path({doc!r}).read_text(),
                   re.DOTALL | re.MULTILINE)[0]
namespace = {{"__name__": "docs_example"}}
exec(block, namespace)
losses = namespace["losses"]
assert len(losses) == 20 and losses[-1] < losses[0], losses

import jax, jax.numpy as jnp, numpy as np
from l2l_jax import learned
lopt = learned.MLPLOpt()  # the paper's architecture
tx = learned.as_optax(lopt, lopt.init_meta_params(jax.random.key(0)))
params = {{"w": jax.random.normal(jax.random.key(1), (100_000,))}}
update = jax.jit(tx.update)
state = tx.init(params)
for _ in range(3):
    updates, state = update(params, state, params)  # grads = params: a quadratic
    assert np.isfinite(updates["w"]).all() and np.abs(updates["w"]).max() > 0
assert int(state.count) == 3
print("ok")
"""


def test_docs_example_and_1e5_update_run_under_8_gib_of_address_space():
    """The address-space check, in a child process whose address space is limited
    to 8 GiB (``RLIMIT_AS``, set before JAX is imported): the docs' example, then three
    jitted updates of the paper's learned optimizer on 10^5 parameters."""
    script = _CHILD.format(limit=_LIMIT, doc=str(ROOT / "docs" / "learned_optimizer.md"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
