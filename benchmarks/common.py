"""Pieces every benchmark group shares: the synthetic MNIST-shaped task, XLA's memory
estimate, ratios and number formats, preset selection, and the one-group command line.

A group module (``momentum``, ``learned_estimators``, ...) has ``PRESETS`` (name ->
frozen preset), ``measure(preset, progress) -> section``, ``render_markdown(section,
heading) -> str`` and ``claim(section) -> str``. It imports this module, :mod:`timing`
and the library, never :mod:`benchmarks.run` or :mod:`benchmarks.group`, which import it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from l2l_jax.tasks import MnistMLP

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# -- tasks and measurements ------------------------------------------------------------------


def mnist_like_task(
    sizes: tuple[int, ...], n: int, keys: tuple[jax.Array, jax.Array, jax.Array] | None = None
) -> MnistMLP:
    """The MLP task of layer ``sizes`` on ``n`` uniform [0, 1) images with uniform labels
    (MNIST's shapes, no dataset needed).

    ``keys`` = ``(images, labels, init)``; by default the images' and labels' keys split
    from ``key(0)`` and ``key(1)`` for the initial parameters.
    """
    if keys is None:
        keys = (*jax.random.split(jax.random.key(0)), jax.random.key(1))
    k_x, k_y, k_init = keys
    images = jax.random.uniform(k_x, (n, sizes[0]))
    labels = jax.random.randint(k_y, (n,), 0, sizes[-1])
    return MnistMLP(images, labels, init_key=k_init, sizes=sizes)


def xla_peak_bytes(compiled: Any) -> int | None:
    """XLA's static memory estimate of a compiled function: argument + output + temp -
    alias bytes (``None`` where the backend gives no analysis)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def reported(compiled: Any) -> dict[str, float]:
    """``flops`` and ``bytes accessed`` of XLA's cost analysis of a compiled function."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per computation
        analysis = analysis[0]
    return {"flops": float(analysis["flops"]), "bytes": float(analysis["bytes accessed"])}


def xla_counts_loop_body_once() -> bool:
    """Whether XLA's cost analysis ignores ``while`` trip counts (a 1- and a 4-trip scan of
    the same matmul report the same FLOPs)."""

    def scan(x: jax.Array, length: int) -> jax.Array:
        return jax.lax.scan(lambda c, _: (c @ x, None), x, None, length=length)[0]

    x = jnp.ones((32, 32), jnp.float32)
    counts = [
        reported(jax.jit(scan, static_argnums=1).lower(x, n).compile())["flops"] for n in (1, 4)
    ]
    return counts[1] < 2 * counts[0]


def loop_trip_counts(compiled: Any) -> dict[str, int]:
    """How many ``while`` loops of each known trip count the compiled program has."""
    counts = collections.Counter(re.findall(r'known_trip_count":\{"n":"(\d+)"', compiled.as_text()))
    return {trips: counts[trips] for trips in sorted(counts, key=int)}


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or ``None`` when ``a`` is missing or ``b`` is missing or zero."""
    return None if a is None or not b else a / b


def fmt(x: float | None, spec: str = ".3g", suffix: str = "") -> str:
    """``x`` formatted with ``spec`` and ``suffix``, or ``–`` for ``None``."""
    return "–" if x is None else f"{x:{spec}}{suffix}"


# -- presets and the one-group command line --------------------------------------------------


def group_preset(module: Any, name: str, peer: bool = True) -> Any:
    """The group's preset ``name``; with ``peer=False`` its peer comparison (if it has one)
    is switched off, with the reason "--no-peer given"."""
    found = module.PRESETS[name]
    if peer or not getattr(found, "peer", False):
        return found
    return dataclasses.replace(found, peer=False, peer_skip="--no-peer given")


def group_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The flags of a one-group run: ``--preset``, ``--out``, ``--no-peer``, ``--no-progress``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-peer", action="store_true", help="skip the peer library")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run_group(name: str, module: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one group on ``args.preset``, write ``<out>/<name>-<preset>.json`` and
    ``.md``, print its claim, and return its section."""
    section = module.measure(
        group_preset(module, args.preset, peer=not args.no_peer), not args.no_progress
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{name}-{args.preset}"
    stem.with_suffix(".json").write_text(json.dumps(section, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(module.render_markdown(section) + "\n")
    print(module.claim(section))
    print(f"wrote {stem}.json, {stem}.md")
    return section


def group_main(name: str, module: Any, argv: list[str], prog: str) -> dict[str, Any]:
    """``prog [--preset P] [--no-peer] [--out DIR]``: :func:`run_group` of one module."""
    parser = group_parser(prog, (module.__doc__ or "").split("\n")[0])
    args = parser.parse_args(argv)
    if args.preset not in module.PRESETS:
        parser.error(f"group {name} has the presets {sorted(module.PRESETS)}.")
    return run_group(name, module, args)
