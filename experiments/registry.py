"""The one registry of experiments: every module of this package that declares ``PAGE``.

An experiment is its module ``experiments/NAME.py`` (``run(config, out, progress)`` and
``summarize(results)``, plus the constants below) and its config ``configs/NAME.py``.
Everything else derives from here: the CLI's choices (``python -m experiments NAME``),
the Makefile's ``figures`` and ``figures-check`` lists (``python -m experiments --list``)
and the Experiments section of the documentation's navigation (``scripts/mkdocs_hooks.py``).

Module constants, read from the source without importing it (no jax at ``--list`` time):

* ``PAGE``: the documentation page, relative to ``docs/`` (several experiments may share one);
* ``GROUP``: ``"quick"`` (minutes on 2 CPU cores; ``make figures-check``), ``"mnist"``
  (meta-trains a learned optimizer; ``make figures-check-mnist``) or ``"timed"``
  (meta-trains for a wall-clock budget, so a rerun takes another number of steps and
  cannot repeat its numbers: ``make figures`` runs it, no figures-check compares it);
* ``ORDER``: position in ``make figures`` and in the navigation (an experiment that reads
  another's results comes after it);
* ``RUNS`` (optional): ``{results folder: [extra CLI arguments]}`` when ``make figures``
  stores more than the default run (default: ``{NAME: []}``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CONFIGS = PACKAGE.parent / "configs"
GROUPS = ("quick", "mnist", "timed")
_FIELDS = ("PAGE", "GROUP", "ORDER", "RUNS")


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    page: str
    group: str
    order: int
    runs: tuple[tuple[str, tuple[str, ...]], ...]
    title: str


def _constants(path: Path) -> tuple[dict, str]:
    tree = ast.parse(path.read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in _FIELDS:
                found[target.id] = ast.literal_eval(node.value)
    return found, (ast.get_docstring(tree) or "").strip().split("\n")[0]


def _experiment(path: Path) -> Experiment | None:
    found, title = _constants(path)
    if "PAGE" not in found:
        return None
    name = path.stem
    missing = [f for f in ("GROUP", "ORDER") if f not in found]
    if missing:
        raise ValueError(f"experiments/{name}.py declares PAGE but not {', '.join(missing)}.")
    if found["GROUP"] not in GROUPS:
        raise ValueError(f"experiments/{name}.py: GROUP must be one of {GROUPS}.")
    if not (CONFIGS / f"{name}.py").is_file():
        raise ValueError(f"experiment {name!r} has no config: add configs/{name}.py.")
    runs = found.get("RUNS", {name: []})
    return Experiment(
        name=name,
        page=found["PAGE"],
        group=found["GROUP"],
        order=int(found["ORDER"]),
        runs=tuple((out, tuple(args)) for out, args in runs.items()),
        title=title,
    )


@functools.cache  # the sources are read once per process (the CLI asks more than once)
def experiments() -> tuple[Experiment, ...]:
    """Every registered experiment, in ``ORDER``."""
    found = [_experiment(p) for p in sorted(PACKAGE.glob("*.py"))]
    return tuple(sorted((e for e in found if e is not None), key=lambda e: (e.order, e.name)))


def names(group: str | None = None) -> tuple[str, ...]:
    """The registered names, in order (of one ``group`` if given)."""
    if group is not None and group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}.")
    return tuple(e.name for e in experiments() if group in (None, e.group))
