"""Matmul vs elementwise form of the nominal learned optimizer's per-coordinate MLP.

:class:`l2l_jax.learned.NominalLOpt` applies a tiny MLP (hidden sizes of a few units) to
every coordinate. As matrix products (``"matmul"``), that is an ``(N, F) @ (F, 4)``
product per layer, which XLA on CPU runs as a thin, poorly vectorized matmul; unrolled
into scalar multiply-adds (``"elementwise"``) it is one fused elementwise loop over the
``N`` coordinates. Both forms are timed side by side (interleaved rounds,
:mod:`benchmarks.timing`) on the parameters of the MNIST MLP (784-100-20-10: 80,730
coordinates in 6 tensors), for two jitted functions:

* ``update``: one optimizer step ``lopt.update(meta_params, grads, state, params)``;
* ``meta_grad``: the gradient with respect to the meta-parameters of a scalar function
  of one step's updates (the reverse pass truncated meta-training runs per inner step).

The ratio is matmul time over elementwise time (> 1: elementwise is faster). The default
``NominalConfig.mlp_form`` should be the form with the faster meta-gradient at the default
hidden sizes (4, 4), since that is what meta-training runs at every inner step; this group
measures both, and the results (``benchmarks/results/``, ``docs/performance.md``) say
which one wins where.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import timing
from l2l_jax.learned import nominal
from l2l_jax.tasks.mnist import init_mlp

FORMS = nominal.MLP_FORMS
MODES = ("update", "meta_grad")


@dataclasses.dataclass(frozen=True)
class NominalPreset:
    """The MLP task's layer ``sizes`` (parameter shapes), MLP ``hidden`` sizes to compare,
    timing rounds and per-function budget."""

    sizes: tuple[int, ...] = (784, 100, 20, 10)
    hidden: tuple[tuple[int, ...], ...] = ((4, 4), (32,))
    repeats: int = 15
    budget_s: float = 10.0


PRESETS: dict[str, NominalPreset] = {
    "cpu-small": NominalPreset(),
    "accelerator": NominalPreset(hidden=((4, 4), (32,), (32, 32))),
    "smoke": NominalPreset(sizes=(16, 4, 3), hidden=((2,),), repeats=2, budget_s=1.0),
}


def num_params(sizes: tuple[int, ...]) -> int:
    """Coordinates of the MLP with layer ``sizes`` (weights and biases)."""
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


def _functions(lopt: nominal.NominalLOpt) -> dict[str, Any]:
    def update(meta_params, grads, state, params):
        return lopt.update(meta_params, grads, state, params)

    def meta_grad(meta_params, grads, state, params):
        def scalar(mp):
            updates, _ = lopt.update(mp, grads, state, params)
            return sum(
                jnp.vdot(u, p)
                for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True)
            )

        return jax.grad(scalar)(meta_params)

    return {"update": update, "meta_grad": meta_grad}


def _args(lopt: nominal.NominalLOpt, sizes: tuple[int, ...]) -> tuple:
    """Meta-parameters with every term active, MNIST MLP parameters, gradients and a state
    after one step (non-zero accumulators)."""
    params = init_mlp(jax.random.key(0), sizes)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    grads = jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )
    meta_params = nominal.random_meta_params(lopt, jax.random.key(2))
    _, state = jax.jit(lopt.update)(meta_params, grads, lopt.init(params), params)
    return meta_params, grads, state, params


def measure(preset: NominalPreset, progress: bool = True) -> dict[str, Any]:
    """Compile and time both forms for each hidden size and mode; ratios matmul/elementwise."""
    cells = []
    for hidden in preset.hidden:
        for form in FORMS:
            lopt = nominal.NominalLOpt(nominal.NominalConfig(hidden_sizes=hidden, mlp_form=form))
            args = _args(lopt, preset.sizes)
            for mode, fn in _functions(lopt).items():
                name = f"{'x'.join(map(str, hidden))}/{mode}/{form}"
                cells.append(timing.compile_timed(name, fn, *args))
    check_agreement(cells)
    desc = "time nominal MLP forms"
    timing.time_rounds(cells, preset.repeats, preset.budget_s, desc, progress)
    by_name = {c.name: c for c in cells}
    rows = []
    for c in cells:
        hidden, mode, form = c.name.split("/")
        elementwise = statistics.median(by_name[f"{hidden}/{mode}/elementwise"].times)
        rows.append(
            {
                "hidden": hidden,
                "mode": mode,
                "form": form,
                **c.summary(),
                "ratio_matmul_to_elementwise": statistics.median(
                    by_name[f"{hidden}/{mode}/matmul"].times
                )
                / elementwise,
            }
        )
    settings = dataclasses.asdict(preset) | {"num_params": num_params(preset.sizes)}
    return {"settings": settings, "rows": rows, "default_form": nominal.NominalConfig().mlp_form}


def check_agreement(cells: list[timing.Timed], rtol: float = 1e-4) -> None:
    """The two forms' outputs (from the warm-up calls) agree; else ``AssertionError``."""
    by_name = {c.name: c.out for c in cells}
    for name, out in by_name.items():
        hidden, mode, form = name.split("/")
        if form != "matmul":
            continue
        other = by_name[f"{hidden}/{mode}/elementwise"]
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(other), strict=True):
            scale = float(jnp.max(jnp.abs(b))) or 1.0
            err = float(jnp.max(jnp.abs(a - b))) / scale
            if err > rtol:
                raise AssertionError(
                    f"{name}: matmul and elementwise differ by {err:.2e} (relative)."
                )


def _form_ratio(section: dict[str, Any], hidden: str, mode: str) -> float:
    """The matmul / elementwise time ratio of one (hidden, mode) row."""
    return next(
        r["ratio_matmul_to_elementwise"]
        for r in section["rows"]
        if r["hidden"] == hidden and r["mode"] == mode
    )


def claim(section: dict[str, Any]) -> str:
    """One sentence: the matmul/elementwise time ratio per hidden size and mode."""
    hiddens = dict.fromkeys(r["hidden"] for r in section["rows"])
    parts = [
        f"hidden {h}: update {_form_ratio(section, h, 'update'):.2f}×, meta-gradient "
        f"{_form_ratio(section, h, 'meta_grad'):.2f}×"
        for h in hiddens
    ]
    return (
        "matmul time / elementwise time (> 1: elementwise faster), same run: "
        + "; ".join(parts)
        + f". Default form: {section['default_form']}."
    )


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    """The section: settings, one row per (hidden, mode, form)."""
    s = section["settings"]
    lines = [
        f"{heading} nominal learned optimizer: matmul vs elementwise MLP",
        "",
        f"One jitted step of `learned.NominalLOpt` (`update`) and its reverse pass to the "
        f"meta-parameters (`meta_grad`) on the parameters of the MLP "
        f"{'-'.join(map(str, s['sizes']))} ({s['num_params']:,} coordinates), with the "
        "per-coordinate MLP as matrix products or unrolled into elementwise multiply-adds. "
        "Timed in interleaved rounds in one run; the ratio is matmul over elementwise.",
        "",
        claim(section),
        "",
        "| hidden | mode | form | compile s | step ms (median) | matmul / elementwise |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['hidden']} | {r['mode']} | {r['form']} | {r['compile_s']:.2f} | "
            f"{r['run_ms_median']:.3g} | {r['ratio_matmul_to_elementwise']:.2f} |"
        )
    return "\n".join(lines) + "\n"
