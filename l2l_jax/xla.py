"""Compiler options for the library's jitted units of work (meta-steps, evaluations).

On the CPU backend, XLA's code generator prefers 256-bit vectors by default, also on
machines with AVX-512. The learned optimizers' fused per-coordinate MLP
(:func:`l2l_jax.learned.common.fused_mlp`) is bound by its multiply-adds, so 512-bit
vectors make it, and the meta-steps built on it, faster on an AVX-512 machine
(``L2L_JAX_XLA_DEFAULTS=1`` restores XLA's defaults, to compare the two side by side).
Where the CPU has no 512-bit vectors, LLVM keeps the widest it has.
On GPU and TPU no option is added.

:func:`cached` is the library's one policy for keeping compiled functions: a jitted unit
of work is built by a function of its static arguments (optimizer, step counts, config)
and memoized on them, so that a second call with equal arguments (a resume, the next
seed) does not compile again.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax

CPU_OPTIONS: dict[str, Any] = {"xla_cpu_prefer_vector_width": 512}
CACHE_SIZE = 32
_CACHE: dict[Any, Callable] = {}


def options(backend: str | None = None) -> dict[str, Any] | None:
    """``compiler_options`` for :func:`jax.jit` on ``backend`` (default: JAX's default).

    ``L2L_JAX_XLA_DEFAULTS=1`` in the environment turns them off (XLA's defaults), to
    measure what they change.
    """
    if os.environ.get("L2L_JAX_XLA_DEFAULTS") == "1":
        return None
    backend = backend or jax.default_backend()
    return dict(CPU_OPTIONS) if backend == "cpu" else None


def jit(fn: Callable, **kwargs: Any) -> Callable:
    """:func:`jax.jit` with :func:`options` for the default backend.

    Called inside another transformation (any argument is a tracer), it is the plain
    ``jax.jit(fn)``: JAX accepts compiler options on top-level jits only, and there the
    outer jit's options apply. ``.lower`` lowers the top-level (optioned) version.
    """
    tuned = jax.jit(fn, compiler_options=options(), **kwargs)
    plain = jax.jit(fn, **kwargs)

    @functools.wraps(fn)
    def call(*args: Any, **kw: Any) -> Any:
        traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kw)))
        return (plain if traced else tuned)(*args, **kw)

    call.lower = tuned.lower
    return call


def cached(key: Any, build: Callable[[], Callable]) -> Callable:
    """``build()`` memoized on ``key``: the one jit-cache policy of the library.

    ``key`` holds the static arguments the compiled function depends on (an optimizer, a
    config, step counts, a tag naming the unit of work). Equal keys share one compiled
    function; at most :data:`CACHE_SIZE` are kept (the oldest is dropped first). An
    unhashable key (e.g. a config holding a list) is not cached: ``build()`` runs every
    time, which costs a compilation but is never wrong.
    """
    try:
        hash(key)
    except TypeError:
        return build()
    if key not in _CACHE:
        if len(_CACHE) >= CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = build()
    return _CACHE[key]
