"""Figure 3 of Wang et al. (2021): the TbT-TbV gap closes as the sample size n grows.

sigma = 1, n from d/4 to 20 d (TbV split evenly). ``default`` uses d = 200 so that
n = 20 d = 4000 stays cheap on 2 CPU cores (the paper: d = 1000, up to n = 20000).
"""

import ml_collections

from configs import least_squares


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = least_squares.base(preset)
    cfg.sigma = 1.0
    if preset == "default":
        cfg.d = 200
        cfg.m = 100
    cfg.n_over_d = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
    return cfg
