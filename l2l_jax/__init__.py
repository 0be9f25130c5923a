"""l2l_jax: differentiable meta-optimization in JAX.

The pipeline, one module each: ``tasks`` (what is optimized) -> ``inner`` (how: pure
optimizers unrolled with ``lax.scan``) -> ``objectives`` (how the run is scored) ->
``meta`` (meta-gradients by autodiff, forward mode or the stable log-space formula, and
meta-training). ``hyper`` tunes an optax optimizer's hyperparameters online by
hypergradient descent, in towers of any height.
"""

from l2l_jax import hyper, inner, meta, objectives, tasks
from l2l_jax.closed_forms import spectral

__version__ = "0.1.0"
__all__ = ["hyper", "inner", "meta", "objectives", "spectral", "tasks"]
