"""The noisy quadratic model (NQM) of Zhang et al. (2019), as used by Harrison et al. (2022).

Zhang, Li, Nado, Martens, Sachdeva, Dahl, Shallue and Grosse, "Which algorithmic choices
matter at which batch sizes? Insights from a noisy quadratic model" (NeurIPS 2019, Sec. 3),
and Harrison, Metz and Sohl-Dickstein, "A Closer Look at Learned Optimization: Stability,
Robustness, and Inductive Biases" (NeurIPS 2022, Sec. 3), who analyse optimizer stability
on it:

* loss ``f(w) = 1/2 sum_i h_i w_i^2`` with diagonal curvature ``h_i > 0``, a power law
  ``h_i = scale * i^(-power)`` (Zhang et al.: ``h_i = 1/i``) or any given spectrum;
* a minibatch gradient of ``B`` examples is ``h * w + noise`` with independent coordinates,
  ``E[noise] = 0`` and ``Var[noise_i] = noise_scale * h_i / B``: the gradient covariance
  follows the curvature (``C = H``, Zhang et al. Sec. 3.1);
* ``w_0 ~ N(0, init_scale^2 I)``.

The noise is realized as a finite sum over (effectively infinitely many) examples, so the
task plugs into every minibatch code path of the library (``inner.sgd``, ``inner.unroll``,
truncated meta-training) through the ordinary ``num_examples``/``batch_loss`` protocol.
Example ``j`` has its own standard normal vector ``xi_j = normal(fold_in(noise_key, j))``
and loss ``f_j(w) = f(w) + sum_i sqrt(noise_scale h_i) xi_{j,i} w_i``, whose mean over
``j`` is ``f``. The minibatch mean of ``B`` distinct examples then has exactly the
gradient distribution above; the minibatch sampler draws indices with replacement from
``num_examples = 2^31 - 1``, so a repeated index (probability below ``B^2 / 2^32``) is
negligible.
"""

from __future__ import annotations

import math
import numbers

import chex
import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import input_checks
from l2l_jax.tasks import log_space
from l2l_jax.tasks.linear import LinearDynamics

Array = jnp.ndarray

MAX_EXAMPLES = 2**31 - 1  # the largest int32 bound jax.random.randint accepts
_LEAVES = ("curvature", "noise_scale", "init_scale", "init_key", "noise_key")


