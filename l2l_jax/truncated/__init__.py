"""Meta-training a learned optimizer with truncated unrolls.

The training loop of Metz et al. (2019, "Understanding and correcting pathologies in the
training of learned optimizers", Sec. 3-4), as used by Wang et al. (2021, Sec. 5) for the
MNIST learned optimizer: each of ``B`` inner runs (the *meta-batch*) trains a task for a
horizon of ``T`` inner steps; one *meta-step* advances every run by a *segment* of ``K``
steps, estimates the gradient of the segment's meta-loss with respect to the
meta-parameters, and applies one meta-optimizer update. A run that reaches ``T`` starts
over from a new initialization with a new data order.

One file per piece, in pipeline order:

* :mod:`.config`: :class:`TruncatedConfig` and the default meta-optimizer.
* :mod:`.tasks`: what a task and an inner optimizer must provide (checked early).
* :mod:`.runs`: one inner run (:class:`InnerState`), one inner step with the restart at the
  horizon, a segment of ``K`` steps in one :func:`jax.lax.scan`.
* :mod:`.estimator`: the interface of the meta-gradient estimators (:class:`Estimator`) and
  their registry of names (:data:`ESTIMATORS`); one file each, an object holding its own
  settings: :mod:`.tbptt` (:class:`TBPTT`, truncated backpropagation),
  :mod:`.logscaled_tbptt` (:class:`LogScaledTBPTT`, the same by the log-scaled reverse
  pass, finite past float32's overflow), :mod:`.es`
  (:class:`ES`, antithetic truncated ES), :mod:`.pes` (:class:`PES`, persistent ES,
  unbiased across truncations).
* :mod:`.domains`: named hyperparameters (learning rate, ``eps``, decays) learned in an
  unconstrained space (log, logit), so no update or ES/PES perturbation leaves their domain.
* :mod:`.step`: :class:`TruncatedState` and the jitted meta-step (non-finite steps skipped
  and counted).
* :mod:`.sharding`: the meta-batch split over a 1-d device mesh.
* :mod:`.checkpoints`: orbax checkpoints of the whole state.
* :mod:`.loop`: :func:`meta_train`, with progress bar, JSONL metrics and resume.
"""

from l2l_jax.truncated.checkpoints import (
    _config_with_defaults,
    host_value,
    restore_checkpoint,
    save_checkpoint,
    to_host,
)
from l2l_jax.truncated.config import (
    OBJECTIVES,
    TruncatedConfig,
    default_meta_optimizer,
)
from l2l_jax.truncated.es import ES, es_gradient
from l2l_jax.truncated.estimator import ESTIMATORS, Estimator
from l2l_jax.truncated.logscaled_tbptt import LogScaledTBPTT, logscaled_tbptt_gradient
from l2l_jax.truncated.loop import TruncatedResult, meta_train
from l2l_jax.truncated.pes import PES, PESState, pes_gradient
from l2l_jax.truncated.runs import (
    InnerState,
    fresh_run,
    inner_step,
    run_keys,
    segment_loss,
)
from l2l_jax.truncated.sharding import (
    check_mesh,
    meta_batch_mesh,
    replicate,
    shard_state,
    state_sharding,
)
from l2l_jax.truncated.state import TruncatedState
from l2l_jax.truncated.step import estimate, init_state, make_meta_step, meta_step
from l2l_jax.truncated.tasks import (
    check_task,
)
from l2l_jax.truncated.tbptt import TBPTT, tbptt_gradient

__all__ = [
    "ES",
    "ESTIMATORS",
    "OBJECTIVES",
    "PES",
    "TBPTT",
    "Estimator",
    "InnerState",
    "LogScaledTBPTT",
    "PESState",
    "TruncatedConfig",
    "TruncatedResult",
    "TruncatedState",
    "_config_with_defaults",
    "check_mesh",
    "check_task",
    "default_meta_optimizer",
    "es_gradient",
    "estimate",
    "fresh_run",
    "host_value",
    "init_state",
    "inner_step",
    "logscaled_tbptt_gradient",
    "make_meta_step",
    "meta_batch_mesh",
    "meta_step",
    "meta_train",
    "pes_gradient",
    "replicate",
    "restore_checkpoint",
    "run_keys",
    "save_checkpoint",
    "segment_loss",
    "shard_state",
    "state_sharding",
    "tbptt_gradient",
    "to_host",
]
