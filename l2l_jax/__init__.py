"""l2l_jax: differentiable meta-optimization in JAX.

The pipeline, one module each: ``tasks`` (what is optimized) -> ``inner`` (how: pure
optimizers unrolled with ``lax.scan``) -> ``objectives`` (how the run is scored) ->
``meta`` (meta-gradients by autodiff, forward mode or the stable log-space formula, and
meta-training).
"""

from l2l_jax import inner, meta, objectives, spectral, tasks

__version__ = "0.1.0"
__all__ = ["inner", "meta", "objectives", "spectral", "tasks"]
