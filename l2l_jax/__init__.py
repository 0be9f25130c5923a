"""l2l_jax: differentiable meta-optimization in JAX.

The pipeline, one package each: ``tasks`` (what is optimized) -> ``inner`` (how: pure
optimizers unrolled with ``lax.scan``) -> ``objectives`` (how the run is scored) ->
``metagrad`` (the meta-objective F of a full unroll, its gradient by autodiff, forward
mode, the stable log-space formula or projective forward mode, and meta-gradient descent on
it) or ``truncated`` (meta-training a learned optimizer on truncated unrolls with TBPTT, ES
or PES). ``learned`` holds the learned optimizers; ``hyper`` tunes an optax optimizer's
hyperparameters online by hypergradient descent, in towers of any height.
"""

from l2l_jax import hyper, inner, metagrad, objectives, tasks, truncated
from l2l_jax.closed_forms import spectral

__version__ = "0.1.0"
__all__ = ["hyper", "inner", "metagrad", "objectives", "spectral", "tasks", "truncated"]
