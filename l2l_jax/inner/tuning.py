"""The one step-size tuner: score every step size of a grid, keep the best.

Every experiment that tunes a baseline's step size (the evaluation's SGD and Adam, the
OOD study's Adam, the stability experiment's baselines) and the closed-form grid search of
:func:`l2l_jax.closed_forms.spectral_ls.grid_search` decide with :func:`best_index`;
:func:`grid_search` scores a grid in one jitted ``vmap`` and :func:`choice` writes the
decision down.

Numerics: a non-finite score (a run that diverged to ``inf``/``NaN``) counts as ``+inf``,
so it is never chosen while any step size scores finite; ties go to the first step size
of the grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import xla

Array = jax.Array


def finite_or_inf(scores):
    """``scores`` with every non-finite entry replaced by ``+inf``: a NumPy array stays
    NumPy (float64 stays float64), anything else goes through ``jax.numpy`` (under jit)."""
    xp = np if isinstance(scores, np.ndarray) else jnp
    return xp.where(xp.isfinite(scores), scores, xp.inf)


def best_index(scores):
    """Index of the lowest score (non-finite: ``+inf``; ties: the first). Works under jit."""
    xp = np if isinstance(scores, np.ndarray) else jnp
    return xp.argmin(finite_or_inf(scores))


def check_grid(lrs: Sequence[float] | np.ndarray) -> np.ndarray:
    """``lrs`` as a float64 array; ``ValueError`` unless it is a non-empty 1-d grid of
    finite step sizes >= 0."""
    grid = np.asarray(lrs, np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid < 0):
        raise ValueError(f"lrs must be a non-empty 1-d grid of step sizes >= 0, got {lrs!r}.")
    return grid


def choice(lrs, scores) -> dict[str, Any]:
    """The decision on a scored grid: ``lrs``, ``score`` (non-finite -> ``inf``),
    ``diverged``, ``best_index`` and ``best_lr`` (NumPy arrays and Python numbers;
    ``reporting.jsonable`` writes ``inf`` as ``null``)."""
    lrs = np.asarray(lrs)
    scores = finite_or_inf(np.asarray(scores, np.float64))
    best = int(best_index(scores))
    return {
        "lrs": lrs,
        "score": scores,
        "diverged": ~np.isfinite(scores),
        "best_index": best,
        "best_lr": float(lrs[best]),
    }


def grid_search(
    score: Callable[..., Any], lrs, *args: Any, dtype=jnp.float32, key: Any = None
) -> dict[str, Any]:
    """Score every step size of ``lrs`` in one jitted ``vmap`` and choose (:func:`choice`).

    ``score(lr, *args)`` maps one step size (a traced scalar of ``dtype``) and ``args``
    (shared by every step size) to an array of values, e.g. the final validation losses
    of a few runs; a step size's criterion is the float64 mean of its values (non-finite:
    ``+inf``). Returns :func:`choice`'s dict plus ``values`` (``(n_lrs, ...)``, raw).
    ``key``: the static arguments ``score`` depends on, so the compiled grid is kept for
    the next call (:func:`l2l_jax.xla.cached`); ``None`` compiles every call.
    """
    grid = check_grid(lrs)
    build = lambda: xla.jit(jax.vmap(score, in_axes=(0, *(None,) * len(args))))
    fn = build() if key is None else xla.cached(("tuning.grid_search", key), build)
    values = np.asarray(fn(jnp.asarray(grid, dtype), *args), np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        criterion = values.reshape(grid.size, -1).mean(axis=1)
    return {**choice(grid, criterion), "values": values}
