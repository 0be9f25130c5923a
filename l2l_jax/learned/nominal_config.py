"""The settings of :class:`~l2l_jax.learned.nominal.NominalLOpt` (:class:`NominalConfig`),
validated on construction, and the names of its features."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from l2l_jax.learned.mlp_lopt import PAPER_TIME_SCALES

ESTIMATORS = ("sgd", "momentum", "aggmo", "adam", "adam_multi")
CONTROLLERS = ("tensor", "parameter")
MLP_FORMS = ("matmul", "elementwise")
OUTPUTS = ("direction", "magnitude", "nominal", "regularization")
# Step sizes of the nominal optimizers when the config gives none. Momentum and AggMo
# sum past gradients (heavy-ball traces, up to 1/(1 - b) times the gradient), hence
# their smaller values.
DEFAULT_LEARNING_RATES = {
    "sgd": 0.1,
    "momentum": 0.01,
    "aggmo": 1e-3,
    "adam": 1e-3,
    "adam_multi": 1e-3,
}
KIND = "nominal"
_POSITIVE_FIELDS = ("learning_rate", "eps", "step_mult", "blackbox_eps", "norm_eps", "rms_eps")
_NON_NEGATIVE_FIELDS = ("nominal_exp_mult", "exp_mult", "reg_exp_mult", "weight_decay")
_REAL_FIELDS = _POSITIVE_FIELDS + _NON_NEGATIVE_FIELDS


def _fix(field: str, value: Any, rule: str, fix: str) -> ValueError:
    return ValueError(f"NominalConfig.{field} {rule}, got {value!r}; {fix}.")


@dataclasses.dataclass(frozen=True)
class NominalConfig:
    """Architecture of the nominal-term learned optimizer (saved with the weights).

    Attributes:
      estimator: the nominal direction ``d_nom`` (:data:`ESTIMATORS`): ``"sgd"`` (``g``),
        ``"momentum"`` (heavy-ball trace of ``momentum_decays[0]``, as
        ``optax.sgd(lr, momentum=b)``), ``"aggmo"`` (mean of the traces of all
        ``momentum_decays``, Lucas et al. 2019), ``"adam"`` (``optax.adam`` with
        ``b1 = momentum_decays[0]``, ``b2 = rms_decays[0]``) or ``"adam_multi"`` (Adam's
        bias-corrected momenta of all ``momentum_decays`` averaged, over Adam's
        denominator; the reference's default ``AdamAggMo``).
      learning_rate: the nominal step size ``lr``; ``None`` takes
        :data:`DEFAULT_LEARNING_RATES` of the estimator (resolved at construction).
      momentum_decays: initial decays of the momentum accumulators ``m_k`` (learned).
      rms_decays: initial decays of the second-moment accumulators ``v_j`` (learned).
      eps: Adam's ``eps`` (added to ``sqrt(v_hat)``, as in optax).
      hidden_sizes: ReLU hidden layers of the per-coordinate MLP (the reference: 4, 4).
      time_scales: ``tau`` of the step features ``tanh(t / tau - 1)``.
      controller: ``"tensor"``: the nominal and weight-decay magnitudes ``c, r`` are
        averaged over each tensor (a learned per-tensor log step size); ``"parameter"``:
        one per coordinate.
      nominal_exp_mult: ``k_n`` in ``lr exp(k_n c)``.
      exp_mult: ``k_b`` in the blackbox magnitude ``exp(k_b a)`` (Metz et al.: 1e-3).
      step_mult: scale of the blackbox term (Metz et al.: 1e-3).
      blackbox_eps: ``eps`` of the blackbox preconditioner, relative to the tensor's RMS
        gradient: ``rho = 1 / (sqrt(v_hat) / s + blackbox_eps)``, at most
        ``1 / blackbox_eps``.
      weight_decay: ``wd`` of the stabilizing term ``wd exp(k_r r) w``; 0 switches it off
        (and its learned magnitude with it).
      reg_exp_mult: ``k_r`` in ``wd exp(k_r r)``.
      norm_eps: ``eps`` of the feature normalization ``x / sqrt(eps + mean(x^2))``.
      rms_eps: ``eps`` inside the RMS features ``sqrt(v + rms_eps)``.
      first_order: stop gradients through the inner gradients (no second derivatives
        of the inner loss in meta-gradients).
      mlp_form: ``"matmul"`` or ``"elementwise"`` (:data:`MLP_FORMS`; same values). On
        CPU (``benchmarks/nominal.py``, MNIST MLP, hidden (4, 4)) the elementwise form's
        step is 5-14% faster but its meta-gradient about 3x slower, hence the default.
    """

    estimator: str = "adam"
    learning_rate: float | None = None
    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    rms_decays: tuple[float, ...] = (0.999,)
    eps: float = 1e-8
    hidden_sizes: tuple[int, ...] = (4, 4)
    time_scales: tuple[float, ...] = PAPER_TIME_SCALES
    controller: str = "tensor"
    nominal_exp_mult: float = 1.0
    exp_mult: float = 1e-3
    step_mult: float = 1e-3
    blackbox_eps: float = 0.1
    weight_decay: float = 0.0
    reg_exp_mult: float = 1.0
    norm_eps: float = 1e-5
    rms_eps: float = 1e-8
    first_order: bool = False
    mlp_form: str = "matmul"

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise _fix(
                "estimator",
                self.estimator,
                "is not a nominal estimator",
                f"use one of {ESTIMATORS}",
            )
        for name in ("momentum_decays", "rms_decays", "hidden_sizes", "time_scales"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise _fix(name, value, "must be a sequence", "pass a tuple, e.g. (0.9,)")
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        for name in ("momentum_decays", "rms_decays", "time_scales"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        if self.learning_rate is None:
            object.__setattr__(self, "learning_rate", DEFAULT_LEARNING_RATES[self.estimator])
        for name in _REAL_FIELDS:  # plain floats: JSON-serializable and hashable alike
            if _is_real(getattr(self, name)):
                object.__setattr__(self, name, float(getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        for name in ("momentum_decays", "rms_decays"):
            decays = getattr(self, name)
            if not decays or not all(0.0 < d < 1.0 for d in decays):
                raise _fix(
                    name,
                    decays,
                    "must be non-empty with every decay in (0, 1)",
                    "use e.g. (0.9, 0.99)",
                )
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise _fix(
                "hidden_sizes",
                self.hidden_sizes,
                "must be non-empty and positive",
                "use e.g. (4, 4)",
            )
        if any(not t > 0 for t in self.time_scales):
            raise _fix(
                "time_scales", self.time_scales, "must be positive", "use e.g. (1.0, 10.0, 100.0)"
            )
        for name in _POSITIVE_FIELDS:
            value = getattr(self, name)
            if not (_is_real(value) and math.isfinite(value) and value > 0):
                raise _fix(
                    name,
                    value,
                    "must be a finite number > 0",
                    f"pass a positive value (default {_default(name)})",
                )
        for name in _NON_NEGATIVE_FIELDS:
            value = getattr(self, name)
            if not (_is_real(value) and math.isfinite(value) and value >= 0):
                raise _fix(
                    name,
                    value,
                    "must be a finite number >= 0",
                    f"pass a non-negative value (default {_default(name)})",
                )
        if self.controller not in CONTROLLERS:
            raise _fix(
                "controller", self.controller, "is not a controller", f"use one of {CONTROLLERS}"
            )
        if self.mlp_form not in MLP_FORMS:
            raise _fix("mlp_form", self.mlp_form, "is not an MLP form", f"use one of {MLP_FORMS}")

    @property
    def num_tensor_features(self) -> int:
        """``2 + 2K + 2J``: g, p, m_k, sqrt(v_j), m_k / sqrt(v_1), 1 / sqrt(v_j)."""
        return 2 + 2 * len(self.momentum_decays) + 2 * len(self.rms_decays)

    @property
    def num_features(self) -> int:
        """MLP input width: tensor features plus step features."""
        return self.num_tensor_features + len(self.time_scales)

    def replace(self, **changes: Any) -> NominalConfig:
        """A copy with ``changes`` (``learning_rate`` re-defaults if the estimator changes)."""
        if "estimator" in changes and "learning_rate" not in changes:
            changes["learning_rate"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (lists for tuples) with ``kind = "nominal"``."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}
        return {"kind": KIND, **values}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NominalConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        values = dict(values)
        kind = values.pop("kind", KIND)
        if kind != KIND:
            raise ValueError(f"not a nominal learned-optimizer config (kind {kind!r}).")
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown NominalConfig fields {sorted(unknown)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(NominalConfig) if f.name == name)


def feature_names(config: NominalConfig) -> tuple[str, ...]:
    """Names of the MLP inputs in order."""
    m = [f"{d:g}" for d in config.momentum_decays]
    v = [f"{d:g}" for d in config.rms_decays]
    names = ["grad", "param"]
    names += [f"momentum[{d}]" for d in m] + [f"rms[{d}]" for d in v]
    names += [f"momentum[{d}]/rms[{v[0]}]" for d in m] + [f"1/rms[{d}]" for d in v]
    return tuple(names + [f"tanh(t/{t:g}-1)" for t in config.time_scales])
