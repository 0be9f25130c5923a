"""Stability of a learned optimizer on the noisy quadratic model (Harrison et al. 2022, Sec. 3).

``default`` (about 1-2 minutes on 2 CPU cores):
  * Task: ``tasks.NQM.power_law`` with ``d = 16``, ``h_i = 1/i`` (Zhang et al. 2019's
    spectrum), gradient noise ``Var = h_i / B`` at minibatch ``B = 16`` (``C = H``),
    ``w_0 ~ N(0, I)`` per run.
  * Learned optimizer: the plain ``learned.MLPLOpt`` (Metz et al. 2019 features, one hidden
    layer of 32, ``step_mult = exp_mult = 1e-3``), meta-trained with
    ``truncated.meta_train``: TBPTT, segments of 10 inner steps, horizon 100, 4 runs,
    Adam(3e-3) clipped at 1, 3,000 meta-steps; the meta-loss is the noiseless NQM loss of
    every iterate (``eval_batch_size = None``).
  * Analysis: eigenvalues of the trained optimizer's linearized dynamics at the initial
    point and at ``analysis.points`` along a 200-step run; spectral radius against the
    curvature scale (NQMs with ``c * h``, ``c`` in ``[1e-2, 1e2]``) and against a global
    step-size multiplier ``s`` of the learned optimizer (``stability.scaled_step``); the
    GD and heavy-ball stability regions (step size x curvature) with their analytic
    boundaries.
``paper``: closer to the NQM of Zhang et al. / Harrison et al. in size and training
  length (``d = 64``, horizon 200, 8 runs, 20,000 meta-steps, 400-step analysis runs).
  The paper's exact meta-training settings are not reproduced.
"""

import ml_collections


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0  # NQM noise/init keys and meta-training key
    cfg.nqm = ml_collections.ConfigDict(
        {"dim": 16, "power": 1.0, "scale": 1.0, "noise_scale": 1.0, "init_scale": 1.0}
    )
    cfg.batch_size = 16  # inner minibatch B: gradient noise variance noise_scale * h / B
    cfg.lopt = ml_collections.ConfigDict(
        {"hidden_sizes": (32,), "step_mult": 1e-3, "exp_mult": 1e-3}
    )
    cfg.train = ml_collections.ConfigDict(
        {
            "meta_steps": 3000,
            "horizon": 100,
            "segment": 10,
            "meta_batch": 4,
            "meta_lr": 3e-3,
            "clip": 1.0,
            "estimator": "tbptt",
        }
    )
    cfg.analysis = ml_collections.ConfigDict(
        {
            "steps": 200,  # length of the analysed runs (2 x the horizon)
            "points": (0, 1, 3, 10, 30, 100, 199),  # steps t at which J is computed
            "curvature_scales": (1e-2, 1e2, 9),  # (min, max, count), log-spaced
            "step_scales": (1e-2, 1e2, 13),  # (min, max, count), log-spaced
            "grid_curvature_scales": (1e-2, 1e2, 9),  # columns of the step-scale grid
            "baselines": ("sgd", "adam"),  # tuned on the step size only
            "sgd_lrs": (1e-2, 2.0, 25),  # SGD step sizes tried for the baseline
            "adam_lrs": (1e-3, 1.0, 25),  # Adam step sizes tried for the baseline
        }
    )
    cfg.sweep = ml_collections.ConfigDict(
        {
            "step_sizes": (1e-3, 1e1, 121),  # (min, max, count), log-spaced
            "curvatures": (1e-2, 1e3, 121),
            "betas": (0.5, 0.9),  # heavy-ball panels
        }
    )
    cfg.tol = 1e-6  # stable: spectral radius <= 1 + tol
    if preset == "paper":
        cfg.nqm.dim = 64
        cfg.train.update({"meta_steps": 20000, "horizon": 200, "segment": 20, "meta_batch": 8})
        cfg.analysis.steps = 400
        cfg.analysis.points = (0, 1, 3, 10, 30, 100, 200, 399)
    elif preset != "default":
        raise ValueError(f"preset must be 'default' or 'paper', got {preset!r}.")
    return cfg
