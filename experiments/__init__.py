"""Experiments reproducing the papers' results: ``python -m experiments <name> --out DIR``.

Each experiment module has ``run(config, out, progress) -> results`` (writes
``out/results.json`` and PNG figures) and ``summarize(results) -> str``; its config is
``configs/<name>.py``; :mod:`experiments.registry` finds them (a module that declares
``PAGE``, ``GROUP`` and ``ORDER``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from experiments import registry

EXPERIMENTS = registry.names()


def get(name: str) -> ModuleType:
    """The experiment module ``name``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {EXPERIMENTS}.")
    return importlib.import_module(f"experiments.{name}")
