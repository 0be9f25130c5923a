"""Benchmarks for l2l_jax: ``python -m benchmarks.run --preset cpu-small`` (``make bench``).

Time per meta-gradient, compile time, XLA's memory estimate and accuracy against the
mpmath reference, for each meta-gradient method over unroll lengths ``t``. Results are
written as JSON, a markdown table and a plot under ``benchmarks/results/``.
"""

import os

# OpenBLAS (scipy's, which jaxlib's CPU LAPACK kernels such as eigh call) spins its own
# threads next to XLA's thread pool; on a shared 2-core machine that oversubscription
# stalled one 500 x 500 eigh for seconds instead of ~20 ms. Set before jax/scipy load
# OpenBLAS; an explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
