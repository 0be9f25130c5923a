"""Inner optimizers: pure ``init``/``update`` functions with explicit hyperparameters.

:class:`InnerOptimizer` is the contract (a :class:`typing.Protocol`) that
:func:`~l2l_jax.inner.unroll`, ``metagrad.meta_objective`` and ``truncated.meta_train`` use.
:class:`OptaxInner` is its optax implementation: an optax transformation built with
:func:`optax.inject_hyperparams`, whose injected values are overwritten with the caller's
hyperparameters at every call, so the hyperparameters are ordinary differentiable inputs
rather than state or closure constants. Any optax optimizer is wrapped with
:func:`from_optax`; the learned optimizers implement the same protocol
(:class:`l2l_jax.learned.LearnedInnerOptimizer`).

Hyperparameters are a scalar step size for :func:`gd`/:func:`sgd` and a dict keyed by
``hparam_names`` otherwise; :meth:`OptaxInner.hparams` builds them.

An optimizer whose update is one of the linear steps of :data:`LINEAR_UPDATES` says so in
its ``linear_update`` attribute (:func:`gd`, :func:`momentum`, :func:`nesterov`,
:func:`sgd`, or :func:`from_optax` with ``linear_update=``); ``grad="stable"`` decides its
closed form by that declaration (:func:`linear_update_of`), never by ``name``.

An optimizer meant to be scored at other parameters than those its gradients are taken at
(Schedule-Free AdamW's averaged iterate ``x``, Defazio et al. 2024) says so with an
``evaluation_params`` method (:class:`OptaxInner`, from :func:`from_optax` with
``eval_params=``); :func:`evaluation_params_of` reads it and is the identity otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import optax

from l2l_jax import input_checks

Array = jnp.ndarray
HParams = Array | Mapping[str, Array]

# The linear updates an optimizer can declare, with the hyperparameters each takes: GD
# ``w <- w - eta g``; heavy ball (optax's ``sgd`` with momentum) ``v <- g + beta v, w <- w
# - eta v``; Nesterov ``v <- g + beta v, w <- w - eta (g + beta v)`` (``g`` the gradient,
# times the diagonal ``preconditioner`` when the optimizer records one). The steps
# themselves are ``l2l_jax.metagrad.projective.STEPS``.
LINEAR_UPDATES: dict[str, tuple[str, ...]] = {
    "gd": ("learning_rate",),
    "momentum": ("learning_rate", "momentum"),
    "nesterov": ("learning_rate", "momentum"),
}


@runtime_checkable
class InnerOptimizer(Protocol):
    """What an inner optimizer provides: pure ``init`` and ``update`` whose hyperparameters
    are inputs (so that meta-gradients flow into them), and their validation.

    Attributes:
      name: short identifier, used in messages and results.
      hparam_names: names of the hyperparameters ``as_dict`` returns.
      batch_size: ``None`` for full-batch gradients (``task.loss``), else the minibatch
        size the unroll samples from the task at each step (``task.batch_loss``).

    Optional attribute ``linear_update``: the key of :data:`LINEAR_UPDATES` whose step the
    optimizer takes, or ``None`` (absent) for any other update. It is not part of the
    protocol: a learned optimizer or :class:`~l2l_jax.analysis.stability.ScaledStep` has
    none; read it with :func:`linear_update_of`.

    Optional method ``evaluation_params(params, opt_state)``: the parameters the
    optimizer is to be evaluated at after a step to ``(params, opt_state)`` (e.g.
    Schedule-Free's averaged iterate); absent means ``params``. Not part of the protocol
    either; read it with :func:`evaluation_params_of`.

    Implementations: :class:`OptaxInner` (any optax optimizer, :func:`from_optax`),
    :class:`l2l_jax.learned.LearnedInnerOptimizer` (hyperparameters = meta-parameters) and
    :class:`l2l_jax.analysis.stability.ScaledStep`. A frozen dataclass keeps an implementation
    hashable, which ``jit`` needs of a static argument.
    """

    name: str
    hparam_names: tuple[str, ...]
    batch_size: int | None

    def hparams(self, *args: Any, **values: Any) -> Any:
        """Hyperparameters in the form ``update`` expects."""
        ...

    def as_dict(self, hparams: Any) -> dict[str, Any]:
        """Validate ``hparams`` (a clear ``TypeError``/``ValueError``) and return them as a
        name -> value dict."""
        ...

    def init(self, params: Any, hparams: Any) -> Any:
        """The optimizer state for ``params``."""
        ...

    def update(self, grads: Any, state: Any, params: Any, hparams: Any) -> tuple[Any, Any]:
        """One step: ``(new_params, new_state)``."""
        ...


@dataclasses.dataclass(frozen=True)
class OptaxInner:
    """An optax optimizer as an :class:`InnerOptimizer`: its hyperparameters are inputs of
    ``init`` and ``update``.

    Attributes:
      name: short identifier (``"gd"``, ``"sgd"``, ``"momentum"``, ``"adam"``, ...).
      hparam_names: names of the differentiable hyperparameters, in order.
      transform: the optax transformation (built with ``optax.inject_hyperparams``).
      batch_size: ``None`` for full-batch gradients, else the minibatch size the unroll
        samples (with replacement) from the task at each step.
      defaults: default hyperparameter values, used by :meth:`hparams`.
      preconditioner: the fixed diagonal ``P`` (a pytree like the parameters, every entry
        ``> 0``) that multiplies the gradient before the step, as built by ``gd``,
        ``momentum`` and ``nesterov`` with ``preconditioner=``; ``None`` for none. Recorded
        so that ``grad="stable"`` can change variables (``metagrad.stable``); ``transform``
        already applies it, so it takes no part in equality or the hash.
      linear_update: the linear step ``transform`` takes (a key of
        :data:`LINEAR_UPDATES`: ``"gd"``, ``"momentum"``, ``"nesterov"``), on the gradient
        times ``preconditioner``; ``None`` when it takes no such step (Adam, weight decay,
        any optax chain not declared). ``grad="stable"`` uses it to choose its closed form
        and checks it on a probe before trusting it (``metagrad.stable``).
      eval_params: ``None`` (evaluate at ``params``) or ``fn(factory_state, params)``,
        the parameters to evaluate at, called with the state of the wrapped optax
        factory (``opt_state.inner_state``: ``inject_hyperparams`` wraps it), e.g.
        ``optax.contrib.schedule_free_eval_params``. See :meth:`evaluation_params`.
    """

    name: str
    hparam_names: tuple[str, ...]
    transform: optax.GradientTransformation
    batch_size: int | None = None
    defaults: Mapping[str, float] = dataclasses.field(default_factory=dict)
    preconditioner: Any = dataclasses.field(default=None, compare=False)
    linear_update: str | None = None
    eval_params: Callable[[Any, Any], Any] | None = None

    def __post_init__(self) -> None:
        if self.eval_params is not None and not callable(self.eval_params):
            raise TypeError(
                f"eval_params must be None or a function (state, params) -> params such as "
                f"optax.contrib.schedule_free_eval_params, got {type(self.eval_params).__name__}."
            )

    def __hash__(self) -> int:
        # hashable (a static argument of jax.jit) although ``defaults`` is a dict
        items = tuple(sorted(self.defaults.items()))
        fields = (self.name, self.hparam_names, self.transform, self.batch_size, items)
        return hash((*fields, self.linear_update, self.eval_params))

    @property
    def scalar_hparams(self) -> bool:
        """True when the hyperparameters are one scalar (the step size)."""
        return self.hparam_names == ("learning_rate",)

    def hparams(self, **values: float) -> HParams:
        """Hyperparameters in the form ``update`` expects, defaults filled in."""
        unknown = set(values) - set(self.hparam_names)
        if unknown:
            raise ValueError(
                f"{self.name} has hyperparameters {self.hparam_names}; unknown: {sorted(unknown)}."
            )
        merged = {**self.defaults, **values}
        missing = [n for n in self.hparam_names if n not in merged]
        if missing:
            raise ValueError(f"{self.name} needs values for {missing}.")
        if self.scalar_hparams:
            return jnp.asarray(merged["learning_rate"])
        return {n: jnp.asarray(merged[n]) for n in self.hparam_names}

    def as_dict(self, hparams: HParams) -> dict[str, Array]:
        """Validate ``hparams`` and return them as a name -> value dict."""
        if self.scalar_hparams and not isinstance(hparams, Mapping):
            hparams = {"learning_rate": hparams}
        if not isinstance(hparams, Mapping) or set(hparams) != set(self.hparam_names):
            got = sorted(hparams) if isinstance(hparams, Mapping) else type(hparams).__name__
            raise TypeError(
                f"{self.name} takes hyperparameters {list(self.hparam_names)}, got {got}. "
                f"Build them with optimizer.hparams(...)."
            )
        for n in self.hparam_names:
            if jnp.ndim(hparams[n]) != 0:
                raise TypeError(
                    f"hyperparameter {n!r} must be a scalar, got shape {jnp.shape(hparams[n])}."
                )
        for n in self.hparam_names:
            input_checks.hyperparameter(n, hparams[n])
        return dict(hparams)

    def init(self, params, hparams: HParams):
        """Optimizer state for ``params`` (the hyperparameters set its dtypes)."""
        return self._with_hparams(self.transform.init(params), params, hparams)

    def update(self, grads, state, params, hparams: HParams):
        """One step: returns ``(new_params, new_state)``."""
        state = self._with_hparams(state, params, hparams)
        updates, state = self.transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def evaluation_params(self, params, opt_state):
        """The parameters to evaluate at: ``params`` without ``eval_params``, else
        ``eval_params(opt_state.inner_state, params)`` (the factory's own state)."""
        if self.eval_params is None:
            return params
        return self.eval_params(opt_state.inner_state, params)

    def _with_hparams(self, state, params, hparams):
        values = self.as_dict(hparams)
        dtype = jnp.result_type(*[jnp.asarray(p) for p in jax.tree_util.tree_leaves(params)])
        injected = {n: jnp.asarray(values[n], dtype) for n in self.hparam_names}
        return state._replace(hyperparams={**state.hyperparams, **injected})


def from_optax(
    factory: Callable[..., optax.GradientTransformation],
    hparam_names: tuple[str, ...],
    *,
    name: str | None = None,
    batch_size: int | None = None,
    defaults: Mapping[str, float] | None = None,
    linear_update: str | None = None,
    eval_params: Callable[[Any, Any], Any] | None = None,
    **static,
) -> OptaxInner:
    """Wrap an optax optimizer factory so ``hparam_names`` become differentiable inputs.

    Example: ``from_optax(optax.lion, ("learning_rate", "b1"), b2=0.99)``.

    ``linear_update`` declares that the optimizer takes one of the linear steps of
    :data:`LINEAR_UPDATES` (e.g. ``from_optax(optax.sgd, ("learning_rate",),
    linear_update="gd")``), so that ``grad="stable"`` accepts it; ``hparam_names`` must then
    be that step's. ``name`` never implies it. ``grad="stable"`` checks the declaration on a
    probe and refuses an optimizer whose update differs.

    ``eval_params`` (``fn(state, params) -> params``, called with ``factory``'s own state)
    names the parameters to evaluate at, e.g. Schedule-Free's averaged iterate:
    ``from_optax(optax.contrib.schedule_free_adamw, ("learning_rate",),
    eval_params=optax.contrib.schedule_free_eval_params)`` (:meth:`OptaxInner.evaluation_params`).
    """
    hparam_names = tuple(hparam_names)
    if not hparam_names:
        raise ValueError("hparam_names must name at least one hyperparameter to meta-learn.")
    _check_linear_update(linear_update, hparam_names)
    placeholder = {n: 0.0 for n in hparam_names}
    transform = optax.inject_hyperparams(factory)(**placeholder, **static)
    if batch_size is not None:
        input_checks.positive_int("batch_size", batch_size)
    return OptaxInner(
        name=name or getattr(factory, "__name__", "optax"),
        hparam_names=hparam_names,
        transform=transform,
        batch_size=batch_size,
        defaults=dict(defaults or {}),
        linear_update=linear_update,
        eval_params=eval_params,
    )


def evaluation_params_of(optimizer, params, opt_state):
    """The parameters ``optimizer`` is evaluated at after reaching ``(params, opt_state)``:
    its ``evaluation_params(params, opt_state)`` when it has one (e.g. Schedule-Free's
    averaged iterate), else ``params`` (SGD, Adam, learned optimizers, ...)."""
    fn = getattr(optimizer, "evaluation_params", None)
    return params if fn is None else fn(params, opt_state)


def linear_update_of(optimizer) -> str | None:
    """The linear update ``optimizer`` declares (a key of :data:`LINEAR_UPDATES`), or
    ``None`` for an optimizer that declares none (a learned optimizer, Adam, ...)."""
    return getattr(optimizer, "linear_update", None)


def _check_linear_update(linear_update: str | None, hparam_names: tuple[str, ...]) -> None:
    """``linear_update`` is ``None`` or a key of :data:`LINEAR_UPDATES` whose
    hyperparameters are ``hparam_names`` (a ``ValueError`` naming the fix otherwise)."""
    if linear_update is None:
        return
    if linear_update not in LINEAR_UPDATES:
        raise ValueError(
            f"linear_update must be one of {sorted(LINEAR_UPDATES)} or None, got "
            f"{linear_update!r}; leave it None for an optimizer that takes none of these steps."
        )
    needed = LINEAR_UPDATES[linear_update]
    if set(hparam_names) != set(needed):
        raise ValueError(
            f"linear_update={linear_update!r} takes the hyperparameters {needed}, got "
            f"hparam_names={hparam_names}; pass hparam_names={needed}."
        )


def _check_preconditioner(preconditioner) -> Any:
    """The diagonal preconditioner as a pytree of float arrays, every entry finite and
    ``> 0`` (a ``ValueError`` naming the fix otherwise)."""
    leaves = jax.tree_util.tree_leaves(preconditioner)
    if not leaves:
        raise ValueError("preconditioner must hold at least one array (the diagonal of P).")
    tree = jax.tree.map(lambda x: input_checks.float_array("preconditioner", x), preconditioner)
    for leaf in jax.tree_util.tree_leaves(tree):
        if input_checks.known_true(~jnp.all(jnp.isfinite(leaf) & (leaf > 0))):
            raise ValueError(
                "preconditioner must be a diagonal P > 0: every entry finite and positive "
                "(it multiplies the gradient elementwise; use 1 to leave a coordinate as is)."
            )
    return tree


def _sgd_family(
    name: str, defaults: dict[str, float], preconditioner, nesterov: bool = False
) -> OptaxInner:
    """optax's ``sgd`` (GD, heavy ball or Nesterov: ``defaults`` names the
    hyperparameters), on the gradient multiplied elementwise by a fixed diagonal
    ``preconditioner`` when one is given."""
    names = tuple(defaults)
    static = {"nesterov": True} if nesterov else {}
    if preconditioner is None:
        return from_optax(
            optax.sgd, names, name=name, defaults=defaults, linear_update=name, **static
        )
    diag = _check_preconditioner(preconditioner)
    scale = optax.stateless(
        lambda g, _: jax.tree.map(lambda gi, pi: gi * pi.astype(gi.dtype), g, diag)
    )

    def factory(learning_rate, momentum=None):
        return optax.chain(scale, optax.sgd(learning_rate, momentum, **static))

    opt = from_optax(factory, names, name=name, defaults=defaults, linear_update=name)
    return dataclasses.replace(opt, preconditioner=diag)


def gd(learning_rate: float = 0.1, preconditioner=None) -> OptaxInner:
    """Full-batch gradient descent ``w <- w - eta * grad f(w)``; hyperparameter: ``eta``.

    With ``preconditioner`` (a fixed diagonal ``P > 0``, shaped like the parameters):
    ``w <- w - eta P grad f(w)``.
    """
    return _sgd_family("gd", {"learning_rate": learning_rate}, preconditioner)


def sgd(batch_size: int = 1, learning_rate: float = 0.1) -> OptaxInner:
    """Minibatch SGD: the GD update on a gradient from ``batch_size`` sampled examples."""
    return from_optax(
        optax.sgd,
        ("learning_rate",),
        name="sgd",
        batch_size=batch_size,
        defaults={"learning_rate": learning_rate},
        linear_update="gd",
    )


def momentum(learning_rate: float = 0.1, beta: float = 0.9, preconditioner=None) -> OptaxInner:
    """Heavy-ball momentum ``v <- g + beta v; w <- w - eta v``; hyperparameters eta, beta.

    Equivalent to Polyak's ``w_{k+1} = w_k - eta g_k + beta (w_k - w_{k-1})``. With
    ``preconditioner`` (a fixed diagonal ``P > 0``): ``g = P grad f(w)``.
    """
    defaults = {"learning_rate": learning_rate, "momentum": beta}
    return _sgd_family("momentum", defaults, preconditioner)


def nesterov(learning_rate: float = 0.1, beta: float = 0.9, preconditioner=None) -> OptaxInner:
    """Nesterov momentum (optax's ``sgd(nesterov=True)``): ``v <- g + beta v; w <- w -
    eta (g + beta v)``; hyperparameters eta, beta. With ``preconditioner`` (a fixed
    diagonal ``P > 0``): ``g = P grad f(w)``."""
    defaults = {"learning_rate": learning_rate, "momentum": beta}
    return _sgd_family("nesterov", defaults, preconditioner, nesterov=True)


def adam(
    learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> OptaxInner:
    """Adam (Kingma & Ba 2015); hyperparameters ``learning_rate, b1, b2, eps``."""
    return from_optax(
        optax.adam,
        ("learning_rate", "b1", "b2", "eps"),
        name="adam",
        defaults={"learning_rate": learning_rate, "b1": b1, "b2": b2, "eps": eps},
    )
