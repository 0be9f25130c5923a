"""``python -m l2l_jax <experiment> --out DIR``: see :mod:`l2l_jax.cli`."""

import os
import sys

# One OpenBLAS thread: jaxlib's CPU eigh calls scipy's OpenBLAS, whose threads otherwise
# compete with XLA's (see benchmarks/__init__.py). Before jax loads; the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from l2l_jax.cli import main

main(sys.argv[1:])
