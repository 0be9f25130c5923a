"""Log-scaled TBPTT vs TBPTT and PES at equal time on fig4b's TbV, past the overflow horizon.

``python -m experiments logscaled_reach``: the budgeted meta-training alone is
``len(methods) x len(seeds) x budget_s`` (90 min), about 2.5 h in all on 2 CPU cores with
scoring and compilation.

Does the log-scaled reverse pass help meta-training (usefulness)? For each seed of ``seeds``
and each estimator of ``methods`` (``truncated.ESTIMATORS`` names), the learned optimizer is
meta-trained on fig4b's train-by-validation family (1000 digits, 20% label noise, the MLP
784-100-20-10, the learned optimizer of ``configs/fig4b.py``; pools as fig4b's reported
seeds, outside meta_tune's tuning pool) from one start per seed, with segments of
``segment`` inner steps, for ``budget_s`` seconds of meta-step time. The held-out TbV meta-
loss (the validation loss after ``horizon`` steps, mean over ``select_tasks`` fixed draws of
the family, ``experiments.mnist_meta.heldout_score``) is scored every ``score_every_s``
seconds of it.

Departures from fig4b, each for the comparison's sake:

* **the start** (``descent_scale``): fig4b's warm start (``descent_scale = 0.05``) has a top
  Lyapunov exponent <= 0 (the health check, ``docs/experiments/health.md``: -0.0006 at 20x
  that step), so no segment length overflows and the question does not arise. The start
  here is the health check's overflowing one: ``learned.descent_init`` at scale 4096,
  i.e. the step of the untrained optimizer multiplied by 4096, where the health check
  predicts float32 overflow of the meta-gradient after 241 steps and observes it at 400.
  Meta-training has to bring the step down by about four decades; the run measures the
  start's exponent again (``overflow_check_steps``) and records the predicted horizon;
* **the segment** ``K = 400`` (fig4b: 20): past that horizon;
* **the meta learning rate is constant** (fig4b: a cosine over ``meta_steps``): the methods
  take different numbers of meta-steps in the same time, so a schedule in meta-steps
  would decay at a different time for each;
* **the clock**: each method gets ``budget_s`` seconds of meta-step time (the wall time of
  its jitted meta-steps, as ``truncated.meta_train`` records it); compilation is excluded
  for every method alike (one warm-up meta-step on a throwaway state, outside the clock,
  reported), and so are held-out scoring and checkpointing. The methods alternate chunk by
  chunk, so a change in the machine's load reaches all of them alike.
"""

import ml_collections

from configs import fig4b, mnist_lopt  # noqa: F401 (mnist_lopt: the fields' docs for --help)

PRESETS = ("default",)
# fig4b's settings taken as they are: data and pools, architecture, warm start's form,
# meta-batch, horizon, PES's settings, the meta-loss minibatch, the meta-optimizer
FROM_FIG4B = (
    "tuning_seed",
    "tuning_pool_fraction",
    "tuning_pool_seed",
    "source",
    "n_samples",
    "label_noise",
    "valid_fraction",
    "disjoint_eval",
    "eval_pool_fraction",
    "sizes",
    "batch_size",
    "hidden_sizes",
    "first_order",
    "warm_start",
    "descent_feature",
    "horizon",
    "meta_batch",
    "es_pairs",
    "es_sigma",
    "eval_batch_size",
    "meta_optimizer",
    "clip",
    "checkpoint_every",
)


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}.")
    base = fig4b.get_config()
    cfg = ml_collections.ConfigDict({k: base[k] for k in FROM_FIG4B})
    cfg.seeds = (0, 1, 2)  # meta-training seeds (each: pools, start, held-out draws)
    cfg.methods = ("tbptt", "tbptt_logscaled", "pes")  # truncated.ESTIMATORS names
    # the start: fig4b's (0.05) never overflows; at 4096 the health check predicts float32
    # overflow of the meta-gradient after 241 steps (observed: finite at 200, NaN at 400)
    cfg.descent_scale = 4096.0  # the start's step, x descent_init's (health's overflowing one)
    cfg.segment = 400  # K, past the start's float32 overflow horizon (241 steps predicted)
    # at K = 400 and B = 8 the TBPTT residuals of every step would need tens of GB
    cfg.remat = 20  # jax.checkpoint every this many steps of the segment (0: off)
    cfg.meta_lr = base.meta_lr.tbv  # meta_tune's TbV rate, held constant (module doc)
    cfg.budget_s = 600.0  # meta-step seconds per method and seed (compile excluded)
    cfg.score_every_s = 120.0  # held-out score every this many budget seconds
    cfg.chunk_steps_max = 25  # at most this many meta-steps between two scores
    cfg.select_tasks = 16  # fixed held-out draws of the TbV family per score
    cfg.overflow_check_steps = 200  # inner steps of the start's health check (0: skip)
    return cfg
