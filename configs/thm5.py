"""Theorem 5 of Wang et al. (2021): eta*_TbT = Theta(1) but eta*_TbV = Theta(1/t).

d = 1000, n = 500 (TbT), n1 = n2 = 250 (TbV), a large noise level sigma, and unroll
lengths t in {25, 50, 100, 200, 400}.
"""

import ml_collections

from configs import least_squares


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = least_squares.base(preset)
    cfg.sigma = 2.0
    cfg.n = 500
    cfg.ts = (25, 50, 100, 200, 400)
    return cfg
