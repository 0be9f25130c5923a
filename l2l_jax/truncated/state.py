"""The meta-training state: everything a checkpoint holds."""

from __future__ import annotations

from typing import Any

import chex
import jax

Array = jax.Array
MetaParams = chex.ArrayTree


@chex.dataclass(frozen=True)
class TruncatedState:
    """Everything meta-training needs to continue exactly (what checkpoints hold).

    Attributes:
      meta_params: the learned optimizer's weights (or an inner optimizer's hparams).
      opt_state: the meta-optimizer's state (wrapped in ``optax.apply_if_finite``).
      inner: the estimator's state, every array with the meta-batch ``B`` as leading
        axis: the ``B`` runs (an :class:`~.runs.InnerState`) for TBPTT and ES, a
        :class:`~.pes.PESState` (each pair's perturbed runs and accumulated
        perturbation) for PES.
      key: raw ``uint32[2]`` key data for the ES/PES perturbations of the next meta-step.
      step: meta-steps done so far (int32).
      nonfinite_count: meta-steps skipped because the meta-loss or meta-gradient was
        NaN/inf (int32).
    """

    meta_params: MetaParams
    opt_state: chex.ArrayTree
    inner: Any
    key: Array
    step: Array
    nonfinite_count: Array
