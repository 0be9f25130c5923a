"""The import graph of the library and the research packages: no circle, and no import
from a lower layer to a higher one.

The library's layers, lowest first (a module may import its own layer and the ones below):

0. ``input_checks``, ``xla``, ``reporting``, ``data``: plain helpers and data sources;
1. ``closed_forms`` (log-space numerics, closed forms, mpmath references), ``inner``,
   ``tasks``, ``objectives``: the pieces a pipeline is composed of;
2. ``hyper``, ``learned``: optimizers built from those pieces;
3. ``metagrad`` (full-unroll meta-objectives and their gradients), ``truncated``
   (truncated meta-training);
4. ``evaluation``, ``analysis``: evaluations and analyses of trained optimizers;
5. ``meta`` (the deprecated names' forwarder), ``__main__`` and the package's ``__init__``.

Above the library sit the research packages (:data:`RESEARCH`), each one layer, lowest
first: they may import ``l2l_jax`` and the research packages below them, and the library
never imports any of them:

6. ``configs``: the experiments' settings (``ml_collections`` configs);
7. ``experiments``: the research code (``python -m experiments NAME``), which reads
   ``configs``;
8. ``benchmarks``: ``make bench``, which reuses experiments' helpers (the machine's
   description, the Figure 2 grid) and configs; no experiment imports a benchmark.

No module of any of them is over 600 lines. Every ``import`` statement counts, including
those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "l2l_jax"
# The research packages above the library, lowest first (layers 6, 7, 8).
RESEARCH = ("configs", "experiments", "benchmarks")
PACKAGES = ("l2l_jax", *RESEARCH)
LAYERS = {
    "input_checks": 0,
    "xla": 0,
    "reporting": 0,
    "data": 0,
    "closed_forms": 1,
    "inner": 1,
    "tasks": 1,
    "objectives": 1,
    "hyper": 2,
    "learned": 2,
    "metagrad": 3,
    "truncated": 3,
    "evaluation": 4,
    "analysis": 4,
    "meta": 5,
    "__main__": 5,
    "": 5,  # l2l_jax/__init__.py
}


def modules(packages: tuple[str, ...] = ("l2l_jax",)) -> dict[str, Path]:
    """Dotted name -> file of every module of ``packages`` (by default the library's)."""
    out = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = (package, *path.relative_to(ROOT / package).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules that ``name`` imports (the longest known prefix of each)."""
    found = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package[: len(package) - node.level + 1]
                base = ".".join([*prefix, base] if base else prefix)
            targets = [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the modules it imports, over the library and the research packages."""
    known = modules(PACKAGES)
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(module: str) -> int:
    package, _, rest = module.partition(".")
    if package in RESEARCH:
        return max(LAYERS.values()) + 1 + RESEARCH.index(package)
    top = rest.split(".")[0]
    assert top in LAYERS, f"{module}: add its top-level name to LAYERS"
    return LAYERS[top]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    g = graph()
    assert "l2l_jax.learned.adapters" in g["l2l_jax.learned"]
    assert "l2l_jax.inner.optimizers" in g["l2l_jax.truncated.runs"]
    # the research packages too, and their imports of each other and of the library
    assert {"experiments.common", "benchmarks.methods"} <= g["benchmarks.run"]
    assert "configs.fig2" in g["benchmarks.least_squares"]
    assert "l2l_jax.tasks" in g["benchmarks.common"]
    assert layer("l2l_jax.meta") < layer("configs") < layer("experiments.cli")
    assert layer("experiments") < layer("benchmarks.run")
    # a relative import and an import inside a function are both seen
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_circle():
    """Submodules of one package importing each other count too (a package's
    ``__init__`` importing its own submodules is the only exception: it re-exports)."""
    edges = {
        m: {t for t in targets if not m.startswith(t + ".")}  # a module -> its own package
        for m, targets in graph().items()
    }
    assert cycles(edges) == []


def test_no_import_runs_up_a_layer():
    upward = [
        f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
        for m, targets in graph().items()
        for t in targets
        if layer(t) > layer(m)
    ]
    assert upward == []


def test_no_module_is_over_600_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in modules(PACKAGES).items()}
    assert {n: k for n, k in long.items() if k > 600} == {}


EXTRAS = ("mpmath", "matplotlib", "tensorflow_datasets", "mlxtend", "scipy")
_WITHOUT_EXTRAS = f"""
import sys
for name in {EXTRAS!r}:
    sys.modules[name] = None  # importing it now raises ImportError
import jax, jax.numpy as jnp
from l2l_jax import inner, learned, metagrad, tasks, truncated
task = tasks.Quadratic.random(jax.random.key(0), dim=4)
f = metagrad.meta_objective(task, inner.gd(), "log_loss", steps=20, grad="stable")
assert jnp.isfinite(jax.grad(f)(0.05))
cfg = truncated.TruncatedConfig(horizon=8, segment=4, meta_batch=2, eval_batch_size=None)
lopt = learned.MLPLOpt(learned.LOptConfig(hidden_sizes=(2,), decays=(0.9,), time_scales=(1.0,)))
run = truncated.meta_train(task, lopt, cfg, 2, key=jax.random.key(1), progress=False)
assert len(run.metrics) == 2
print("core ok")
"""


def test_the_core_runs_without_the_experiment_extras():
    """pyproject's ``experiments`` extra (mpmath, matplotlib, scipy, TFDS, mlxtend) is
    not needed to meta-train: the library imports none of them at import or in use."""
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "core ok" in out.stdout, out.stderr[-2000:]


def test_one_state_style():
    """Every ``*State`` class is a frozen ``chex.dataclass`` pytree, except the state of an
    optax transformation (``hyper.HyperState``, ``learned.adapters.OptaxState``), which is a
    ``NamedTuple`` as in optax; the
    optimizers, configs and estimators that key compiled functions are frozen (hashable)."""
    import dataclasses
    import importlib
    import inspect
    from typing import NamedTuple  # noqa: F401 (the rule's exception)

    from l2l_jax import truncated

    estimators = {c.__name__ for c in truncated.ESTIMATORS.values()}  # the registered ones

    states, statics = [], []
    for name in modules():
        skip = name.endswith(("__main__", "l2l_jax.meta"))
        module = None if skip else importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass) if module else []:
            if cls.__module__ != name or getattr(cls, "_is_protocol", False):
                continue
            if cls_name.endswith("State"):
                states.append(cls)
            if cls_name.endswith(("Config", "Inner", "InnerOptimizer")) or cls_name in estimators:
                statics.append(cls)
    assert len(states) >= 6, states
    for cls in states:
        if cls.__name__ in ("HyperState", "OptaxState"):  # optax transformations' states
            assert issubclass(cls, tuple) and hasattr(cls, "_fields")
            continue
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls
        leaves = jax.tree_util.tree_leaves(cls(**{f.name: 1.0 for f in dataclasses.fields(cls)}))
        assert len(leaves) == len(dataclasses.fields(cls)), cls  # a pytree: fields are leaves
    assert len(statics) >= 5, statics
    for cls in statics:
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls


def test_truncated_meta_training_does_not_import_learned_optimizers():
    """The generic meta-step takes any inner optimizer, and a learned optimizer supplies
    its own adapter (``as_inner_optimizer()``): no module of ``l2l_jax.truncated`` imports
    ``l2l_jax.learned``."""
    g = graph()
    truncated_modules = [
        m for m in g if m == "l2l_jax.truncated" or m.startswith("l2l_jax.truncated.")
    ]
    assert len(truncated_modules) > 10  # the package's modules were found
    found = {
        m: sorted(t for t in g[m] if t == "l2l_jax.learned" or t.startswith("l2l_jax.learned."))
        for m in truncated_modules
    }
    assert {m: t for m, t in found.items() if t} == {}
