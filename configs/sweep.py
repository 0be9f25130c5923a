"""Sweep of Wang et al. (2021), Section 5: where does meta-training of eta succeed?

Cells: ``t`` in ``steps`` x ``eta0 = f * 2/L`` for ``f`` in ``eta0_factors`` (one below
and one above ``2/L``) x ``dtypes`` x ``methods``, plus meta-GD fed exact (mpmath)
meta-gradients as the yardstick. Every cell runs the same meta-GD (Theorem 4,
``mu_k = c / sqrt(k)``, ``c = 0.3 / L^2``, see ``configs/fig1.py``) for ``meta_steps``
steps on the fig1 task. Success: the last ``window`` iterates are within ``rtol`` of
``eta*(t)``.

``paper``: the paper's task and meta step size (``configs/fig1.py``'s ``paper``).
"""

import ml_collections

from configs import fig1


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    base = fig1.get_config(preset)
    cfg = ml_collections.ConfigDict()
    cfg.task = base.task
    cfg.steps = (20, 80, 320, 1280, 5120)
    cfg.eta0_factors = (0.5, 2.4)  # eta0 = factor * 2/L: 1/L and 4.8/L
    cfg.dtypes = ("float32", "float64")
    cfg.methods = ("stable", "forward", "autodiff")
    cfg.exact = True  # also run meta-GD with mpmath meta-gradients
    cfg.meta_steps = 1000
    cfg.c = base.c
    cfg.c_units = base.c_units
    cfg.rtol = 0.01
    cfg.window = 100
    return cfg
