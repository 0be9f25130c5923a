"""The settings of truncated meta-training (:class:`TruncatedConfig`) and the default
meta-optimizer."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import optax

from l2l_jax import input_checks, objectives
from l2l_jax.inner.unroll import remat_segment
from l2l_jax.truncated import estimator as estimators
from l2l_jax.truncated.estimator import Estimator

OBJECTIVES = ("tbt", "tbv")  # the built-in names; any objectives.IterateObjective works
# the settings that moved into the estimator object: (old field, its field there)
MOVED_TO_ESTIMATOR = {"es_sigma": "sigma", "es_pairs": "pairs"}


def legacy_estimator(name: Any, settings: Mapping[str, Any]) -> Any:
    """The estimator that a name and the removed ``es_sigma``/``es_pairs`` settings
    (:data:`MOVED_TO_ESTIMATOR`, in ``settings``) meant before estimators held their own:
    the registered estimator with those values as its fields (those it lacks, e.g. TBPTT's,
    were ignored then). An estimator object or an unknown name is returned as it is."""
    if not isinstance(name, str) or name not in estimators.ESTIMATORS:
        return name
    cls = estimators.ESTIMATORS[name]
    own = {f.name for f in dataclasses.fields(cls)}
    moved = MOVED_TO_ESTIMATOR.items()
    return cls(**{new: settings[old] for old, new in moved if old in settings and new in own})


@dataclasses.dataclass(frozen=True)
class TruncatedConfig:
    """Settings of truncated meta-training (static: changing one recompiles).

    Attributes:
      horizon: ``T``, inner steps per inner run; a run is re-initialized when it reaches T.
      segment: ``K``, inner steps per meta-step (the truncation length).
      meta_batch: ``B``, inner runs trained in parallel (``vmap``); they differ in
        initialization and data order.
      batch_size: inner minibatch size; ``None`` takes the optimizer's ``batch_size``, and
        full-batch gradients (``task.loss``) when that is ``None`` too.
      objective: the meta-loss of each iterate, averaged over the segment: ``"tbt"``
        (train-by-train: training loss of the iterates), ``"tbv"`` (train-by-validation:
        validation loss of the iterates), or any
        :class:`~l2l_jax.objectives.IterateObjective`, e.g. ``objectives.tbv()`` or a
        user's ``objectives.iterate_objective(fn, name)`` (then ``eval_batch_size=None``).
        Checkpoints record its ``name``.
      eval_batch_size: the meta-loss of each iterate is the loss on a fresh minibatch of
        this size (training rows for tbt, validation rows for tbv), drawn independently of
        the minibatch the inner step used; ``None`` uses the full training
        (``task.loss``) or validation (``task.valid_loss``) loss.
      estimator: how the meta-gradient of a segment is estimated, an object with its own
        settings: ``truncated.TBPTT()`` (truncated backpropagation, :mod:`.tbptt`),
        ``truncated.ES(sigma, pairs)`` (antithetic truncated evolution strategies,
        :mod:`.es`), ``truncated.PES(sigma, pairs)`` (persistent evolution strategies,
        unbiased across truncations, :mod:`.pes`) or any
        :class:`~.estimator.Estimator`; a name of :data:`~.estimator.ESTIMATORS`
        (``"tbptt"``, ``"es"``, ``"pes"``) stands for its default object. The field
        always holds the object (``config.estimator.name`` is its name); checkpoints
        record its name and settings.
      meta_lr: learning rate of the default meta-optimizer (Adam; it updates ``u`` of a
        hyperparameter with a domain, :mod:`.domains`).
      clip: global-norm clip of the meta-gradient in the default meta-optimizer.
      stagger: start run ``i`` at inner step ``floor(i T / B)`` (with fresh parameters, so
        its first run is shorter), which spreads the re-initializations over time and
        decorrelates the runs; ``False`` starts them all at 0.
      reset_nonfinite: also re-initialize a run whose parameters became NaN/inf (else it
        would stay non-finite forever).
      remat: bounded memory for ``estimator="tbptt"`` with long segments: ``None`` (off),
        or a length ``s`` for which the ``K``-step scan runs in segments of ``s`` steps
        under :func:`jax.checkpoint` (memory ~ ``K / s + s`` steps' residuals instead of
        ``K``, about one extra forward pass of time); ``True`` is ``s = ceil(sqrt(K))``.
        The gradient agrees with ``None`` up to float rounding.
    """

    horizon: int = 200
    segment: int = 20
    meta_batch: int = 8
    batch_size: int | None = None
    objective: str | objectives.IterateObjective = "tbt"
    eval_batch_size: int | None = 32
    estimator: str | Estimator = "tbptt"
    meta_lr: float = 1e-3
    clip: float = 1.0
    stagger: bool = True
    reset_nonfinite: bool = True
    remat: int | bool | None = None
    # removed settings, accepted only to say where they went (not fields of the config)
    es_sigma: dataclasses.InitVar[float | None] = None
    es_pairs: dataclasses.InitVar[int | None] = None

    def __post_init__(self, es_sigma: float | None, es_pairs: int | None) -> None:
        if es_sigma is not None or es_pairs is not None:
            raise TypeError(
                "TruncatedConfig no longer takes es_sigma or es_pairs: the estimator holds "
                "its own settings, use estimator=truncated.PES(sigma=..., pairs=...) (or "
                "truncated.ES(sigma=..., pairs=...))."
            )
        for name in ("horizon", "segment", "meta_batch"):
            input_checks.positive_int(name, getattr(self, name))
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) is not None:
                input_checks.positive_int(name, getattr(self, name))
        for name in ("meta_lr", "clip"):
            input_checks.positive(name, getattr(self, name))
        if isinstance(self.objective, str) and self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {OBJECTIVES} or an objectives.IterateObjective, "
                f"got {self.objective!r}."
            )
        objectives.resolve_iterate(self.objective)  # TypeError for anything else
        hash(self.objective)  # a static argument of the compiled meta-step
        # a name (or to_dict's mapping) becomes its object: one key per compiled program
        object.__setattr__(self, "estimator", estimators.resolve(self.estimator))
        if self.segment > self.horizon:
            raise ValueError(
                f"segment (K = {self.segment}) must be <= horizon (T = {self.horizon}): a "
                "meta-step advances each run by K steps of a run of T; lower segment or "
                "raise horizon."
            )
        remat_segment(self.remat, self.segment)

    @property
    def meta_objective(self) -> objectives.IterateObjective:
        """:attr:`objective` as an :class:`~l2l_jax.objectives.IterateObjective`."""
        return objectives.resolve_iterate(self.objective)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (stored in checkpoints and compared on resume); the
        objective is recorded by its ``name``, the estimator as ``{"name": ...,
        **settings}`` (``TruncatedConfig(**config.to_dict())`` reads it back for the
        registered estimators and objectives)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["objective"] = self.meta_objective.name
        out["estimator"] = estimators.to_dict(self.estimator)
        return out


def default_meta_optimizer(config: TruncatedConfig) -> optax.GradientTransformation:
    """``optax.chain(clip_by_global_norm(config.clip), adam(config.meta_lr))``.

    (The paper's own code used RMSProp with learning rate ``1e-2`` and clipping at
    ``1e4``: ``optax.chain(optax.clip_by_global_norm(1e4), optax.rmsprop(1e-2))``.)
    """
    return optax.chain(optax.clip_by_global_norm(config.clip), optax.adam(config.meta_lr))
