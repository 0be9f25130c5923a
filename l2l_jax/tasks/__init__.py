"""Tasks: what the inner optimizer minimizes.

The contracts are the protocols of :mod:`l2l_jax.tasks.base`: a :class:`Task` has
``init_params(key)`` and ``loss(params)``; a :class:`MinibatchTask` adds ``num_examples``
and ``batch_loss(params, indices)``; a :class:`ValidationTask` adds ``num_valid``,
``valid_loss`` and ``valid_batch_loss``. ``LeastSquares`` also has the ground truth
(``test_error``); ``NQM`` is the noisy quadratic model (minibatch gradient noise with
covariance following the curvature); :func:`nnx_task` makes any Flax NNX model, loss and
arrays a task. A task whose loss under a linear optimizer is a quadratic in the iterate
declares its :class:`LinearDynamics` (:class:`LinearDynamicsTask`, ``grad="stable"``); a
task that computes the log of its loss in log space declares ``log_loss`` /
``log_valid_loss`` (:class:`LogLossTask`, :class:`LogValidLossTask`, helpers in
:mod:`l2l_jax.tasks.log_space`; log objectives under ``grad="logscaled"``).
"""

from l2l_jax.tasks import log_space
from l2l_jax.tasks.base import MinibatchTask, Task, ValidationTask
from l2l_jax.tasks.least_squares import LeastSquares
from l2l_jax.tasks.linear import LinearDynamics, LinearDynamicsTask
from l2l_jax.tasks.log_space import LogLossTask, LogValidLossTask
from l2l_jax.tasks.mnist import MnistMLP
from l2l_jax.tasks.nnx_task import NNXTask, nnx_task
from l2l_jax.tasks.nqm import NQM
from l2l_jax.tasks.quadratic import Quadratic

__all__ = [
    "NQM",
    "LeastSquares",
    "LinearDynamics",
    "LinearDynamicsTask",
    "LogLossTask",
    "LogValidLossTask",
    "MinibatchTask",
    "MnistMLP",
    "NNXTask",
    "Quadratic",
    "Task",
    "ValidationTask",
    "log_space",
    "nnx_task",
]
