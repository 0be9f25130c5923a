"""Towers of hyper-optimizers on the MNIST MLP (Chandra et al. 2022).

SGD and Adam as towers of height 0 (plain optax), 1, 2, 3 (:func:`l2l_jax.hyper.tower`),
trained from initial step sizes ``lr0`` spanning ``[1e-6, 1]``: final test accuracy
against ``lr0`` per height (the paper's sensitivity plot) and the learning-rate
trajectories. The claim checked: over the ``lr0`` sweep, the spread (max - min) of the
final test accuracy shrinks from height 0 to height 2.

Adam's update is multiplied, at every height including plain Adam, by the untuned linear
warm-up factor ``min(1, t / 2000)`` of Ma & Yarats (2021) (``2000 = 2 / (1 - b2)``;
:func:`l2l_jax.hyper.with_warmup`, ``cfg.warmup_steps``): without it Adam's first update,
taken at ``lr0`` before any hypergradient exists, moves every weight by about ``lr0`` and
kills the ReLU network for ``lr0 >= 0.1`` at every height. The same sweep without warm-up
is still run and reported as a labelled reference (``cfg.no_warmup_reference``), outside
the acceptance check.

Per (variant, height) the whole sweep is one jitted function: a ``lax.scan`` over the
training steps, ``vmap``-ed over ``lr0`` and over seeds (each seed: its own
initialization and minibatch order). The state is built by ``tx.init`` and its base
learning rate then overwritten with ``lr0`` (``state.raw["learning_rate"] = log lr0`` for
a tower, ``state.hyperparams["learning_rate"] = lr0`` for plain ``inject_hyperparams``),
which is what makes ``lr0`` a vmappable array rather than a compile-time constant.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from experiments import common
from l2l_jax import hyper, tasks
from l2l_jax.data import mnist as mnist_data
from l2l_jax.tasks import mnist as mnist_task

PAGE = "experiments/towers.md"  # the documentation page (experiments/registry.py)
GROUP = "quick"
ORDER = 140

FACTORIES = {"sgd": optax.sgd, "adam": optax.adam}
LABELS = {"sgd": "SGD", "adam": "Adam"}


# -- optimizers -----------------------------------------------------------------------------
def _factory(name: str):
    if name not in FACTORIES:
        raise ValueError(f"optimizer must be one of {tuple(FACTORIES)}, got {name!r}.")
    return FACTORIES[name]


def stack_name(base: str, height: int, hyper_optimizers) -> str:
    """The paper's leftmost-first name, e.g. ``"SGD/Adam/SGD"`` for height 2."""
    return "/".join(LABELS[n] for n in (base, *hyper_optimizers[:height]))


def make_optimizer(
    base: str,
    height: int,
    hyper_optimizers,
    hyper_lrs,
    lr0: float = 1.0,
    warmup_steps: int = 0,
) -> optax.GradientTransformation:
    """``base`` with its learning rate tuned by a tower of ``height`` hyper-optimizers.

    Height 0: ``optax.inject_hyperparams(base)(learning_rate=lr0)`` (plain optax, the
    learning rate readable and replaceable in the state). Height ``h >= 1``: the
    ``(base, lr0)`` level, then levels ``hyper_optimizers[:h-1]`` whose step sizes
    ``hyper_lrs[:h-1]`` are themselves learned, then the fixed
    ``hyper_optimizers[h-1](hyper_lrs[h-1])``. ``warmup_steps > 0`` multiplies the base
    update (only the base level's) by ``min(1, t / warmup_steps)`` at every height
    (:func:`l2l_jax.hyper.with_warmup`, Ma & Yarats 2021), inside the differentiated
    update, so the hypergradient is that of the step actually taken.
    """
    if not 0 <= height <= len(hyper_optimizers) or len(hyper_lrs) != len(hyper_optimizers):
        raise ValueError(
            f"height must be in 0..{len(hyper_optimizers)} (one hyper-optimizer per level) "
            f"and hyper_lrs match hyper_optimizers; got height {height}, "
            f"{tuple(hyper_optimizers)}, {tuple(hyper_lrs)}."
        )
    factory = hyper.with_warmup(_factory(base), warmup_steps)
    if height == 0:
        return optax.inject_hyperparams(factory)(learning_rate=lr0)
    levels = [(factory, {"learning_rate": lr0})]
    for name, lr in zip(hyper_optimizers[: height - 1], hyper_lrs[: height - 1], strict=True):
        levels.append((_factory(name), {"learning_rate": float(lr)}))
    top = _factory(hyper_optimizers[height - 1])(float(hyper_lrs[height - 1]))
    return hyper.tower(*levels, top)


