"""The differentiable meta-objective F(hyperparameters) of a full unroll, its gradient
methods, and meta-gradient descent on it.

* :func:`meta_objective` builds F from a task, an inner optimizer, a horizon and an
  objective; ``grad=`` picks how its gradient is computed: ``"autodiff"`` (reverse mode),
  ``"forward"`` (forward mode) or ``"stable"`` (log space, for linear inner dynamics: the
  ratio formula of Wang et al., Eq. 1-2, for GD, and projective forward mode with one shared
  log-scale, :mod:`.projective`, for momentum and Nesterov; :mod:`.stable`) or
  ``"logscaled"`` (reverse mode with one shared log-scale, for any unroll,
  :mod:`.logscaled`, whose ``value_and_grad`` also returns the meta-gradient's direction
  and log-norm). Every method returns the same value.
* :func:`minimize` runs meta-gradient descent on any such F (full unrolls; for truncated
  unrolls of a learned optimizer see :mod:`l2l_jax.truncated`).
"""

from l2l_jax.metagrad import logscaled
from l2l_jax.metagrad.minimize import MetaGD, MinimizeResult, NonFiniteWarning, meta_gd, minimize
from l2l_jax.metagrad.objective import METHODS, MetaObjective, meta_objective

__all__ = [
    "METHODS",
    "MetaGD",
    "MetaObjective",
    "MinimizeResult",
    "NonFiniteWarning",
    "logscaled",
    "meta_gd",
    "meta_objective",
    "minimize",
]
