"""Shared test settings: a reproducible hypothesis profile and float64 helpers.

Float64 is process-global in JAX, so tests scope it with ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import os

# One OpenBLAS thread (see benchmarks/__init__.py): set before jax/scipy load it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, settings

settings.register_profile(
    "l2l",
    max_examples=40,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("l2l")


def unit_roundoff(dtype) -> float:
    """``u = eps / 2`` of a float dtype."""
    return float(np.finfo(np.dtype(dtype)).eps) / 2


def as_dtype(x, dtype):
    return jnp.asarray(x, dtype)
