"""Every meta-gradient estimator of the learned optimizer: throughput, memory roofline, peer.

One meta-step of truncated meta-training (:func:`l2l_jax.truncated.make_meta_step`) of the
MLP learned optimizer on the MNIST MLP (synthetic rows of MNIST's shapes, the task of the
peer scripts, :mod:`benchmarks.peer`): for each estimator of
:data:`l2l_jax.truncated.ESTIMATORS` (TBPTT, antithetic truncated ES, PES; ES/PES with
``es_pairs`` pairs per run), compiled ahead of time and timed in interleaved rounds
(:mod:`benchmarks.timing`) together with a streaming kernel. Throughput is ``B K / (median
meta-step time)`` inner steps per second, the convention of the peer scripts (an ES/PES
meta-step steps ``2 P B`` perturbed runs, ES ``B`` more).

**Memory roofline.** The learned optimizer's step is memory-bound (a few tens of FLOPs per
task parameter against the bytes of its few tens of features), so its reference is the
machine's streaming bandwidth, measured in the same rounds: ``y = a x + b`` over an array
much larger than the caches, iterated in a ``lax.fori_loop`` (buffers reused, no page
faults timed), ``2 x nbytes`` per iteration (the STREAM convention: one read, one write).
The bytes one inner step moves are XLA's ``cost_analysis()["bytes accessed"]`` of a jitted
function that does exactly one inner step (:func:`l2l_jax.truncated.runs.advance`:
minibatch gradient, learned update, meta-loss term) for the batch of runs the estimator
steps, with no loop around it (XLA's cost analysis counts a ``while`` body once whatever its
trip count, so a ``K``-step scan would be under-counted ``K``-fold; the group records the
check, :func:`benchmarks.common.xla_counts_loop_body_once`, and the loops left in the
one-step function):

* forward (ES, PES): ``advance`` vmapped over the ``B x P x 2`` perturbed runs, each with
  its own meta-parameters ``theta +- sigma eps``; ES adds the ``B`` unperturbed runs it
  advances with the shared ``theta``;
* TBPTT: ``value_and_grad`` of the mean meta-loss term of ``advance`` vmapped over the
  ``B`` runs, with respect to the meta-parameters *and* the runs' floating-point state
  (parameters, optimizer moments): one forward step plus one step of the segment scan's
  transpose, which carries a cotangent for the run state from step to step.

``roofline time = bytes / bandwidth``; ``fraction = roofline time / (median meta-step time
/ K)``, the measured time of one inner step of the whole meta-step (restarts at the
horizon, the perturbation draw and the meta-update included) for the same batch. FLOP/s
use XLA's ``flops`` of the same one-step function over the same time.

**Peer.** The ratio to google/learned_optimization's throughput, from its own scripts run
in subprocesses (:mod:`benchmarks.peer`), or the reason it was skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, learned_setup, timing
from benchmarks import estimators_reduced as reduced
from benchmarks.learned_setup import LearnedPreset
from benchmarks.peer import PEER_ESTIMATOR, PEERS_ENV, peer_section, peer_text
from l2l_jax import learned as lopt_lib
from l2l_jax import truncated, xla
from l2l_jax.truncated import es, runs

__all__ = ["PEERS_ENV", "PRESETS", "claim", "main", "measure", "peer_section", "render_markdown"]

# The targets: the forward (ES, PES) step at >= 50% of the bandwidth roofline, so that it
# is bound by memory traffic and not by overhead; TBPTT's step per run at most 3x the
# forward (PES) one, the cost of one backward pass over the forward.
FORWARD_ROOFLINE_TARGET = 0.5
TBPTT_OVER_FORWARD_TARGET = 3.0
FORWARD = ("es", "pes")


@dataclasses.dataclass(frozen=True)
class EstimatorsPreset:
    """The task and sizes (:class:`benchmarks.learned_setup.LearnedPreset`), the ES/PES pairs and
    sigma, TBPTT's opt-in ``reduced_precision`` reverse pass measured beside the exact one,
    the streaming array (``stream_mb`` megabytes of float32, ``stream_iters``
    passes per call), the timing rounds (each function capped at ``budget_s`` seconds), and
    the peer comparison: ``peer_rounds`` rounds of subprocesses, each timing
    ``peer_repeats`` meta-steps, ``peer_timeout_s`` per subprocess; ``peer=False`` skips it
    with the reason ``peer_skip``."""

    step: LearnedPreset
    # the three learned_optimization has too (TruncatedGrad, TruncatedES, TruncatedPES): the
    # peer comparison's; other registered estimators are measured by their own groups
    estimators: tuple[str, ...] = ("tbptt", "es", "pes")
    es_pairs: int = 1
    es_sigma: float = 0.01
    stream_mb: float = 256.0
    stream_iters: int = 4
    repeats: int = 5
    budget_s: float = 60.0
    peer: bool = True
    peer_skip: str = ""
    peer_rounds: int = 2
    peer_repeats: int = 3
    peer_timeout_s: float = 900.0
    # TBPTT with the learned optimizer's reverse pass in this dtype, timed beside the exact
    # one with its meta-gradient's error (benchmarks.estimators_reduced; None: not measured)
    reduced_precision: str | None = "bfloat16"

    def config(self, estimator: str) -> truncated.TruncatedConfig:
        """The learned group's config (TBPTT, tbt) with this estimator, pairs and sigma.

        TBPTT keeps the learned group's config exactly, so it shares its compiled step
        when the sizes agree (the smoke preset)."""
        cfg = self.step.config()
        if estimator == cfg.estimator.name:
            return cfg
        cls = truncated.ESTIMATORS[estimator]
        own = {f.name for f in dataclasses.fields(cls)}  # ES, PES: sigma, pairs; TBPTT: none
        settings = {"sigma": self.es_sigma, "pairs": self.es_pairs}
        return dataclasses.replace(
            cfg, estimator=cls(**{k: v for k, v in settings.items() if k in own})
        )


# The peer scripts' task: MLP 784-100-20-10, minibatch 32, 1000 rows, B = 8, K = 20, T = 200.
PAPER_TASK = LearnedPreset(segment=20, repeats=5, budget_s=60.0)

PRESETS: dict[str, EstimatorsPreset] = {
    # The peer subprocesses are the longest part of the group (--no-peer skips them).
    "cpu-small": EstimatorsPreset(step=PAPER_TASK, repeats=5, budget_s=60.0),
    "accelerator": EstimatorsPreset(
        step=PAPER_TASK, stream_mb=1024.0, stream_iters=20, repeats=20, budget_s=30.0
    ),
    "smoke": EstimatorsPreset(
        step=learned_setup.PRESETS["smoke"],
        stream_mb=8.0,
        stream_iters=2,
        repeats=2,
        budget_s=1.0,
        peer=False,
        peer_skip="not run in the smoke preset",
    ),
}


# -- the meta-steps ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def estimator_cell(preset: EstimatorsPreset, estimator: str) -> timing.Timed:
    """The library's jitted meta-step of ``estimator`` on its initial state, compiled and
    warmed up (TBPTT: :func:`benchmarks.learned_setup.library_cell` when the configs agree)."""
    cfg = preset.config(estimator)
    if cfg == preset.step.config():
        return dataclasses.replace(learned_setup.library_cell(preset.step), name=estimator)
    task = learned_setup.build_task(preset.step)
    lopt = preset.step.lopt()
    key = jax.random.fold_in(jax.random.key(preset.step.seed), 1)
    state = truncated.init_state(key, task, lopt, cfg)
    return timing.compile_timed(estimator, truncated.make_meta_step(lopt, cfg), state, task)


# -- one inner step for the estimator's batch ------------------------------------------------


def _split_floats(tree: Any) -> tuple[list, list, Any]:
    """``(floating leaves, other leaves, treedef)`` of ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    floats = [x for x in leaves if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    others = [x for x in leaves if not jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    return floats, others, treedef


def _join_floats(floats: list, others: list, like: list, treedef: Any) -> Any:
    f, o = iter(floats), iter(others)
    leaves = [
        next(f) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else next(o) for x in like
    ]
    return jax.tree.unflatten(treedef, leaves)


def one_step_fn(estimator: str, cfg: truncated.TruncatedConfig, lopt: Any):
    """``(fn, args_of(state, task))``: one inner step for the batch ``estimator`` steps.

    ``fn`` is to be jitted; ``args_of`` builds its arguments from the estimator's initial
    state (module docstring: forward = ``advance`` over the perturbed runs with per-run
    meta-parameters, plus the unperturbed runs for ES; TBPTT = ``value_and_grad`` of one
    vmapped ``advance`` with respect to the meta-parameters and the runs' float state).
    """
    inner = lopt_lib.inner_optimizer(lopt)
    shared = jax.vmap(runs.advance, in_axes=(None, 0, None, None, None))
    perturbed = runs.advance
    for _ in range(3):
        perturbed = jax.vmap(perturbed, in_axes=(0, 0, None, None, None))

    def pairs_of(state) -> tuple[Any, Any]:
        est = cfg.estimator
        delta = es.perturbations(
            jax.random.key(0), state.meta_params, cfg.meta_batch, est.pairs, est.sigma
        )
        thetas = es.antithetic(state.meta_params, delta)
        paired = state.inner.runs if estimator == "pes" else es.paired(state.inner, est.pairs)
        return thetas, paired

    if estimator == "pes":

        def fn(thetas, paired, task):
            return perturbed(thetas, paired, task, inner, cfg)

        return fn, lambda state, task: (*pairs_of(state), task)

    if estimator == "es":

        def fn(meta_params, runs_, thetas, paired, task):
            return (
                shared(meta_params, runs_, task, inner, cfg),
                perturbed(thetas, paired, task, inner, cfg),
            )

        return fn, lambda state, task: (state.meta_params, state.inner, *pairs_of(state), task)

    if estimator != "tbptt":
        raise ValueError(f"no one-step function for estimator {estimator!r}.")

    def fn(meta_params, floats, others, task, like, treedef):
        def loss(mp, fl):
            runs_ = _join_floats(fl, others, like, treedef)
            advanced, terms, _ = shared(mp, runs_, task, inner, cfg)
            return jnp.mean(terms["meta_loss"]), advanced

        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(meta_params, floats)

    def args_of(state, task):
        floats, others, treedef = _split_floats(state.inner)
        like = jax.tree.leaves(state.inner)
        return state.meta_params, floats, others, task, like, treedef

    return fn, args_of


def step_costs(
    preset: EstimatorsPreset, estimator: str, cell: timing.Timed, lopt: Any = None
) -> dict[str, Any]:
    """XLA's bytes and FLOPs of one inner step for the estimator's batch, and the runs in
    that batch; the loops left in the one-step function are recorded (trip counts).
    ``lopt``: the learned optimizer (default: the preset's)."""
    cfg = preset.config(estimator)
    state, task = cell.args
    fn, args_of = one_step_fn(estimator, cfg, lopt or preset.step.lopt())
    args = args_of(state, task)
    if estimator == "tbptt":  # like/treedef are static: close over them
        *dyn, like, treedef = args
        compiled = xla.jit(lambda mp, fl, ot, t: fn(mp, fl, ot, t, like, treedef)).lower(*dyn)
    else:
        compiled = xla.jit(fn).lower(*args)
    compiled = compiled.compile()
    counts = common.reported(compiled)
    b, p = cfg.meta_batch, getattr(cfg.estimator, "pairs", 0)  # TBPTT has no pairs
    batch = {"tbptt": b, "pes": 2 * b * p, "es": b + 2 * b * p}[estimator]
    return {
        "runs_per_inner_step": batch,
        "bytes_per_inner_step": counts["bytes"],
        "flops_per_inner_step": counts["flops"],
        "one_step_loops": common.loop_trip_counts(compiled),
    }


# -- streaming bandwidth ---------------------------------------------------------------------


def stream(x: jax.Array, a: jax.Array, b: jax.Array, iters: jax.Array) -> jax.Array:
    """``iters`` passes of ``y = a y + b`` from ``y = x``: the first pass writes a fresh
    buffer that the loop then updates (no copy of ``x`` into the loop); ``iters`` is traced,
    so XLA cannot unroll and fuse passes."""
    return jax.lax.fori_loop(1, iters, lambda _, y: a * y + b, a * x + b)


def stream_cell(preset: EstimatorsPreset) -> timing.Timed:
    """:func:`stream` over ``stream_mb`` megabytes of float32, compiled and warmed up."""
    n = int(preset.stream_mb * 1e6) // 4
    x = jnp.ones((n,), jnp.float32)
    args = (x, jnp.float32(0.999), jnp.float32(1e-3), jnp.int32(preset.stream_iters))
    return timing.compile_timed("stream", stream, *args)


def bandwidth(cell: timing.Timed, iters: int) -> dict[str, Any]:
    """Bytes per call (``2 x nbytes x iters``) over the median call time."""
    nbytes = int(cell.args[0].nbytes)
    moved = 2 * nbytes * iters
    return {
        **cell.summary(),
        "array_bytes": nbytes,
        "iters": iters,
        "bytes": moved,
        "bytes_per_s": moved / statistics.median(cell.times),
        # XLA's estimate of the call: the first pass and the loop body, counted once
        # whatever the trip count, each 2 x nbytes.
        "xla_bytes_reported": common.reported(cell.fn)["bytes"],
    }


# -- the group ---------------------------------------------------------------------------------


def roofline_row(
    cell: timing.Timed, costs: dict[str, Any], bytes_per_s: float, segment: int, meta_batch: int
) -> dict[str, Any]:
    """Throughput, time per inner step, roofline time and fraction, FLOP/s of one estimator."""
    median_s = statistics.median(cell.times)
    per_step_s = median_s / segment
    roofline_s = costs["bytes_per_inner_step"] / bytes_per_s
    return {
        "estimator": cell.name,
        **cell.summary(),
        "inner_steps_per_s": meta_batch * segment / median_s,
        "ms_per_inner_step": 1e3 * per_step_s,
        **costs,
        "roofline_ms": 1e3 * roofline_s,
        "roofline_fraction": roofline_s / per_step_s,
        "flops_per_s": costs["flops_per_inner_step"] / per_step_s,
    }


def targets(rows: dict[str, dict[str, Any]], tbptt_over_forward: float | None) -> list[dict]:
    """The targets, each with its value and whether it is met.

    ``tbptt_over_forward`` compares like with like: the time of one inner step of *one
    run* under TBPTT (forward and backward) over that of one run's forward step under PES
    (:func:`per_run_ratio`)."""
    out = [
        {
            "target": f"{name} (forward) step at >= {100 * FORWARD_ROOFLINE_TARGET:.0f}% of the "
            "bandwidth roofline",
            "value": rows[name]["roofline_fraction"],
            "met": rows[name]["roofline_fraction"] >= FORWARD_ROOFLINE_TARGET,
        }
        for name in FORWARD
        if name in rows
    ]
    if tbptt_over_forward is not None:
        out.append(
            {
                "target": f"TBPTT step time per run <= {TBPTT_OVER_FORWARD_TARGET:g}x the "
                "forward (PES) step's",
                "value": tbptt_over_forward,
                "met": tbptt_over_forward <= TBPTT_OVER_FORWARD_TARGET,
            }
        )
    return out


def per_run_ratio(tbptt_over_pes: float, es_pairs: int) -> float:
    """TBPTT's time per inner step per run over PES's: a TBPTT meta-step steps ``B`` runs
    forward and backward, a PES one ``2 P B`` runs forward, so the meta-step time ratio
    is scaled by ``2 P``."""
    return tbptt_over_pes * 2 * es_pairs


def measure(preset: EstimatorsPreset, progress: bool = True) -> dict[str, Any]:
    """Compile every estimator's meta-step and the stream, time them in interleaved rounds,
    cost one inner step of each, then run the peer comparison (or say why not)."""
    cells = [dataclasses.replace(estimator_cell(preset, e), times=[]) for e in preset.estimators]
    both = {"tbptt", "pes"} <= set(preset.estimators)  # its ratios need both
    dtype = preset.reduced_precision if both else None
    extra = [reduced.reduced_cell(preset.step, dtype)] if dtype else []
    stream = stream_cell(preset)
    timing.time_rounds(
        [*cells, *extra, stream], preset.repeats, preset.budget_s, "time estimators", progress
    )
    bw = bandwidth(stream, preset.stream_iters)
    s = preset.step
    rows = {
        c.name: roofline_row(
            c, step_costs(preset, c.name, c), bw["bytes_per_s"], s.segment, s.meta_batch
        )
        for c in cells
    }
    by = {c.name: c for c in cells}
    ratio = paired = per_run = None
    if "tbptt" in by and "pes" in by:
        ratio = rows["tbptt"]["run_ms_median"] / rows["pes"]["run_ms_median"]
        paired = timing.paired_ratio(by["tbptt"], by["pes"])
        per_run = per_run_ratio(ratio, preset.es_pairs)
    low = None
    if extra:
        (cell,) = extra
        lopt = reduced.reduced_step(s, dtype).lopt()
        costs = step_costs(preset, "tbptt", cell, lopt)
        row = roofline_row(cell, costs, bw["bytes_per_s"], s.segment, s.meta_batch)
        over = per_run_ratio(row["run_ms_median"] / rows["pes"]["run_ms_median"], preset.es_pairs)
        low = reduced.summary(row, by["tbptt"], cell, reduced.accuracy(s, dtype), over)
    peer = peer_section(preset, progress)
    for name, row in rows.items():
        row["peer_ratio"] = peer.get(name, {}).get("ratio")
    task = cells[0].args[1]
    params = sum(int(np.size(x)) for x in jax.tree.leaves(task.init_params()))
    return {
        "settings": dataclasses.asdict(preset) | {"task_parameters": params},
        "xla_counts_loop_body_once": common.xla_counts_loop_body_once(),
        "bandwidth": bw,
        "rows": list(rows.values()),
        "tbptt_over_pes": ratio,
        "paired_tbptt_over_pes": paired,
        "tbptt_over_forward_per_run": per_run,
        "targets": targets(rows, per_run),
        "reduced_precision": low,
        "peer": peer,
    }


# -- outputs -----------------------------------------------------------------------------------


def claim(section: dict[str, Any]) -> str:
    """One sentence: each estimator's throughput and roofline fraction, the targets, peer."""
    rows = ", ".join(
        f"{r['estimator']} {r['inner_steps_per_s']:.3g} inner steps/s at "
        f"{100 * r['roofline_fraction']:.0f}% of the roofline"
        for r in section["rows"]
    )
    met = "; ".join(
        f"{t['target']}: {'met' if t['met'] else 'NOT met'}" for t in section["targets"]
    )
    return (
        f"{rows} (streaming bandwidth {section['bandwidth']['bytes_per_s'] / 1e9:.3g} GB/s); "
        f"{met}; {peer_text(section['peer'])}"
    )


def _loops(rows: list[dict[str, Any]]) -> str:
    """E.g. ``"tbptt {5: 12}, es {5: 8}"``: the ``while`` loops left in each one-step
    function (threefry's rounds on a few key words), by trip count."""
    return ", ".join(
        f"{r['estimator']} {{{', '.join(f'{n}: {c}' for n, c in r['one_step_loops'].items())}}}"
        for r in rows
    )


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    """The estimator table, the bandwidth, the targets and the peer comparison."""
    s, st, bw = section["settings"], section["settings"]["step"], section["bandwidth"]
    b, p, k = st["meta_batch"], s["es_pairs"], st["segment"]
    lines = [
        f"{heading} learned-optimizer estimators: throughput, memory roofline, peer",
        "",
        f"One meta-step of each estimator (train-by-train) of the MLP learned optimizer "
        f"(hidden {tuple(st['hidden_sizes'])}) on the MLP {'-'.join(map(str, st['sizes']))} "
        f"({s['task_parameters']:,} parameters, minibatch {st['batch']}, {st['n']} synthetic "
        f"rows): B = {b}, K = {k}, horizon {st['horizon']}, ES/PES with P = {p} antithetic "
        f"pair(s) per run, sigma {s['es_sigma']:g}. Inner steps/s = B K / median meta-step "
        f"time (an ES/PES meta-step advances {2 * b * p} perturbed runs, ES also the {b} "
        "unperturbed ones). Bytes per inner step: XLA's cost analysis of one inner step for "
        "the runs listed; roofline = bytes / streaming bandwidth; fraction = roofline / "
        "(meta-step time / K). Timed in interleaved rounds in one run.",
        "",
        claim(section),
        "",
        "| estimator | compile s | meta-step ms (median) | repeats | inner steps/s | runs per "
        "inner step | bytes per inner step | ms per inner step | roofline ms | roofline "
        "fraction | GFLOP/s | ratio to learned_optimization |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['estimator']} | {r['compile_s']:.2f} | {r['run_ms_median']:.4g} "
            f"| {r['repeats']} | {r['inner_steps_per_s']:.3g} | {r['runs_per_inner_step']} "
            f"| {timing.fmt_bytes(int(r['bytes_per_inner_step']))} "
            f"| {r['ms_per_inner_step']:.3g} | {r['roofline_ms']:.3g} "
            f"| {100 * r['roofline_fraction']:.1f}% | {r['flops_per_s'] / 1e9:.3g} "
            f"| {common.fmt(r['peer_ratio'], '.2f', '×')} |"
        )
    lines += [
        "",
        f"Streaming bandwidth: `y = a x + b` over {timing.fmt_bytes(bw['array_bytes'])} of "
        f"float32, {bw['iters']} passes per call in a `lax.fori_loop`, 2 × the array's bytes "
        f"per pass (XLA's cost analysis of the call, which counts the first pass and the "
        f"loop body once: {timing.fmt_bytes(int(bw['xla_bytes_reported']))}, against "
        f"{timing.fmt_bytes(4 * bw['array_bytes'])} = 4 × the array): median "
        f"{bw['run_ms_median']:.4g} ms per call, **{bw['bytes_per_s'] / 1e9:.3g} GB/s**. "
        f"XLA's cost analysis counts a `while` body once whatever its trip count: "
        f"{section['xla_counts_loop_body_once']}; the one-step functions have no scan "
        f"(their loops, trips: count: {_loops(section['rows'])}).",
        "",
    ]
    if section["tbptt_over_pes"] is not None:
        lines += [
            f"TBPTT / forward: the TBPTT meta-step's median time over the PES meta-step's at "
            f"the same B = {b} and K = {k} (TBPTT: {b} runs forward and backward; PES: "
            f"{2 * b * p} perturbed runs forward only) is "
            f"{section['tbptt_over_pes']:.2f}× (paired per round: "
            f"{section['paired_tbptt_over_pes']:.2f}×); per run and inner step (× 2P = "
            f"{2 * p}): **{section['tbptt_over_forward_per_run']:.2f}×**.",
            "",
        ]
    lines += reduced.render(section)
    lines += ["| target | value | met |", "|---|---:|---|"]
    for t in section["targets"]:
        value = f"{t['value']:.2f}×" if "TBPTT" in t["target"] else f"{100 * t['value']:.1f}%"
        lines.append(f"| {t['target']} | {value} | {'met' if t['met'] else 'not met'} |")
    lines += ["", peer_text(section["peer"])]
    if section["peer"]["status"] == "ok":
        lines += [
            "",
            "| ours | peer | rounds | l2l_jax inner steps/s | learned_optimization "
            "inner steps/s | ratio | l2l_jax compile s | learned_optimization compile s |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for ours in PEER_ESTIMATOR:
            r = section["peer"].get(ours, {})
            if r.get("ratio") is not None:
                lines.append(
                    f"| {ours} | {r['peer_estimator']} | {s['peer_rounds']} "
                    f"| {r['inner_steps_per_s']:.3g} | {r['peer_inner_steps_per_s']:.3g} "
                    f"| {r['ratio']:.2f}× | {r['compile_s']:.1f} | {r['peer_compile_s']:.1f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m benchmarks.estimators [--preset P] [--no-peer] [--out DIR]``: this group
    alone (``make bench`` runs it with all the others), written to
    ``DIR/estimators-<preset>.json`` and ``.md``."""
    module = sys.modules[__name__]  # this file, also when it runs as ``__main__``
    argv = sys.argv[1:] if argv is None else argv
    return common.group_main("estimators", module, argv, "python -m benchmarks.estimators")


if __name__ == "__main__":
    main()
