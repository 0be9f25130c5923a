"""Experiments reproducing the papers' results: ``python -m experiments <name> --out DIR``.

Each experiment module has ``run(config, out, progress) -> results`` (writes
``out/results.json`` and PNG figures) and ``summarize(results) -> str``; its config is
``configs/<name>.py``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXPERIMENTS = (
    "fig1",
    "fig1_momentum",
    "thm3",
    "sweep",
    "fig2",
    "fig3",
    "thm5",
    "thm6",
    "fig4a",
    "fig4b",
    "fig4c",
    "fig5",
    "towers",
    "stability",
    "ood",
    "meta_tune",
    "health",
)


def get(name: str) -> ModuleType:
    """The experiment module ``name``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {EXPERIMENTS}.")
    return importlib.import_module(f"experiments.{name}")
