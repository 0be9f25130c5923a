"""The tuning protocol of Figures 4-5 (``experiments.meta_tune``): one procedure chooses the
learned optimizer's start and meta-learning rate for **both** objectives, on a seed and a
pool of digits that no reported seed uses.

On the setting's tuning pool (``tuning_pool_fraction`` of the training digits, split off by
``tuning_pool_seed``) with its ``tuning_seed``:

1. **start**: the warm start is evaluated at every ``descent_scales`` value on draws of
   the setting's family (default fig4b: 1000 digits, 20% label noise) for ``horizon``
   steps; the chosen scale is the largest whose training accuracy is at most the
   setting's ``start_train_acc_max`` (a start that does not already memorize);
2. **meta learning rate**: from that start, each objective is meta-trained with every
   ``meta_lrs`` value by the setting's own protocol (cosine decay, held-out score on
   ``select_tasks`` draws, until converged); per objective the rate with the lowest final
   held-out score among the converged runs is chosen;
3. **the score's resolution**: at each objective's chosen run, the held-out score of
   ``resolution_copies`` copies of its kept meta-parameters, each entry displaced by
   Gaussian noise of SD ``resolution_eps``: the smallest movement of the score the
   convergence criterion can attribute to meta-training rather than to the score itself.

The choices are what ``configs/mnist_lopt.py`` sets (``descent_scale``, ``meta_lr``); a test
checks that they agree with the stored ``results/meta_tune/results.json``.
"""

import ml_collections

from configs import fig4a, fig4b, fig4c

SETTINGS = {"fig4a": fig4a, "fig4b": fig4b, "fig4c": fig4c}


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.setting = "fig4b"  # whose data, architecture, horizon and protocol are used
    cfg.preset = preset  # the preset of that setting
    cfg.objectives = ("tbt", "tbv")  # tuned by the same procedure
    cfg.descent_scales = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05)  # the start's step scale
    cfg.meta_lrs = (3e-3, 1e-2, 3e-2)  # the meta-optimizer's peak learning rates
    # the held-out score's resolution at each chosen run (experiments.mnist_meta.score_resolution)
    cfg.resolution_eps = 1e-6  # SD of the displacement of every meta-parameter
    cfg.resolution_copies = 6  # displaced copies scored
    return cfg


def setting_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config of ``cfg.setting`` at ``cfg.preset``."""
    if cfg.setting not in SETTINGS:
        raise ValueError(f"setting must be one of {tuple(SETTINGS)}, got {cfg.setting!r}.")
    return SETTINGS[cfg.setting].get_config(cfg.preset)