def init_state(tx, params, lr0, height: int):
    """``tx.init(params)`` with the base learning rate set to ``lr0`` (may be traced)."""
    state = tx.init(params)
    if height == 0:
        lr = jnp.asarray(lr0, state.hyperparams["learning_rate"].dtype)
        return state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
    raw = jnp.log(jnp.asarray(lr0, state.raw["learning_rate"].dtype))
    return state._replace(raw={**state.raw, "learning_rate": raw})


def learning_rate(state, height: int):
    """The base learning rate the state will use next (height 0: the injected value)."""
    if height == 0:
        return state.hyperparams["learning_rate"]
    return hyper.hyperparams(state)["learning_rate"]


class Variant(NamedTuple):
    """One sweep over heights: a base optimizer, its warm-up, and whether it is a
    labelled reference (reported, but outside the acceptance check)."""

    name: str
    base: str
    warmup_steps: int
    reference: bool = False


def variants(cfg) -> list[Variant]:
    """The sweeps of ``cfg``: each of ``cfg.optimizers`` with its ``cfg.warmup_steps``
    (0 if not listed) and, if ``cfg.no_warmup_reference``, each warmed-up optimizer again
    without warm-up, named ``"<base>_no_warmup"`` and marked as a reference."""
    out = [Variant(b, b, int(cfg.warmup_steps.get(b, 0))) for b in cfg.optimizers]
    if cfg.no_warmup_reference:
        out += [Variant(f"{v.base}_no_warmup", v.base, 0, True) for v in out if v.warmup_steps]
    return out


def warmup_label(row: dict) -> str:
    """Table cell for a row's warm-up."""
    if row["warmup_steps"]:
        return f"linear, {row['warmup_steps']} steps"
    return "none (reference)" if row["reference"] else "none"


