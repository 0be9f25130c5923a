"""Benchmarks for l2l_jax: ``python -m benchmarks.run --preset cpu-small`` (``make bench``).

The meta-gradient methods' table (:mod:`benchmarks.methods`: time, compile time, XLA's
memory estimate and accuracy against the mpmath reference per method and unroll length
``t``), then every group of :data:`GROUPS` that has the preset (each under its key of the
JSON). This module only runs them and writes the results.

Usage::

    python -m benchmarks.run --preset cpu-small [--out DIR] [--repeats N] [--no-docs] [--no-peer]

Writes ``<out>/<preset>.json``, ``<out>/<preset>.md`` and ``<out>/<preset>.png``. With
the default ``--out`` it also regenerates the preset's section of ``docs/performance.md``
and the plot it shows, ``results/bench/<preset>.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import (
    estimators,
    flops,
    learned,
    least_squares,
    logscaled,
    memory,
    methods,
    momentum,
    nominal,
    optax_cost,
    scaling,
    towers,
    update_profile,
)
from benchmarks.common import ROOT, group_preset
from benchmarks.methods import METHODS, PRESETS, Case, Preset
from experiments import common as experiments_common

__all__ = ["GROUPS", "METHODS", "PRESETS", "SCHEMA_VERSION", "Case", "Preset", "group_preset"]
__all__ += ["main", "run", "write_outputs"]

# Extra groups: key in the JSON -> module with PRESETS, measure, render_markdown, claim.
GROUPS = {
    "least_squares": least_squares,
    "momentum": momentum,
    "towers": towers,
    "learned_optimizer": learned,
    "learned_estimators": estimators,
    "flops": flops,
    "nominal": nominal,
    "memory": memory,
    "scaling": scaling,
    "logscaled": logscaled,
    "optax_cost": optax_cost,
    "update_profile": update_profile,
}

DEFAULT_OUT = ROOT / "benchmarks" / "results"
DEFAULT_DOCS_PAGE = ROOT / "docs" / "performance.md"
DOCS_IMAGE_DIR = "results/bench"  # relative to the docs page
SCHEMA_VERSION = 1


def environment(preset: Preset) -> dict[str, Any]:
    """The preset's name and :func:`experiments.common.environment`."""
    return {"preset": preset.name, **experiments_common.environment()}


def _finite_or_str(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings ("nan", "inf", "-inf")."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite_or_str(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_str(v) for v in obj]
    return obj


def update_docs_page(page: Path, preset: str, section: str) -> None:
    """Replace the preset's generated section of the docs page (append it if missing)."""
    begin = f"<!-- BEGIN GENERATED bench:{preset} (make bench PRESET={preset}) -->"
    end = f"<!-- END GENERATED bench:{preset} -->"
    text = page.read_text() if page.exists() else "# Performance\n"
    block = f"{begin}\n\n{section.rstrip()}\n\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + f"\n\n## Results: `{preset}`\n\n{block}\n"
    page.write_text(text)


def _groups_markdown(results: dict[str, Any], heading: str) -> str:
    """The sections of the extra groups (:data:`GROUPS`) the run has."""
    return "".join(
        "\n" + module.render_markdown(results[key], heading)
        for key, module in GROUPS.items()
        if key in results
    )


def write_outputs(results: dict[str, Any], out: Path, docs_page: Path | None) -> dict[str, Path]:
    """JSON, markdown and PNG under ``out``; the docs page's section and plot if asked."""
    out.mkdir(parents=True, exist_ok=True)
    name = results["environment"]["preset"]
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": out / f"{name}.png"}
    paths["json"].write_text(json.dumps(_finite_or_str(results), indent=1, allow_nan=False) + "\n")
    methods.plot(results, paths["png"])
    body = methods.render_markdown(results, image=f"{name}.png") + _groups_markdown(results, "##")
    paths["md"].write_text(f"# Benchmark `{name}`\n\n{body}")
    if docs_page is not None:
        image_dir = docs_page.parent / DOCS_IMAGE_DIR
        image_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(paths["png"], image_dir / f"{name}.png")
        image = f"{DOCS_IMAGE_DIR}/{name}.png"
        section = methods.render_markdown(results, image=image, heading="###")
        section += _groups_markdown(results, "###")
        update_docs_page(docs_page, name, section)
        paths["docs"] = docs_page
    return paths


def run(
    preset: Preset,
    out: Path = DEFAULT_OUT,
    repeats: int | None = None,
    docs_page: Path | None = None,
    progress: bool = True,
    peer: bool = True,
) -> dict[str, Any]:
    """Measure every cell of ``preset``, write the outputs, return the results dict.

    ``peer=False`` skips the groups' comparisons with peer libraries run in subprocesses
    (a group preset with a ``peer`` field; the section says why it was skipped).
    """
    start = time.perf_counter()
    repeats = preset.repeats if repeats is None else repeats
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    cells = methods.measure_all(preset, repeats, progress=progress)
    sections = {
        key: module.measure(group_preset(module, preset.name, peer), progress)
        for key, module in GROUPS.items()
        if preset.name in module.PRESETS
    }
    method_ratios = methods.add_ratios(cells)
    results = {
        "schema_version": SCHEMA_VERSION,
        "preset": dataclasses.asdict(preset) | {"repeats": repeats},
        "environment": environment(preset),
        "task": "tasks.Quadratic.random(jax.random.key(0), dim, scale=0.5)",
        "inner": "inner.gd()",
        "objective": "objectives.log_loss()",
        "cells": cells,
        "method_ratios": method_ratios,
        "summary": methods.summarize(cells),
        "wall_time_s": 0.0,
    }
    results.update(sections)
    results["wall_time_s"] = time.perf_counter() - start  # before writing: it is in the md
    results["paths"] = {k: str(v) for k, v in write_outputs(results, out, docs_page).items()}
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI: ``python -m benchmarks.run --preset cpu-small [--out DIR] [--repeats N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per cell")
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="docs page whose generated section to rewrite (default: docs/performance.md "
        "when --out is the default directory, else none)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not touch the docs")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--no-peer",
        action="store_true",
        help="skip the comparison with learned_optimization, whose scripts run in "
        "subprocesses from the peers folder ($L2L_PEERS_DIR) and take the longest",
    )
    args = parser.parse_args(argv)
    docs_page = args.docs
    if docs_page is None and args.out.resolve() == DEFAULT_OUT.resolve():
        docs_page = DEFAULT_DOCS_PAGE
    if args.no_docs:
        docs_page = None
    results = run(
        PRESETS[args.preset],
        args.out,
        args.repeats,
        docs_page,
        progress=not args.no_progress,
        peer=not args.no_peer,
    )
    for summary in results["summary"]:
        print(f"[{summary['dtype']}, d={summary['dim']}] {methods.flatness_claim(summary)}")
    for key, module in GROUPS.items():
        if key in results:
            print(f"[{key}] {module.claim(results[key])}")
    print(f"wall time {results['wall_time_s']:.1f} s; wrote", ", ".join(results["paths"].values()))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
