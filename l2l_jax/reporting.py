"""Results I/O shared by :mod:`l2l_jax.evaluation` and the experiments: JSON-safe numbers
(non-finite floats become ``null``), atomic JSON files and PNG figures (Agg backend)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import jax
import numpy as np


def jsonable(x):
    """Arrays and numpy scalars -> lists and floats; non-finite floats -> None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array)):
        return jsonable(np.asarray(x).tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    return x


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as JSON atomically (temp file + ``os.replace``), readable like the
    other outputs (``0666`` less the umask; a temp file alone would be ``0600``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(jsonable(payload), f, indent=1)
        tmp = f.name
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def save_figure(fig, path: Path) -> str:
    """Save a matplotlib figure as PNG and close it; returns the file name."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path.name


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
