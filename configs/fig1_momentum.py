"""Figure 1 for heavy-ball momentum: meta-learning (eta, beta) with the log-loss.

The task is fig1's quadratic (``H = 0.5 X X^T``, ``X`` 20 x 40, seed 0: ``L ~ 48``). Heavy
ball (``inner.momentum``, optax's ``v <- g + beta v, w <- w - eta v``) starts at ``eta0 =
0.1, beta0 = 0.5``, past its stability boundary ``2 (1 + beta) / L ~ 0.063``: at ``t = 80``
``f(w_t) ~ 1e54`` overflows float32. Adam (``meta_lr``) on ``(1/t) log f(w_t)`` for
``meta_steps`` steps with each meta-gradient method; the minimizer is confirmed on a
``grid`` x ``grid`` grid over ``(eta, beta)`` evaluated in float64 (stable, no unroll).
"""

import ml_collections

from configs import fig1


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.task = fig1.get_config(preset).task
    cfg.dtype = "float32"
    cfg.steps = 80  # t
    cfg.eta0 = 0.1
    cfg.beta0 = 0.5
    cfg.meta_lr = 3e-3  # Adam on (eta, beta), cosine-decayed to 0 over the meta-steps
    cfg.meta_steps = 1500
    cfg.methods = ("stable", "autodiff", "forward")
    cfg.grid = 301  # points per axis of the float64 grid (eta up to 2 * 2 / L, beta < 1)
    cfg.rtol = 0.01  # "converged": within 1% of the grid's minimizer in both coordinates
    return cfg
