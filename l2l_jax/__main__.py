"""``python -m l2l_jax`` ran the experiments; they are now the research package beside the
library: ``python -m experiments NAME --out DIR`` from a clone of the repository."""

import sys

sys.exit(
    "l2l_jax is the library; the paper experiments moved to the repository's research "
    "package. From a clone, run: python -m experiments " + (" ".join(sys.argv[1:]) or "--help")
)
