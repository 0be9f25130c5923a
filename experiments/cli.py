"""Command line: ``python -m experiments <experiment> --out DIR [--preset P] [--config.F=V]``.

Configs are ``ml_collections`` dicts from ``configs/<experiment>.py``; any field can be
overridden, e.g. ``--config.meta_steps=500`` or ``--config.task.seed=3`` or
``--config.methods="('stable','autodiff')"``. ``python -m experiments EXPERIMENT --help``
lists that experiment's fields with their defaults.

The parser is argparse plus :func:`apply_overrides`, not ``ml_collections.config_flags``:
config_flags needs absl's global FLAGS and app.run, so the experiments could not be called
as a function (``main(argv)``, as the tests do), and it casts a value to the field's type
(``--config.steps=1.5`` became 1) where this one refuses it, naming the field.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections

import experiments
from experiments import registry


def load_config(name: str, preset: str = "default") -> ml_collections.ConfigDict:
    """``configs.<name>.get_config(preset)``."""
    return importlib.import_module(f"configs.{name}").get_config(preset)


def _parse_value(text: str, current):
    """Parse ``text`` as the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(current, str):
        return text
    value = _literal(text)
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {text!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {text!r}")
        return float(value)
    return tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value


def _literal(text: str):
    """``ast.literal_eval(text)`` with an error that says what a literal looks like."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(
            f"{text!r} is not a Python literal (e.g. 3, 0.1, True, (1, 2) or 'text')"
        ) from None


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Apply ``--config.a.b=value`` overrides in place; unknown fields are an error."""
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ValueError(f"unrecognized argument {item!r}; overrides look like --config.F=V.")
        path, text = item[len("--config.") :].split("=", 1)
        *parents, leaf = path.split(".")
        node = cfg
        for p in parents:
            node = node[p] if p in node else None
            if not isinstance(node, ml_collections.ConfigDict):
                raise ValueError(f"config has no section {p!r} (in {item!r}).")
        if leaf not in node:
            raise ValueError(
                f"config has no field {path!r}; fields: {', '.join(sorted(node.keys()))}."
            )
        try:
            node[leaf] = _parse_value(text, node[leaf])
        except (ValueError, SyntaxError, TypeError) as err:
            raise ValueError(f"bad value for config field {path!r}: {err}") from None


def check_out(out: Path) -> None:
    """Create ``out`` and write a probe file there, so an unwritable ``--out`` fails before
    the run, not after it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--out {out} is not a writable folder: {err.strerror or err}.") from None


def _check_mnist(cfg: ml_collections.ConfigDict) -> None:
    from experiments import mnist_lopt, mnist_meta

    mnist_lopt.check_config(cfg)
    for objective in mnist_lopt.OBJECTIVES:
        mnist_meta.truncated_config(cfg, objective)  # TruncatedConfig's consistency checks


def _check_ood(cfg: ml_collections.ConfigDict) -> None:
    from experiments import ood

    ood.check_config(cfg)
    for name in cfg.train_tasks:
        ood.truncated_config(cfg, cfg.tasks[name])


def _check_stability(cfg: ml_collections.ConfigDict) -> None:
    from experiments import stability

    stability.truncated_config(cfg)


# The experiments whose config the library checks before running: their own check_config
# and the truncated.TruncatedConfig they build. Only these checks' errors become usage errors.
CONFIG_CHECKS = {
    "fig4a": _check_mnist,
    "fig4b": _check_mnist,
    "fig4c": _check_mnist,
    "ood": _check_ood,
    "stability": _check_stability,
}


def check_config(name: str, cfg: ml_collections.ConfigDict) -> None:
    """The library's consistency checks of experiment ``name``'s config (a ``ValueError``
    or ``TypeError`` naming the field), run before anything expensive."""
    check = CONFIG_CHECKS.get(name)
    if check is not None:
        check(cfg)


def _first_line(module) -> str:
    return (module.__doc__ or "").strip().split("\n")[0]


def field_docs(name: str) -> dict[str, str]:
    """One-line docs of an experiment's config fields: the comment that ends the line
    ``cfg.<field> = ...  # doc`` in ``configs/<name>.py`` or a config module it builds on."""
    module = importlib.import_module(f"configs.{name}")
    shared = [
        m
        for m in vars(module).values()
        if inspect.ismodule(m) and m.__name__.startswith("configs.")
    ]
    docs: dict[str, str] = {}
    for m in (module, *shared):
        for line in inspect.getsource(m).splitlines():
            match = re.match(r"\s*cfg\.([\w.]+)\s*=.*#\s*(.+)$", line)
            if match:
                docs.setdefault(match[1], match[2].strip())
    return docs


def _flatten(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in sorted(cfg.items()):
        if isinstance(value, ml_collections.ConfigDict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((prefix + key, value))
    return rows


def experiment_help(name: str, preset: str = "default") -> str:
    """``python -m experiments NAME --help``: what the experiment is, then each config field
    (``--config.FIELD=DEFAULT``) with its one-line doc."""
    cfg = load_config(name, preset)
    docs = field_docs(name)
    rows = [(f"--config.{path}={value!r}", docs.get(path, "")) for path, value in _flatten(cfg)]
    width = max(len(flag) for flag, _ in rows)
    lines = [
        f"usage: python -m experiments {name} --out DIR [--preset P] [--no-progress] "
        "[--config.FIELD=VALUE ...]",
        "",
        _first_line(importlib.import_module(f"configs.{name}")),
        "",
        f"config fields (preset {preset!r}; defaults shown):",
    ]
    lines += [f"  {flag.ljust(width)}  {doc}".rstrip() for flag, doc in rows]
    return "\n".join(lines)


def _experiments_epilog() -> str:
    lines = ["experiments (python -m experiments EXPERIMENT --help lists its config fields):"]
    for name in experiments.EXPERIMENTS:
        lines.append(f"  {name:10s} {_first_line(importlib.import_module(f'configs.{name}'))}")
    return "\n".join(lines)


def registry_listing(argv: Sequence[str]) -> str:
    """``--list [GROUP]``: the registered names, one per line; ``--runs [GROUP]``: one line
    per stored run, ``NAME RESULTS_FOLDER [ARGS...]`` (what ``make figures`` runs)."""
    what, *rest = argv
    if len(rest) > 1:
        raise SystemExit(f"usage: python -m experiments {what} [{'|'.join(registry.GROUPS)}]")
    group = rest[0] if rest else None
    try:
        chosen = registry.names(group)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if what == "--list":
        return "\n".join(chosen)
    return "\n".join(
        " ".join((e.name, out, *args))
        for e in registry.experiments()
        if e.name in chosen
        for out, args in e.runs
    )


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--list", "--runs"):
        print(registry_listing(argv))
        return {}
    asked = [a for a in argv if a in experiments.EXPERIMENTS]
    if asked and ("-h" in argv or "--help" in argv):
        preset = "default"
        for i, a in enumerate(argv):
            if a.startswith("--preset="):
                preset = a.split("=", 1)[1]
            elif a == "--preset" and i + 1 < len(argv):
                preset = argv[i + 1]
        print(experiment_help(asked[0], preset))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(
        prog="python -m experiments",
        description=__doc__,
        epilog=_experiments_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", choices=experiments.EXPERIMENTS)
    parser.add_argument("--out", type=Path, required=True, help="directory for results")
    parser.add_argument("--preset", default="default", help="config preset (default, paper)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args, rest = parser.parse_known_args(argv)
    cfg = load_config(args.experiment, args.preset)
    try:
        apply_overrides(cfg, rest)
    except ValueError as err:
        parser.error(str(err))
    try:
        check_config(args.experiment, cfg)
    except (ValueError, TypeError) as err:  # config checks only; the run's errors propagate
        parser.error(str(err))
    try:
        check_out(args.out)
    except ValueError as err:
        parser.error(str(err))
    module = experiments.get(args.experiment)
    results = module.run(cfg, args.out, progress=not args.no_progress)
    summary = module.summarize(results)
    (args.out / "summary.txt").write_text(summary + "\n")
    print(summary)
    print(f"results: {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
