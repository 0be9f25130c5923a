"""Theorem 3 and Claim 2 of Wang et al. (2021): |F'(eta)| against the unroll length t.

For the last-iterate loss ``F = f(w_t)`` the meta-gradient vanishes (eta < 2/L) or
explodes (eta > 2/L) exponentially in t; for the log-loss ``F = (1/t) log f(w_t)`` it
stays bounded by Claim 2. Exact values come from mpmath; the library's autodiff and stable
meta-gradients are evaluated beside them in float32 and float64 to show where each one
stops being representable. Task: the fig1 task (``configs/fig1.py``).
"""

import ml_collections

from configs import fig1


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.task = fig1.get_config(preset).task
    cfg.steps = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
    cfg.eta_factors = (0.5, 1.2)  # eta = factor * 2/L: 1/L (below 2/L) and 2.4/L (above)
    cfg.objectives = ("last_loss", "log_loss")
    cfg.methods = ("autodiff", "stable")
    cfg.dtypes = ("float32", "float64")
    return cfg
