"""Benchmarks for l2l_jax: ``python -m benchmarks.run --preset cpu-small`` (``make bench``).

Time per meta-gradient, compile time, XLA's memory estimate and accuracy against the
mpmath reference, for each meta-gradient method over unroll lengths ``t``
(:mod:`benchmarks.methods`), then the groups of :data:`benchmarks.run.GROUPS`. Results are
written as JSON, a markdown table and a plot under ``benchmarks/results/``.

Layout: :mod:`benchmarks.run` and :mod:`benchmarks.group` run groups; each group module
imports only the shared helpers (:mod:`benchmarks.common`, :mod:`benchmarks.timing`, the
``learned_*`` pieces), the library, and the research packages (``experiments``,
``configs``), which never import ``benchmarks``.
"""

import os

# OpenBLAS (scipy's, which jaxlib's CPU LAPACK kernels such as eigh call) spins its own
# threads next to XLA's thread pool; the two oversubscribe the cores and a LAPACK call can
# stall far beyond its own cost, which would distort the timings. Set before jax/scipy
# load OpenBLAS; an explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
