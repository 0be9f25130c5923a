"""Tasks: what the inner optimizer minimizes.

A task provides ``init_params()``, ``loss(params)`` and, for stochastic optimizers,
``num_examples`` and ``batch_loss(params, indices)``. ``LeastSquares`` also has a
validation set (``valid_loss``) and the ground truth (``test_error``). ``NQM`` is the noisy
quadratic model (minibatch gradient noise with covariance following the curvature).
"""

from l2l_jax.tasks.least_squares import LeastSquares
from l2l_jax.tasks.mnist import MnistMLP
from l2l_jax.tasks.nqm import NQM
from l2l_jax.tasks.quadratic import Quadratic

__all__ = ["NQM", "LeastSquares", "MnistMLP", "Quadratic"]
