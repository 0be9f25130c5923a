"""Figure 4(a) of Wang et al. (2021): 1000 MNIST digits, clean labels.

TbT trains on the 1000 digits, TbV on 800 of them with 200 for validation; settings
shared with the other MNIST figures are in ``configs/mnist_lopt.py``.
"""

import ml_collections

from configs import mnist_lopt


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = mnist_lopt.base(preset)
    cfg.n_samples = 1000
    cfg.label_noise = 0.0
    return cfg
