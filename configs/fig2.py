"""Figure 2 of Wang et al. (2021): TbT vs TbV across noise levels sigma.

d = 1000, TbT with n = 500 training samples, TbV with n1 = n2 = 250; train and test RMSE
of GD run with each tuned step size on fresh tasks (test tasks train on n = 500 samples).
"""

import ml_collections

from configs import least_squares


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = least_squares.base(preset)
    cfg.sigmas = (0.5, 1.0, 2.0, 3.0, 4.0)
    cfg.n = 500  # TbT training samples; TbV splits them n1 = n2 = n / 2
    return cfg
