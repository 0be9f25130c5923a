"""Figure 1 of Wang et al. (2021): meta-training the step size of GD on a quadratic.

``default`` (the issue's setting, float32):
  * Task: ``H = scale * X X^T`` with ``X`` a 20 x 40 Gaussian matrix (footnote 2), ``w0``
    uniform on the unit sphere, ``scale = 0.5`` (seed 0: ``L ~ 48``, ``alpha ~ 1``), so
    that ``eta0 = 0.1`` is far above ``2/L ~ 0.042``: ``|1 - eta0 L|^(2t) ~ 3.8^160``
    overflows float32 and backpropagation returns NaN at every meta-step.
  * Meta-GD of Theorem 4 with ``mu_k = c / sqrt(k)``, ``c = 0.3 / L^2``: ``F'`` scales
    like ``L`` and ``eta`` like ``1/L``, so ``c ~ 1/L^2`` is the scale-free choice; with
    0.3 the stable run is within 1% of ``eta*`` after about 50 meta-steps.
``paper`` (the paper's code, Kolin96/learning-to-learn): ``H = X^T X`` with ``X`` 20 x 20,
  ``w0 ~ N(0, I)``, ``mu_k = 1 / (100 sqrt(k))``, 1000 meta-steps.
"""

import ml_collections


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.task = ml_collections.ConfigDict(
        {"seed": 0, "dim": 20, "width": 40, "scale": 0.5, "w0": "sphere"}
    )
    cfg.dtype = "float32"
    cfg.steps = 80  # t, the unroll length
    cfg.eta0 = 0.1
    cfg.meta_steps = 300
    cfg.c = 0.3  # mu_k = c / sqrt(k), in units of c_units
    cfg.c_units = "1/L^2"  # "1/L^2": c / L^2; "absolute": c as given
    cfg.methods = ("stable", "autodiff", "forward")
    cfg.rtol = 0.01  # "converged": within 1% of eta* from then on
    if preset == "paper":
        cfg.task.update({"width": 20, "scale": 1.0, "w0": "gaussian"})
        cfg.meta_steps = 1000
        cfg.c = 0.01
        cfg.c_units = "absolute"
    elif preset != "default":
        raise ValueError(f"preset must be 'default' or 'paper', got {preset!r}.")
    return cfg
