"""Evaluating inner optimizers on a task: accuracy curves over independent runs, tuned SGD.

Wang et al. (2021), Sec. 5 (Figures 4-5): every optimizer (tuned SGD, the learned optimizer
meta-trained by train-by-train or train-by-validation) trains the MNIST MLP in ``runs``
independent runs; we record training and test accuracy at evaluation points along the
inner run and report their mean and spread over the runs.

- :func:`evaluate`: the runs as one jitted ``vmap``; each run is a
  :func:`~l2l_jax.inner.rollout.rollout` recording the metrics every ``eval_every`` steps.
- :func:`tune_learning_rate` (and :func:`tune_sgd`): a step size grid-searched against the
  validation loss with the library's one tuner (:mod:`l2l_jax.inner.tuning`).
- :func:`plot_curves`: train and test accuracy curves (mean line, min-max band).

Run ``i`` of ``evaluate(task, optimizer, hparams, steps, key=key)`` is reproducible with
:func:`l2l_jax.inner.unroll`::

    init_key, data_key = run_keys(key, runs)[i]
    inner.unroll(task.with_init_key(init_key), optimizer, hparams, steps, key=data_key)

(same initialization, same minibatch indices, same final parameters). Every metric, and
``EvalResult.params``, is taken at the optimizer's evaluation parameters
(:func:`~l2l_jax.inner.optimizers.evaluation_params_of`): the iterate itself, except for an
optimizer that declares others (Schedule-Free's averaged iterate, ``from_optax(...,
eval_params=optax.contrib.schedule_free_eval_params)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import inner, input_checks, xla
from l2l_jax.inner import tuning
from l2l_jax.inner.optimizers import HParams, InnerOptimizer, evaluation_params_of
from l2l_jax.inner.rollout import record_points, rollout_from_keys

Array = jax.Array
METRICS = ("train_loss", "train_acc", "valid_loss", "valid_acc", "test_acc", "test_acc_noisy")
SPREAD = "min/max over runs (std: population standard deviation over runs)"


@chex.dataclass(frozen=True)
class EvalResult:
    """Metrics of ``runs`` independent inner trainings at ``n_evals`` evaluation points.

    Attributes:
      steps: ``(n_evals,)`` inner step of each evaluation point: ``0, e, 2e, ...`` and the
        last step (``e = eval_every``).
      train_loss: ``(runs, n_evals)`` mean cross-entropy on all training rows of the task.
      train_acc: ``(runs, n_evals)`` accuracy on all training rows (their labels, noisy
        ones included).
      valid_loss, valid_acc: ``(runs, n_evals)`` on the task's validation rows, ``None``
        when the task has none.
      test_acc: ``(runs, n_evals)`` on the given test set, ``None`` without one.
      test_acc_noisy: ``(runs, n_evals)`` on the test images against ``noisy_test_labels``
        (the paper's code noised its test labels at the training rate), ``None`` without.
      params: the final evaluation parameters of every run (leaves with a leading ``runs``
        axis): the final iterate, or the optimizer's ``evaluation_params`` of it.
    """

    steps: Array
    train_loss: Array
    train_acc: Array
    params: chex.ArrayTree
    valid_loss: Array | None = None
    valid_acc: Array | None = None
    test_acc: Array | None = None
    test_acc_noisy: Array | None = None

    @property
    def runs(self) -> int:
        return int(self.train_acc.shape[0])

    def metric(self, name: str) -> np.ndarray:
        """``(runs, n_evals)`` values of metric ``name`` (one of :data:`METRICS`)."""
        if name not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {name!r}.")
        values = getattr(self, name)
        if values is None:
            raise ValueError(f"{name} was not recorded (no validation rows or no test set).")
        return np.asarray(values, np.float64)

    def mean(self, name: str) -> np.ndarray:
        """``(n_evals,)`` mean of ``name`` over the runs."""
        return self.metric(name).mean(axis=0)

    def std(self, name: str) -> np.ndarray:
        """``(n_evals,)`` population standard deviation of ``name`` over the runs."""
        return self.metric(name).std(axis=0)

    def spread(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(min, max)`` of ``name`` over the runs, each ``(n_evals,)`` (the plotted band)."""
        values = self.metric(name)
        return values.min(axis=0), values.max(axis=0)

    def summary(self, name: str) -> dict[str, Any]:
        """Mean/std/min/max of ``name`` per evaluation step, and ``final`` (the last step)."""
        lo, hi = self.spread(name)
        per_step = {"mean": self.mean(name), "std": self.std(name), "min": lo, "max": hi}
        final = {k: float(v[-1]) for k, v in per_step.items()}
        final["runs"] = self.metric(name)[:, -1]
        return {**per_step, "final": final}

    def to_json(self) -> dict[str, Any]:
        """JSON-serializable summary (non-finite numbers become ``None``).

        ``{"steps": [...], "runs": R, "spread": SPREAD, "<metric>": {"mean": [...],
        "std": [...], "min": [...], "max": [...], "final": {"mean", "std", "min", "max",
        "runs": [R values]}}}`` for every recorded metric of :data:`METRICS`; the lists are
        per evaluation step (aligned with ``steps``).
        """
        from l2l_jax.reporting import jsonable

        out: dict[str, Any] = {"steps": self.steps, "runs": self.runs, "spread": SPREAD}
        for name in METRICS:
            if getattr(self, name) is not None:
                out[name] = self.summary(name)
        return jsonable(out)


# -- evaluation -------------------------------------------------------------------------------


def run_keys(key: chex.PRNGKey, runs: int) -> Array:
    """``(runs, 2)`` keys: ``[i, 0]`` initializes run ``i``, ``[i, 1]`` draws its minibatches."""
    return jax.vmap(jax.random.split)(jax.random.split(key, runs))


def evaluate(
    task,
    optimizer: InnerOptimizer,
    hparams: HParams,
    steps: int,
    *,
    key: chex.PRNGKey,
    runs: int = 5,
    eval_every: int | None = None,
    test_images=None,
    test_labels=None,
    noisy_test_labels=None,
) -> EvalResult:
    """Train ``task`` with ``optimizer`` in ``runs`` independent runs and record the metrics.

    ``task`` is one task, or ``runs`` tasks stacked on a leading axis (``task.batch_shape
    == (runs,)``, e.g. fresh draws of a :class:`~l2l_jax.tasks.mnist_family.MnistFamily`
    materialized with ``jax.vmap``): run ``i`` then trains task ``i``.

    Run ``i`` starts from ``task.with_init_key(run_keys(key, runs)[i, 0])`` and draws its
    minibatches from ``run_keys(key, runs)[i, 1]`` exactly as :func:`l2l_jax.inner.unroll`
    does (see the module docstring). The runs are one jitted ``vmap``; each is a
    ``lax.scan`` over chunks of ``eval_every`` steps (default: about 20 evaluation points),
    with the training loss and accuracy, the validation ones (if the task has validation
    rows) and the test accuracy (if ``test_images``/``test_labels`` are given) computed at
    step 0, after every chunk and at the last step. ``hparams``: a scalar step size for
    ``inner.sgd``, the meta-parameters for ``learned.inner_optimizer``.

    Every metric is computed at the evaluation parameters
    ``inner.optimizers.evaluation_params_of(optimizer, w, opt_state)``: ``w`` itself, or
    e.g. Schedule-Free's averaged iterate ``x`` rather than the iterate ``y`` its gradients
    are taken at (Defazio et al. 2024) when ``optimizer`` declares ``eval_params``.

    The task must provide ``with_init_key``, ``loss``, ``batch_loss``, ``accuracy`` and, for
    validation metrics, ``num_valid``/``valid_loss``/``valid_images``/``valid_labels``
    (:class:`l2l_jax.tasks.MnistMLP` does).
    """
    steps = _positive_int("steps", steps)
    runs = _positive_int("runs", runs)
    eval_every = max(1, math.ceil(steps / 20)) if eval_every is None else eval_every
    eval_every = _positive_int("eval_every", eval_every)
    input_checks.prng_key("key", key)
    if (test_images is None) != (test_labels is None):
        raise ValueError("pass both test_images and test_labels, or neither.")
    batch = tuple(getattr(task, "batch_shape", ()))
    if batch not in ((), (runs,)):
        raise ValueError(
            f"evaluate takes one task or one per run (batch_shape ({runs},)), got {task!r}."
        )
    if optimizer.batch_size is not None and not getattr(task, "num_examples", None):
        raise ValueError(f"inner.{optimizer.name} samples minibatches, but {task!r} has no rows.")
    optimizer.as_dict(hparams)  # readable errors before tracing
    if test_images is not None:
        test_images = jnp.asarray(test_images, task.dtype)
        test_labels = jnp.asarray(test_labels, jnp.int32)
    if noisy_test_labels is not None:
        if test_labels is None or np.shape(noisy_test_labels) != np.shape(test_labels):
            raise ValueError("noisy_test_labels needs test_labels of the same shape.")
        test_labels = jnp.stack([test_labels, jnp.asarray(noisy_test_labels, jnp.int32)])
    fn = _evaluate_fn(optimizer, steps, eval_every, bool(batch))
    params, metrics = fn(task, hparams, run_keys(key, runs), test_images, test_labels)
    return EvalResult(
        steps=jnp.asarray(record_points(steps, eval_every)),
        params=params,
        **{name: metrics.get(name) for name in METRICS},
    )


def _evaluate_fn(optimizer, steps: int, eval_every: int, per_run_task: bool) -> Callable:
    """The jitted ``(task, hparams, keys, test_x, test_y) -> (params, metrics)``
    (:func:`l2l_jax.xla.cached` on the optimizer and the static arguments)."""

    def one_run(task, hparams, keys, test_x, test_y):
        def record(run_task, w, opt_state):
            params = evaluation_params_of(optimizer, w, opt_state)
            return _metrics(run_task, params, test_x, test_y)

        (w, opt_state), metrics = rollout_from_keys(
            task, optimizer, hparams, steps, keys, record=record, every=eval_every
        )
        return evaluation_params_of(optimizer, w, opt_state), metrics

    task_axis = 0 if per_run_task else None
    build = lambda: xla.jit(jax.vmap(one_run, in_axes=(task_axis, None, 0, None, None)))
    return xla.cached(("evaluation.evaluate", optimizer, steps, eval_every, per_run_task), build)


def _metrics(task, params, test_x, test_y) -> dict[str, Array]:
    """Scalar metrics of ``params``: train (and validation, test) loss/accuracy."""
    out = {
        "train_loss": task.loss(params),
        "train_acc": task.accuracy(params, task.train_images, task.train_labels),
    }
    if getattr(task, "num_valid", 0):
        out["valid_loss"] = task.valid_loss(params)
        out["valid_acc"] = task.accuracy(params, task.valid_images, task.valid_labels)
    if test_x is not None:
        if test_y.ndim == 2:  # clean and noisy labels of the same images
            predicted = jnp.argmax(task.logits(params, test_x), axis=-1)
            hits = (predicted == test_y).astype(jnp.float32)
            out["test_acc"], out["test_acc_noisy"] = jnp.mean(hits[0]), jnp.mean(hits[1])
        else:
            out["test_acc"] = task.accuracy(params, test_x, test_y)
    return out


# -- SGD baseline --------------------------------------------------------------------------------


def tune_sgd(
    task,
    lrs: Sequence[float],
    steps: int,
    *,
    key: chex.PRNGKey,
    batch_size: int = 32,
    runs: int = 5,
) -> tuple[float, dict[str, Any]]:
    """SGD's step size from the grid ``lrs``: :func:`tune_learning_rate` of
    ``inner.sgd(batch_size)``."""
    batch_size = _positive_int("batch_size", batch_size)
    return tune_learning_rate(task, _sgd(batch_size), lrs, steps, key=key, runs=runs)


def _sgd(batch_size: int) -> InnerOptimizer:
    """One ``inner.sgd`` per batch size (:func:`l2l_jax.xla.cached`), so its compiled
    tuning run is reused."""
    return xla.cached(("inner.sgd", batch_size), lambda: inner.sgd(batch_size=batch_size))


def tune_learning_rate(
    task,
    optimizer: InnerOptimizer,
    lrs: Sequence[float],
    steps: int,
    *,
    key: chex.PRNGKey,
    runs: int = 5,
) -> tuple[float, dict[str, Any]]:
    """The step size from the grid ``lrs`` with the lowest final validation loss.

    ``optimizer`` has the one hyperparameter ``learning_rate`` (``inner.sgd``, or e.g.
    ``inner.from_optax(optax.adam, ("learning_rate",), batch_size=32)``). Every ``lr``
    trains ``runs`` runs of ``inner.unroll(task.with_init_key(...), optimizer, lr,
    steps, key=...)`` (the keys of :func:`run_keys`, as in :func:`evaluate`), all in one
    jitted ``vmap`` over ``lrs`` and runs. The score of ``lr`` is the mean over runs of
    ``task.valid_loss`` at the last step; a non-finite mean (a diverging run) scores
    ``+inf``. Ties go to the first ``lr`` of the grid (:func:`l2l_jax.inner.tuning.choice`).

    Returns ``(best_lr, table)``; ``table`` holds ``lrs``, ``valid_loss`` (``(len(lrs),
    runs)``, raw), ``score`` (``(len(lrs),)``, the criterion), ``diverged``, ``best_lr``,
    ``best_index``, ``steps``, ``runs``, ``optimizer`` and ``batch_size`` (NumPy arrays and
    numbers; ``reporting.jsonable`` turns ``inf`` into ``null``).
    """
    steps = _positive_int("steps", steps)
    runs = _positive_int("runs", runs)
    input_checks.prng_key("key", key)
    if optimizer.hparam_names != ("learning_rate",):
        raise ValueError(
            f"tune_learning_rate needs an optimizer whose only hyperparameter is the "
            f"learning_rate; inner.{optimizer.name} has {optimizer.hparam_names}."
        )
    if not getattr(task, "num_valid", 0):
        raise ValueError(
            "tuning selects by validation loss, but the task has no validation rows: "
            "build it with MnistMLP.from_data(..., n_valid=N)."
        )

    def score(lr, task, keys):  # (runs,) final validation losses at step size lr
        def one(k):
            run = inner.unroll(task.with_init_key(k[0]), optimizer, lr, steps, key=k[1])
            return task.valid_loss(run.params)

        return jax.vmap(one)(keys)

    found = tuning.grid_search(
        score,
        lrs,
        task,
        run_keys(key, runs),
        dtype=task.dtype,
        key=("evaluation.tune", optimizer, steps),
    )
    valid_loss = found.pop("values")
    table = {
        "optimizer": optimizer.name,
        **found,
        "valid_loss": valid_loss,
        "steps": steps,
        "runs": runs,
        "batch_size": optimizer.batch_size,
    }
    return table["best_lr"], table


# -- figures ----------------------------------------------------------------------------------


def plot_curves(
    results: Mapping[str, EvalResult],
    path: str | Path,
    *,
    metrics: Sequence[str] = ("train_acc", "test_acc"),
    title: str | None = None,
) -> str:
    """One panel per metric (default: train and test accuracy) over inner steps.

    Each optimizer of ``results`` (label -> :class:`EvalResult`) is drawn as its mean over
    runs with a min-max band. Metrics an optimizer did not record are skipped. Saves a PNG
    at ``path`` and returns its file name.
    """
    from l2l_jax.reporting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), squeeze=False)
    for ax, name in zip(axes[0], metrics, strict=True):
        for label, result in results.items():
            if getattr(result, name) is None:
                continue
            steps = np.asarray(result.steps)
            (line,) = ax.plot(steps, result.mean(name), label=label)
            lo, hi = result.spread(name)
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("inner step")
        ax.set_ylabel(name.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return save_figure(fig, Path(path))


def _positive_int(name: str, x) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1:
        raise ValueError(f"{name} must be a positive integer, got {x!r}.")
    return int(x)


__all__ = [
    "METRICS",
    "SPREAD",
    "EvalResult",
    "evaluate",
    "plot_curves",
    "run_keys",
    "tune_sgd",
]
