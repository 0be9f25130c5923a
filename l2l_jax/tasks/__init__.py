"""Tasks: what the inner optimizer minimizes.

A task provides ``init_params()``, ``loss(params)`` and, for stochastic optimizers,
``num_examples`` and ``batch_loss(params, indices)``.
"""

from l2l_jax.tasks.quadratic import Quadratic

__all__ = ["Quadratic"]
