"""Figure 4(b) of Wang et al. (2021): 1000 MNIST digits, 20% label noise.

20% of the labels (training and validation rows) are replaced by uniform random digits
(which may equal the true label, as in the paper's code); test accuracy is on the clean
test labels. The same run gives Figure 5 (training accuracy), ``fig5.png``. Settings
shared with the other MNIST figures are in ``configs/mnist_lopt.py``.
"""

import ml_collections

from configs import mnist_lopt


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = mnist_lopt.base(preset)
    cfg.n_samples = 1000
    cfg.label_noise = 0.2
    return cfg
