"""``python -m experiments <experiment> --out DIR``: see :mod:`experiments.cli`."""

import os
import sys

# One OpenBLAS thread: jaxlib's CPU eigh calls scipy's OpenBLAS, whose threads otherwise
# compete with XLA's (see benchmarks/__init__.py). Before jax loads; the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from experiments.cli import main

main(sys.argv[1:])
