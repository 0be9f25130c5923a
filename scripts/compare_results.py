"""``python scripts/compare_results.py NEW STORED NAME ... --out FILE``: the comparison of
:mod:`experiments.compare` (``make figures-check``), kept at this path for the Makefile."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.compare import main

if __name__ == "__main__":
    sys.exit(main())