# -- data and training ------------------------------------------------------------------------
def batch_indices(key, n: int, batch_size: int, steps: int) -> jax.Array:
    """``(steps, batch_size)`` row indices: epochs of fresh permutations of ``0..n-1``,
    each cut into ``n // batch_size`` minibatches (the remainder is dropped)."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size = {batch_size} is larger than the {n} training rows.")
    epochs = -(-steps // per_epoch)
    keys = jax.random.split(key, epochs)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n)[: per_epoch * batch_size])(keys)
    return perms.reshape(epochs * per_epoch, batch_size)[:steps].astype(jnp.int32)


def seed_keys(seed: int, num_seeds: int) -> tuple[jax.Array, jax.Array]:
    """Per run seed ``s``: an initialization key and a minibatch-order key."""
    keys = jax.vmap(lambda s: jax.random.split(jax.random.fold_in(jax.random.key(seed), s)))(
        jnp.arange(num_seeds)
    )
    return keys[:, 0], keys[:, 1]


def train(tx, height: int, task: tasks.MnistMLP, params, lr0, indices):
    """One run: ``lax.scan`` over the rows of ``indices``; returns the final parameters,
    the learning rate used at every step and the minibatch losses."""
    state = init_state(tx, params, lr0, height)

    def body(carry, idx):
        p, s = carry
        loss, g = jax.value_and_grad(task.batch_loss)(p, idx)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), (learning_rate(s, height), loss)

    (params, _), (lrs, losses) = jax.lax.scan(body, (params, state), indices)
    return params, lrs, losses


def sweep(tx, height: int, task, test_images, test_labels, lr0s, init_keys, indices):
    """All ``(seed, lr0)`` runs of one optimizer as one jitted vmap; arrays ``(S, L, ...)``.

    The task and the test set are arguments of the jitted function, not constants baked
    into it (the MNIST images would be folded into the compiled program)."""

    def one(task, test_images, test_labels, lr0, key, idx):
        params, lrs, losses = train(tx, height, task, task.init_params(key), lr0, idx)
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
        return {
            "test_accuracy": mnist_task.accuracy(params, test_images, test_labels),
            "train_loss": task.loss(params),
            "finite": finite,
            "lr": lrs,
            "batch_loss": losses,
        }

    data = (None, None, None)
    runs = jax.vmap(jax.vmap(one, in_axes=(*data, 0, None, None)), in_axes=(*data, None, 0, 0))
    return jax.jit(runs)(task, test_images, test_labels, lr0s, init_keys, indices)


def lr0_grid(cfg) -> np.ndarray:
    return np.geomspace(cfg.lr0_min, cfg.lr0_max, cfg.lr0_count)


def load_task(cfg) -> tuple[tasks.MnistMLP, mnist_data.MnistData]:
    data = mnist_data.load(cfg.source)
    task = tasks.MnistMLP.from_data(
        data, n_train=cfg.n_train or None, key=jax.random.key(cfg.seed), sizes=tuple(cfg.sizes)
    )
    return task, data


# -- the experiment ---------------------------------------------------------------------------
def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict:
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task, data = load_task(cfg)
    test_x, test_y = jnp.asarray(data.test_images), jnp.asarray(data.test_labels)
    lr0s = lr0_grid(cfg)
    init_keys, batch_keys = seed_keys(cfg.seed, cfg.num_seeds)
    indices = jax.vmap(lambda k: batch_indices(k, task.num_examples, cfg.batch_size, cfg.steps))(
        batch_keys
    )
    every = max(1, int(cfg.record_every))
    hyper_opts, hyper_lrs = tuple(cfg.hyper_optimizers), tuple(cfg.hyper_lrs)
    rows = []
    sweeps = variants(cfg)
    combos = [(v, h) for v in sweeps for h in cfg.heights]
    for variant, height in tqdm(combos, desc="towers", disable=not progress):
        t0 = time.perf_counter()
        base = variant.base
        tx = make_optimizer(base, height, hyper_opts, hyper_lrs, warmup_steps=variant.warmup_steps)
        res = sweep(
            tx, height, task, test_x, test_y, jnp.asarray(lr0s, task.dtype), init_keys, indices
        )
        res = jax.tree.map(np.asarray, jax.block_until_ready(res))
        acc = res["test_accuracy"].astype(np.float64)  # (seeds, lr0)
        mean_acc = acc.mean(axis=0)
        lr_mean = np.exp(np.log(res["lr"].astype(np.float64)).mean(axis=0))  # geometric
        rows.append(
            {
                "variant": variant.name,
                "optimizer": base,
                "warmup_steps": variant.warmup_steps,
                "reference": variant.reference,
                "height": height,
                "stack": stack_name(base, height, hyper_opts),
                "lr0": lr0s,
                "test_accuracy": mean_acc,
                "test_accuracy_seeds": acc.T,
                "train_loss": res["train_loss"].astype(np.float64).mean(axis=0),
                "train_loss_seeds": res["train_loss"].T,
                "diverged_runs": (~res["finite"]).sum(axis=0),
                "final_lr": lr_mean[:, -1],
                "lr_steps": np.arange(every - 1, cfg.steps, every) + 1,
                "lr_trajectory": lr_mean[:, every - 1 :: every],
                "last_batch_loss": res["batch_loss"][..., -every:].mean(axis=(0, 2)),
                "spread": float(mean_acc.max() - mean_acc.min()),
                "best_accuracy": float(mean_acc.max()),
                "worst_accuracy": float(mean_acc.min()),
                "seconds": time.perf_counter() - t0,
            }
        )
    checks = make_checks(rows)
    results = {
        "experiment": "towers",
        "config": cfg.to_dict(),
        "environment": common.environment(),
        "task": task.info,
        "settings": {
            "optimizers": list(cfg.optimizers),
            "heights": list(cfg.heights),
            "stacks": {f"{r['variant']}/{r['height']}": r["stack"] for r in rows},
            "variants": [v._asdict() for v in sweeps],
            "warmup": (
                "base update times min(1, t / warmup_steps) at step t = 1, 2, ..., at every "
                "height including 0 (Ma & Yarats 2021's linear warm-up; their untuned length "
                "for Adam is 2 / (1 - b2) = 2000); variants marked reference are reported "
                "outside spread_shrinks_height0_to_height2_all"
            ),
            "warmup_factor_at_last_step": {
                v.name: min(1.0, cfg.steps / v.warmup_steps) if v.warmup_steps else 1.0
                for v in sweeps
            },
            "lr0": lr0s,
            "num_seeds": cfg.num_seeds,
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "epochs": cfg.steps * cfg.batch_size / task.num_examples,
            "n_train": task.num_examples,
            "n_test": data.num_test,
            "hyper_optimizers": list(hyper_opts),
            "hyper_lrs": list(hyper_lrs),
            "parametrization": "positive: lr = exp(raw) at every level",
        },
        "rows": rows,
        "spread": {
            v.name: {str(r["height"]): r["spread"] for r in rows if r["variant"] == v.name}
            for v in sweeps
        },
        "checks": checks,
    }
    results["table"] = table(rows, lr0s)
    (out / "table.md").write_text(results["table"] + "\n")
    plt = common.pyplot()
    results["figures"] = [
        common.save_figure(
            sensitivity_figure(plt, rows, cfg, sweeps), out / "towers_sensitivity.png"
        ),
        common.save_figure(trajectory_figure(plt, rows, cfg, sweeps), out / "towers_lr.png"),
    ]
    results["seconds"] = time.perf_counter() - start
    common.write_json(out / "results.json", results)
    return common.jsonable(results)


def make_checks(rows: list[dict]) -> dict:
    """The claim, per variant: spread at height 2 < spread at height 0; with
    the size of the reduction, whether the spread is non-increasing in height and, per
    height, the lr0 whose mean accuracy is below 50% (so a pass carried by a few failing
    lr0 is visible). ``spread_shrinks_height0_to_height2_all`` covers the variants that
    are not references (listed in ``acceptance_variants``); a reference's own checks are
    reported under its name, so a failure there stays visible."""
    checks: dict = {}
    spread = {(r["variant"], r["height"]): r["spread"] for r in rows}
    names = list(dict.fromkeys(r["variant"] for r in rows))
    reference = {r["variant"]: r["reference"] for r in rows}
    verdicts = []
    for name in names:
        if (name, 0) in spread and (name, 2) in spread:
            ok = spread[(name, 2)] < spread[(name, 0)]
            checks[f"{name}_spread_shrinks_height0_to_height2"] = bool(ok)
            checks[f"{name}_spread_reduction_height0_to_height2"] = (
                spread[(name, 0)] - spread[(name, 2)]
            )
            if not reference[name]:
                verdicts.append(ok)
        for r in rows:
            if r["variant"] == name:
                bad = [
                    float(v) for v, a in zip(r["lr0"], r["test_accuracy"], strict=True) if a < 0.5
                ]
                checks[f"{name}_height{r['height']}_lr0_below_50pct_accuracy"] = bad
        heights = sorted(h for (n, h) in spread if n == name)
        values = [spread[(name, h)] for h in heights]
        checks[f"{name}_spread_nonincreasing_with_height"] = bool(
            all(b <= a for a, b in itertools.pairwise(values))
        )
    if verdicts:
        checks["acceptance_variants"] = [n for n in names if not reference[n]]
        checks["spread_shrinks_height0_to_height2_all"] = bool(all(verdicts))
    return checks


# -- outputs ----------------------------------------------------------------------------------
def _lr0_label(v: float) -> str:
    return f"{v:.0e}".replace("e-0", "e-").replace("e+00", "") if v < 1 else f"{v:g}"


def table(rows: list[dict], lr0s) -> str:
    """Markdown: final test accuracy (mean over seeds, %) per lr0, and the spread."""
    head = " | ".join(_lr0_label(v) for v in lr0s)
    lines = [
        f"| stack | height | warm-up | {head} | spread (max − min) |",
        "|---|---:|---|" + "---:|" * len(lr0s) + "---:|",
    ]
    for r in rows:
        cells = " | ".join(
            f"{100 * a:.1f}" + ("†" if d else "")
            for a, d in zip(r["test_accuracy"], r["diverged_runs"], strict=True)
        )
        lines.append(
            f"| {r['stack']} | {r['height']} | {warmup_label(r)} | {cells} "
            f"| **{100 * r['spread']:.1f}** |"
        )
    return "\n".join(lines)


def variant_title(v: Variant) -> str:
    """Panel title: the base optimizer and its warm-up."""
    if v.warmup_steps:
        return f"{LABELS[v.base]} towers, warm-up {v.warmup_steps} steps"
    return f"{LABELS[v.base]} towers, no warm-up" + (" (reference)" if v.reference else "")


def sensitivity_figure(plt, rows: list[dict], cfg, sweeps: list[Variant]):
    """Final test accuracy against lr0 (log x), one line per height, a panel per variant."""
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.2 * len(sweeps), 3.8), squeeze=False)
    for ax, v in zip(axes[0], sweeps, strict=True):
        for r in (r for r in rows if r["variant"] == v.name):
            seeds = np.asarray(r["test_accuracy_seeds"]) * 100
            mean = np.asarray(r["test_accuracy"]) * 100
            err = np.stack([mean - seeds.min(axis=1), seeds.max(axis=1) - mean])
            ax.errorbar(
                r["lr0"],
                mean,
                yerr=err,
                marker="o",
                capsize=2,
                label=f"height {r['height']}: {r['stack']} (spread {100 * r['spread']:.1f})",
            )
        ax.set_xscale("log")
        ax.set(
            xlabel="initial step size lr0",
            ylabel="final test accuracy (%)",
            title=f"{variant_title(v)}\n({cfg.num_seeds} seeds, bars: min-max)",
            ylim=(0, 100),
        )
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="lower center")
    fig.tight_layout()
    return fig


def trajectory_figure(plt, rows: list[dict], cfg, sweeps: list[Variant]):
    """Learning rate against step for a few lr0, a panel per (variant, height); with a
    warm-up, dotted: the learning rate times the warm-up factor (the step taken)."""
    names, heights = [v.name for v in sweeps], list(cfg.heights)
    fig, axes = plt.subplots(
        len(names),
        len(heights),
        figsize=(3.2 * len(heights), 2.7 * len(names)),
        squeeze=False,
        sharey=True,
    )
    for r in rows:
        ax = axes[names.index(r["variant"])][heights.index(r["height"])]
        lr0s = np.asarray(r["lr0"])
        steps = np.asarray(r["lr_steps"])
        picks = sorted({int(np.argmin(np.abs(np.log(lr0s / v)))) for v in cfg.plot_lr0})
        for i in picks:
            (line,) = ax.plot(steps, r["lr_trajectory"][i], label=f"lr0 = {lr0s[i]:.0e}")
            if r["warmup_steps"]:
                factor = np.minimum(1.0, (steps + 1) / r["warmup_steps"])  # next step's
                ax.plot(steps, r["lr_trajectory"][i] * factor, ":", color=line.get_color())
        ax.set_yscale("log")
        note = " (warm-up)" if r["warmup_steps"] else " (no warm-up)" if r["reference"] else ""
        ax.set_title(r["stack"] + note, fontsize=9)
        ax.set_xlabel("step")
        if r["height"] == heights[0]:
            ax.set_ylabel("learning rate")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def summarize(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"towers: MnistMLP {results['config']['sizes']} on {results['task']['source']} "
        f"({s['n_train']} train / {s['n_test']} test), batch {s['batch_size']}, "
        f"{s['steps']} steps ({s['epochs']:.3g} epochs), {s['num_seeds']} seeds, "
        f"hyper-optimizers {s['hyper_optimizers']} with step sizes {s['hyper_lrs']}",
        "warm-up: "
        + ", ".join(
            f"{v['name']}: {v['warmup_steps'] or 'none'}"
            + (" (reference)" if v["reference"] else "")
            for v in s["variants"]
        )
        + f" ({s['warmup']})",
        "final test accuracy (%, mean over seeds; † = some seed diverged):",
        results["table"],
        "",
        "spread (max - min) of final test accuracy over lr0, by height:",
    ]
    for name, by_height in results["spread"].items():
        text = ", ".join(f"h{h}: {100 * v:.1f}" for h, v in by_height.items())
        lines.append(f"  {name}: {text}")
    lines += [f"  {k}: {v}" for k, v in results["checks"].items()]
    lines.append(f"run time: {results['seconds']:.0f} s")
    return "\n".join(lines)


__all__ = [
    "Variant",
    "batch_indices",
    "init_state",
    "learning_rate",
    "make_optimizer",
    "run",
    "summarize",
    "sweep",
    "train",
    "variants",
]
