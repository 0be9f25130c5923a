"""Theorem 6 of Wang et al. (2021): with n >= 20 d samples, TbT's test error approaches
the optimal d sigma^2 / n.

``default`` uses d = 100 and n up to 40 d (the paper's d = 1000 needs n = 20000 samples
per task: see the ``paper`` preset).
"""

import ml_collections

from configs import least_squares


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = least_squares.base(preset)
    cfg.sigma = 1.0
    if preset == "default":
        cfg.d = 100
        cfg.m = 100
    cfg.n_over_d = (5.0, 10.0, 20.0, 40.0)
    cfg.n_test = 50  # the claim is about a mean: more test tasks, less noise
    return cfg