@jax.tree_util.register_pytree_node_class
class NQM:
    """A noisy quadratic model (one task, or a batch with leading axes ``batch_shape``).

    Leaves: ``curvature (d,)`` (the diagonal ``h`` of ``H``), ``noise_scale ()`` (the
    per-example gradient variance is ``noise_scale * h``), ``init_scale ()`` (``w_0`` is
    ``N(0, init_scale^2 I)``), and the typed PRNG keys ``init_key`` (of :meth:`init_params`)
    and ``noise_key`` (of the examples' noise). Static: ``num_examples``.

    Batch size is the minibatch size of whoever samples the gradient (``inner.sgd(B)``,
    ``TruncatedConfig.batch_size``, :meth:`sample_gradient`): the noise variance of a
    minibatch is ``noise_scale * h / B`` (:meth:`gradient_variance`).
    """

    def __init__(
        self,
        curvature: Array,
        *,
        init_key: jax.Array,
        noise_key: jax.Array,
        noise_scale: float | Array = 1.0,
        init_scale: float | Array = 1.0,
        num_examples: int = MAX_EXAMPLES,
    ):
        curvature = input_checks.float_array("curvature", curvature)
        if curvature.ndim < 1 or curvature.shape[-1] < 1:
            raise ValueError(
                f"curvature must be a (d,) vector of the diagonal Hessian with d >= 1, "
                f"got shape {curvature.shape}."
            )
        dtype = curvature.dtype
        noise_scale = input_checks.float_array("noise_scale", noise_scale).astype(dtype)
        init_scale = input_checks.float_array("init_scale", init_scale).astype(dtype)
        batch = curvature.shape[:-1]
        for name, value in (("noise_scale", noise_scale), ("init_scale", init_scale)):
            if value.shape != batch:
                raise ValueError(
                    f"{name} must be a scalar per task (shape {batch}), got {value.shape}."
                )
        _check_values(curvature, noise_scale, init_scale)
        if (
            isinstance(num_examples, bool)
            or not isinstance(num_examples, numbers.Integral)
            or not 1 <= num_examples <= MAX_EXAMPLES
        ):
            raise ValueError(
                f"num_examples must be an integer in [1, 2^31 - 1] (jax.random.randint's "
                f"int32 range), got {num_examples!r}; keep the default for i.i.d. noise."
            )
        self.curvature = curvature
        self.noise_scale, self.init_scale = noise_scale, init_scale
        self.init_key = _typed_key("init_key", init_key)
        self.noise_key = _typed_key("noise_key", noise_key)
        self._num_examples = int(num_examples)

    # -- pytree ---------------------------------------------------------------------------
    def tree_flatten(self):
        return tuple(getattr(self, n) for n in _LEAVES), self._num_examples

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        for name, child in zip(_LEAVES, children, strict=True):
            setattr(obj, name, child)
        obj._num_examples = aux
        return obj

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def power_law(
        cls,
        key: chex.PRNGKey,
        dim: int,
        power: float = 1.0,
        scale: float = 1.0,
        *,
        noise_scale: float = 1.0,
        init_scale: float = 1.0,
        dtype=jnp.float32,
    ) -> NQM:
        """``h_i = scale * i^(-power)``, ``i = 1..dim`` (Zhang et al.: ``power = 1``).

        ``key`` is split into the initialization and noise keys.
        """
        dim = input_checks.positive_int("dim", dim)
        if isinstance(power, bool) or not isinstance(power, numbers.Real):
            raise TypeError(f"power must be a real number (h_i = scale * i^-power), got {power!r}.")
        if not math.isfinite(power):
            raise ValueError(f"power must be finite (h_i = scale * i^-power), got {power}.")
        input_checks.positive("scale", scale)
        curvature = scale * np.arange(1, dim + 1, dtype=np.float64) ** (-float(power))
        return cls.from_curvature(
            key, curvature, noise_scale=noise_scale, init_scale=init_scale, dtype=dtype
        )

    @classmethod
    def from_curvature(
        cls,
        key: chex.PRNGKey,
        curvature: Array,
        *,
        noise_scale: float = 1.0,
        init_scale: float = 1.0,
        dtype=None,
    ) -> NQM:
        """The NQM with the given diagonal ``curvature``; ``key`` -> init and noise keys."""
        k_init, k_noise = jax.random.split(_typed_key("key", key))
        curvature = input_checks.float_array("curvature", curvature)
        return cls(
            curvature.astype(dtype or curvature.dtype),
            init_key=k_init,
            noise_key=k_noise,
            noise_scale=noise_scale,
            init_scale=init_scale,
        )

    def replace(self, **fields) -> NQM:
        """A copy with some of ``curvature, noise_scale, init_scale, init_key, noise_key``
        replaced (validated like the constructor)."""
        unknown = set(fields) - set(_LEAVES)
        if unknown:
            raise ValueError(f"NQM has fields {_LEAVES}; unknown: {sorted(unknown)}.")
        values = {n: getattr(self, n) for n in _LEAVES} | fields
        curvature = values.pop("curvature")
        return NQM(curvature, num_examples=self._num_examples, **values)

    def scaled(self, factor: float) -> NQM:
        """The same task with curvature ``factor * h`` (noise covariance ``factor * C`` too,
        keeping ``C = noise_scale * H``): a sweep over ``factor`` probes where an optimizer
        is stable (Harrison et al. Sec. 3). ``factor`` may be traced (``vmap`` over it)."""
        if input_checks.known_true(~(jnp.asarray(factor) > 0)):
            raise ValueError(f"factor must be > 0 (it multiplies the curvature), got {factor}.")
        return self._with(curvature=self.curvature * jnp.asarray(factor, self.dtype))

    def with_init_key(self, key: jax.Array) -> NQM:
        """The same task with another initialization key (works under ``jit``/``vmap``)."""
        return self._with(init_key=_typed_key("key", key))

    def astype(self, dtype) -> NQM:
        """The same task in another float dtype."""
        return self._with(
            **{
                n: getattr(self, n).astype(dtype)
                for n in ("curvature", "noise_scale", "init_scale")
            }
        )

    def _with(self, **leaves) -> NQM:
        """A copy with some leaves replaced, unchecked (safe under ``jit``/``vmap``)."""
        children = tuple(leaves.get(n, getattr(self, n)) for n in _LEAVES)
        return NQM.tree_unflatten(self._num_examples, children)

    # -- shapes ---------------------------------------------------------------------------
    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch axes: ``()`` for one task."""
        return tuple(self.curvature.shape[:-1])

    @property
    def dim(self) -> int:
        return self.curvature.shape[-1]

    @property
    def dtype(self):
        return self.curvature.dtype

    @property
    def num_examples(self) -> int:
        """How many examples minibatches are drawn from (``2^31 - 1``: effectively i.i.d.)."""
        return self._num_examples

    # -- the task protocol (one task) --------------------------------------------------------
    def init_params(self, key: jax.Array | None = None) -> Array:
        """``w_0 ~ N(0, init_scale^2 I)`` from ``key`` (default: the task's ``init_key``)."""
        key = self.init_key if key is None else _typed_key("key", key)
        return self.init_scale * jax.random.normal(key, (self.dim,), self.dtype)

    def loss(self, params: Array) -> Array:
        """``f(w) = 1/2 sum_i h_i w_i^2`` (the noiseless loss)."""
        chex.assert_shape(params, (self.dim,))
        return 0.5 * jnp.sum(self.curvature * jnp.square(params))

    def log_loss(self, params: Array) -> Array:
        """``log f(w)`` of the noiseless loss in log space
        (:func:`~l2l_jax.tasks.log_space.log_homogeneous`, degree 2): finite for every
        finite ``w`` with a normal largest entry, where ``f(w)`` over- or underflows."""
        return log_space.log_homogeneous(self.loss, params, degree=2)

    def gradient(self, params: Array) -> Array:
        """``grad f(w) = h * w``."""
        chex.assert_shape(params, (self.dim,))
        return self.curvature * params

    def example_noise(self, indices: Array) -> Array:
        """``(B, d)`` standard normals ``xi_j`` of the examples ``indices``."""
        draw = lambda j: jax.random.normal(
            jax.random.fold_in(self.noise_key, j), (self.dim,), self.dtype
        )
        return jax.vmap(draw)(jnp.asarray(indices).reshape(-1))

    def batch_loss(self, params: Array, indices: Array) -> Array:
        """Mean of ``f_j(w) = f(w) + <sqrt(noise_scale h) * xi_j, w>`` over ``indices``.

        Unbiased for ``f``; its gradient is ``h * w`` plus noise of variance
        ``noise_scale * h / B`` per coordinate (independent coordinates).
        """
        chex.assert_shape(params, (self.dim,))
        xi = jnp.mean(self.example_noise(indices), axis=0)
        std = jnp.sqrt(self.noise_scale * self.curvature)
        return self.loss(params) + jnp.sum(std * xi * params)

    def sample_gradient(self, params: Array, key: chex.PRNGKey, batch_size: int) -> Array:
        """A minibatch gradient, drawn as the library's samplers do
        (``randint(key, (batch_size,), 0, num_examples)``, ``inner.unroll.gradient_fn``)."""
        batch_size = input_checks.positive_int("batch_size", batch_size)
        idx = jax.random.randint(key, (batch_size,), 0, self.num_examples)
        return jax.grad(self.batch_loss)(params, idx)

    def gradient_variance(self, batch_size: int) -> Array:
        """``Var[g_i] = noise_scale * h_i / B`` of a minibatch gradient (Zhang et al. Sec. 3.1)."""
        batch_size = input_checks.positive_int("batch_size", batch_size)
        return self.noise_scale * self.curvature / batch_size

    def sgd_expected_loss(
        self, params: Array, learning_rate: float | Array, steps: int, batch_size: int
    ) -> Array:
        """``E f(w_t)`` of SGD from ``params`` (Zhang et al. Sec. 3.1, per coordinate).

        ``w_{k+1} = (1 - eta h) w_k - eta noise_k`` gives, with ``r = (1 - eta h)^2`` and
        ``s = noise_scale h / B``, ``E w_t^2 = r^t w_0^2 + eta^2 s (1 - r^t) / (1 - r)``
        (``t eta^2 s`` when ``r = 1``).
        """
        steps = int(steps)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}.")
        eta = jnp.asarray(learning_rate, self.dtype)
        r = jnp.square(1 - eta * self.curvature)
        rt = r**steps
        geometric = jnp.where(r == 1, steps, (1 - rt) / jnp.where(r == 1, 1.0, 1 - r))
        second = rt * jnp.square(params) + eta**2 * self.gradient_variance(batch_size) * geometric
        return 0.5 * jnp.sum(self.curvature * second)

    def linear_dynamics(self, preconditioner: Array | None = None) -> LinearDynamics:
        """The mean dynamics (full batch, one task): the diagonal quadratic ``h``, already in
        its eigenbasis, from ``init_params()``; with a diagonal ``P``, curvature ``P h`` and
        start ``P^(-1/2) w_0``. GD on it runs through the projective forward mode, as heavy
        ball and Nesterov do (``gd_closed_form=False``)."""
        w0 = self.init_params()
        if preconditioner is None:
            return LinearDynamics(self.curvature, w0, gd_closed_form=False)
        p = jnp.asarray(preconditioner).astype(self.dtype)
        return LinearDynamics(self.curvature * p, w0 / jnp.sqrt(p), gd_closed_form=False)

    def __repr__(self) -> str:
        batch = f"batch_shape={self.batch_shape}, " if self.batch_shape else ""
        return f"NQM({batch}dim={self.dim}, dtype={self.dtype})"


def _typed_key(name: str, key) -> jax.Array:
    """A typed PRNG key from a typed key or raw ``uint32[..., 2]`` key data."""
    key = input_checks.prng_key(name, key, batched=True)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def _check_values(curvature: Array, noise_scale: Array, init_scale: Array) -> None:
    """Concrete values: ``h > 0`` finite, ``noise_scale >= 0`` finite, ``init_scale > 0``."""
    if input_checks.is_concrete(curvature):
        h = np.asarray(curvature, np.float64)
        if not np.all(np.isfinite(h) & (h > 0)):
            raise ValueError(
                f"curvature must be finite and > 0 (the diagonal of a positive definite H), "
                f"got min {np.nanmin(h):.3g}; use NQM.power_law or positive values."
            )
    for name, value, allow_zero in (
        ("noise_scale", noise_scale, True),
        ("init_scale", init_scale, False),
    ):
        if input_checks.is_concrete(value):
            v = np.asarray(value, np.float64)
            ok = np.isfinite(v) & ((v >= 0) if allow_zero else (v > 0))
            if not np.all(ok):
                need = ">= 0 (0: noiseless)" if allow_zero else "> 0"
                raise ValueError(f"{name} must be finite and {need}, got {value}.")
