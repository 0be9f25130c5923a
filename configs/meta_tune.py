"""Measured meta-training settings for Figures 4-5 (``experiments.meta_tune``).

On one setting's meta-training family (default: ``fig4b``, the hardest for TbV), the
learned optimizer is meta-trained from the warm start for every combination of meta
learning rate, PES perturbation scale and meta-batch in the grid, ``meta_steps`` each,
and scored every ``select_every`` meta-steps by its mean meta-loss on ``select_tasks``
held-out draws. The combination with the lowest held-out meta-loss is then continued to
``long_steps`` meta-steps, to see where the curve flattens.
"""

import ml_collections

from configs import fig4a, fig4b, fig4c

SETTINGS = {"fig4a": fig4a, "fig4b": fig4b, "fig4c": fig4c}


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.setting = "fig4b"  # whose data, architecture and horizon are used
    cfg.preset = preset  # the preset of that setting
    cfg.objective = "tbv"  # "tbv" or "tbt"
    cfg.seed = 0  # pools, held-out draws and the warm start (as seed 0 of the setting)
    cfg.meta_lrs = (3e-3, 1e-2, 3e-2)  # the meta-optimizer's learning rates
    cfg.es_sigmas = (0.01, 0.03)  # PES perturbation standard deviations
    cfg.meta_batches = (8,)  # inner runs per meta-step
    cfg.meta_steps = 100  # meta-steps per combination (fig4's budget before this measurement)
    cfg.select_every = 25  # held-out score every this many meta-steps
    cfg.select_tasks = 8  # held-out draws per score
    cfg.long_steps = 500  # continue the best combination to this many steps (0: skip)
    # "flattened": the best score of the last `flat_window` meta-steps improves on the
    # best before them by less than `flat_rtol` (relative)
    cfg.flat_window = 150
    cfg.flat_rtol = 0.02
    return cfg


def setting_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config of ``cfg.setting`` at ``cfg.preset``."""
    if cfg.setting not in SETTINGS:
        raise ValueError(f"setting must be one of {tuple(SETTINGS)}, got {cfg.setting!r}.")
    return SETTINGS[cfg.setting].get_config(cfg.preset)
