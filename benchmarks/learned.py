"""Meta-training throughput of the learned optimizer: l2l_jax against hand-written code.

One meta-step of truncated meta-training (:mod:`l2l_jax.truncated`) of the per-parameter
MLP optimizer (:class:`l2l_jax.learned.MLPLOpt`, the paper's 31 features and 32 hidden
units) on the MNIST MLP 784-100-20-10 (minibatch 32; synthetic inputs of the real shapes,
so no dataset is needed; :mod:`benchmarks.learned_setup`): ``B`` runs (meta-batch 8) each
advance ``K`` inner steps (the segment) in a ``lax.scan``, the train-by-train meta-loss of
the segment is differentiated by truncated backpropagation (TBPTT), and one clipped-Adam
meta-update is applied. Throughput is inner steps per second, ``B K / (meta-step time)``.
Three implementations of the same computation, timed side by side (interleaved rounds,
:mod:`benchmarks.timing`):

* **l2l_jax**: ``truncated.make_meta_step(lopt, config)``, the library's jitted meta-step,
  at the library's defaults (which also re-initialize runs whose parameters turn
  non-finite, skip non-finite meta-steps and return five metrics).
* **hand-written**: :mod:`benchmarks.learned_hand`, the same meta-step with plain jax and
  optax (the step features' share of the learned optimizer's first layer is one vector per
  tensor, not a column block broadcast to every coordinate; the re-initialization at the
  horizon is a ``jnp.where`` over the run, as every vmapped run needs). It has no
  non-finite handling and no metrics beyond the meta-loss.
* **torch.func** (when torch is importable): :mod:`benchmarks.learned_torch`, the same
  unroll in PyTorch; otherwise the section says it was skipped.

The outputs of the timed calls are compared (meta-loss, updated meta-parameters, new runs),
so the ratio is between implementations that computed the same thing in the same run.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import jax
import numpy as np

from benchmarks import timing
from benchmarks.learned_hand import agreement, hand_cell
from benchmarks.learned_setup import PRESETS, LearnedPreset, library_cell
from benchmarks.learned_torch import torch_section

__all__ = ["PRESETS", "LearnedPreset", "claim", "measure", "render_markdown"]

# The library's meta-step may cost at most this fraction more than the hand-written one.
OVERHEAD_TARGET = 0.10


# -- the group -------------------------------------------------------------------------------


def _row(cell: timing.Timed, preset: LearnedPreset, hand_median: float) -> dict[str, Any]:
    """One implementation's timings, throughput and time ratio to the hand-written step."""
    median = statistics.median(cell.times)
    return {
        "impl": cell.name,
        **cell.summary(),
        "inner_steps_per_s": preset.meta_batch * preset.segment / median,
        "ratio_to_hand": median / hand_median,
    }


def measure(preset: LearnedPreset, progress: bool = True) -> dict[str, Any]:
    """Compile and time the library's and the hand-written meta-step (and torch's)."""
    lib = dataclasses.replace(library_cell(preset), times=[])
    task, state = lib.args[1], lib.args[0]
    hand = dataclasses.replace(hand_cell(preset), times=[])
    torch_info, torch_cell = torch_section(preset, state, task, lib.out)
    cells = [lib, hand] + ([torch_cell] if torch_cell is not None else [])
    timing.time_rounds(cells, preset.repeats, preset.budget_s, "time learned optimizer", progress)
    hand_median = statistics.median(hand.times)
    ratio = statistics.median(lib.times) / hand_median
    params = task.init_params()
    return {
        "settings": dataclasses.asdict(preset)
        | {
            "task_parameters": sum(int(np.size(x)) for x in jax.tree.leaves(params)),
            "meta_parameters": sum(int(np.size(x)) for x in jax.tree.leaves(state.meta_params)),
            "lopt_features": preset.lopt().config.num_features,
        },
        "rows": [_row(c, preset, hand_median) for c in cells],
        "ratio_library_to_hand": ratio,
        "paired_ratio_library_to_hand": timing.paired_ratio(lib, hand),
        "overhead": ratio - 1,
        "meets_target": ratio <= 1 + OVERHEAD_TARGET,
        "agreement": agreement(lib.out, hand.out),
        "torch": torch_info,
    }


def claim(section: dict[str, Any]) -> str:
    """One sentence: throughput of each implementation, the library's overhead, torch."""
    rows = {r["impl"]: r for r in section["rows"]}
    verdict = "meets" if section["meets_target"] else "misses"
    text = (
        f"l2l_jax's meta-step runs {rows['l2l_jax']['inner_steps_per_s']:.3g} inner steps/s, "
        f"the hand-written jax + optax one {rows['hand-written']['inner_steps_per_s']:.3g}: "
        f"time ratio **{section['ratio_library_to_hand']:.3f}×** (paired per round: "
        f"{section['paired_ratio_library_to_hand']:.3f}×), overhead "
        f"{100 * section['overhead']:+.1f}%, which {verdict} the target of at most "
        f"{100 * OVERHEAD_TARGET:.0f}%."
    )
    if "torch.func" in rows:
        text += (
            f" torch.func: {rows['torch.func']['inner_steps_per_s']:.3g} inner steps/s "
            f"({rows['torch.func']['ratio_to_hand']:.2f}× the hand-written time)."
        )
    else:
        text += f" torch.func: {section['torch']['status']}."
    return text


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    """The throughput section: settings, claim, one row per implementation, agreement."""
    s, agree = section["settings"], section["agreement"]
    lines = [
        f"{heading} learned-optimizer meta-training throughput",
        "",
        f"One TBPTT meta-step (train-by-train) of the MLP learned optimizer "
        f"({s['lopt_features']} features, hidden {tuple(s['hidden_sizes'])}, "
        f"{s['meta_parameters']:,} meta-parameters) on the MLP "
        f"{'-'.join(map(str, s['sizes']))} ({s['task_parameters']:,} parameters, minibatch "
        f"{s['batch']}, {s['n']} synthetic rows): meta-batch B = {s['meta_batch']}, segment "
        f"K = {s['segment']}, horizon {s['horizon']}; inner steps/s = B K / meta-step time. "
        "Timed in interleaved rounds in one run; the ratio is to the hand-written jax + optax "
        "meta-step.",
        "",
        claim(section),
        "",
        "| implementation | compile s | meta-step ms (median) | repeats | inner steps/s "
        "| time ratio to hand-written |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['impl']} | {r['compile_s']:.2f} | {r['run_ms_median']:.4g} | {r['repeats']} "
            f"| {r['inner_steps_per_s']:.3g} | {r['ratio_to_hand']:.3f} |"
        )
    lines += [
        "",
        f"Same computation: from the same state the hand-written meta-step's meta-loss is "
        f"within {agree['meta_loss_rel_diff']:.1e} (relative) of the library's, its updated "
        f"meta-parameters within {agree['meta_params_max_abs_diff']:.1e} and the runs' "
        f"parameters within {agree['runs_params_max_abs_diff']:.1e} (absolute); "
        f"{agree['resets_in_segment']} run(s) re-initialized in the timed segment.",
    ]
    torch_agree = section["torch"].get("agreement")
    if torch_agree:
        lines[-1] += (
            f" torch.func: meta-loss within {torch_agree['meta_loss_rel_diff']:.1e}, "
            f"meta-parameters within {torch_agree['meta_params_max_abs_diff']:.1e}."
        )
    return "\n".join(lines) + "\n"
