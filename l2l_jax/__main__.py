"""``python -m l2l_jax <experiment> --out DIR``: see :mod:`l2l_jax.cli`."""

import sys

from l2l_jax.cli import main

main(sys.argv[1:])
