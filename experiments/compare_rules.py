"""The tolerance table of :mod:`experiments.compare`: what may move, and by how much,
when an experiment's stored results are rerun on another host (docs/reliability.md,
"Stored results on another host"). ``RULES[experiment]`` is a list of ``(path regex,
tolerance, reason)``; a tolerance is ``{"rel": r}``, ``{"abs": a}``, ``{"skip": True}``
(not a claim: left out, counted), ``{"per_seed": True}`` (fig4a/b/c:
:func:`per_seed_bounds`), ``{"float32_range": True}`` (thm3) or ``{"resolve": kind}``
(resolved against both files by the experiment's class in :data:`RESOLVERS`).
"""

from __future__ import annotations

import math
import re

# -- the tolerance table for results from another host ---------------------------------
# RULES[experiment]: (path regex, tolerance, reason), first full match wins, then the
# "*" rules. Paths look like /trajectories/stable[12]. Tolerances: {"rel": r} (relative
# to the larger magnitude), {"abs": a}, {"skip": True} (not a claim: left out, counted),
# {"per_seed": True} (fig4a/b/c: per_seed_bounds below). Numbers no rule names: floats
# at DEFAULT_FLOAT, integers, booleans, strings, None equal.
F64 = {"rel": 1e-9}
F64_WHY = (
    "float64 closed forms (numpy, mpmath): another instruction set rounds the last bits "
    "of vectorised sums and FMAs, ~1e-15 relative; 1e-9 leaves room and still catches "
    "any change of a formula or input"
)
TASK = {"rel": 1e-5, "abs": 1e-6}
TASK_WHY = (
    "the task's eigenvalues and coefficients are drawn in float32 (jax.random: the "
    "polynomials behind normal/uniform draws compile differently per instruction set) and "
    "stored as float64: a few float32 ulps (observed under --xla_cpu_max_isa=AVX: up to "
    "2e-6 relative, 1.3e-7 absolute, on numbers of order 0.1); 1e-5 relative or 1e-6 "
    "absolute"
)
LOG10 = {"rel": 1e-5, "abs": 1e-4}
LOG10_WHY = (
    "log10 of float64/mpmath closed forms over t up to 2000 steps of the float32-drawn "
    "task: a relative change u of an eigenvalue moves log10 of a t-fold product by about "
    "t u / ln 10 (2000 x 1e-7 / 2.3 = 1e-4; observed 6e-6)"
)
F32 = {"rel": 1e-3}
F32_WHY = (
    "float32 iterates: each step rounds differently on another instruction set (FMA "
    "contraction, vector width, ~1e-7 relative), and the errors accumulate over the "
    "steps; fig1_momentum moved 1e-5 between two hosts; 1e-3 is 100 times that and far "
    "below any difference the claims rest on"
)
DEFAULT_FLOAT = ({"rel": 1e-3}, "float32 computations by default: " + F32_WHY)
META_WHY = (
    "meta-training amplifies rounding differences into another learned optimizer "
    "(fig4b: TbT test accuracy moved 4.7 points between two hosts); its per-step "
    "records are a draw, not a claim"
)
RULES: dict[str, list[tuple[str, dict, str]]] = {
    "*": [
        (r".*/config/.*|/config", {"rel": 0.0}, "the configuration: must be the same run"),
        (r".*/(eigenvalues|coefficients)\[\d+\]", TASK, TASK_WHY),
        (
            r"/(smoothness|strong_convexity|c|eta_star|eta_star_mpmath|claim2_bound)"
            r"(\[\d+\])?",
            TASK,
            "float64 (and mpmath) closed forms of the task: exact functions of its float32 "
            "draws, which they inherit (observed 7e-8 relative); " + TASK_WHY,
        ),
        (r"/eta_grid\[\d+\]", F64, "the step-size grid: " + F64_WHY),
    ],
    "fig1": [
        (r"/trajectories/.*", F32, F32_WHY),
        (r"/final_eta/.*", F32, F32_WHY),
        (
            r"/converged_at/.*",
            {"abs": 2},
            "first step within rtol of eta*: a float32 trajectory that crosses the "
            "threshold slowly may cross it a step or two earlier or later",
        ),
    ],
    "fig1_momentum": [
        (
            r"/runs/stable/(trajectory/.*|final/.*|gap_to_fine_minimum"
            r"|endpoint/(value|local_grid_min|gradient_float64/.*))",
            {"skip": True},
            "the stable method's path: 1500 Adam meta-steps on a log-loss landscape with "
            "490 local minima on the grid (ripples.local_minima_2d), so another host's "
            "rounding can send it to another local minimum (under --xla_cpu_max_isa=AVX: "
            "endpoint -0.699 against -0.755, gap to the fine minimum 0.150 against 0.094); "
            "the claims (it ends at a local minimum, not within rtol of the fine minimizer, "
            "no non-finite step) are compared exactly",
        ),
        (
            r".*/endpoint/gradient_float64/.*",
            {"rel": 1e-2},
            "the float64 gradient at a grid minimizer of the rippled landscape, where the "
            "curvature is large: the task's float32 draws (~1e-7 relative, above) move it "
            "by ~1e-3 (observed 9.5e-4 at the fine minimizer)",
        ),
        (r".*", F32, F32_WHY),
    ],
    "thm3": [
        (
            r"/curves\[\d+\]/(exact_log10|bound_log10)\[\d+\]|/checks/.*log10.*",
            LOG10,
            LOG10_WHY,
        ),
        (
            r"/curves\[\d+\]/(autodiff|stable)_float32\[\d+\]",
            {"float32_range": True},
            "float32 meta-gradients: 1e-3 relative (" + F32_WHY + "; observed 4e-6) where "
            "the exact value lies in float32's normal range; outside it (|F'| < 1.2e-38) "
            "float32 holds no digit of it, and what the underflow leaves is rounding: 0 on "
            "the stored host, -1.5e-35 under --xla_cpu_max_isa=AVX, for an exact -2e-80",
        ),
        (
            r"/curves\[\d+\]/(autodiff|stable)_float64\[\d+\]",
            {"rel": 1e-3},
            "float64 meta-gradients of the float32-drawn task: the draws' relative error "
            "(~1e-7) grows t-fold in a t-step product (observed 1.4e-5 at t = 2000)",
        ),
        (
            r"/checks/failures_from_t/.+/\w+_float32",
            {"float32_range": True},
            "the first t where a float32 meta-gradient is 0 or non-finite: equal, or both "
            "at or beyond the first t where the exact value leaves float32's range (there "
            "an underflow gives 0 on one host, a tiny nonzero number on another: "
            "last_loss eta=1/L, autodiff: 2000 on the stored host, never under AVX)",
        ),
    ],
    "meta_tune": [
        (r"/(grid|long)/.*|/(grid|long)\[\d+\]/.*", {"skip": True}, META_WHY),
        (r"/start_score", F32, "no meta-training yet: " + F32_WHY),
        (r"/chosen/.*", {"skip": True}, "picked from meta-trained scores: " + META_WHY),
    ],
    "ood": [
        (
            r"/(meta_training|per_task|curves|aggregate|checks|adam_tuning)/.*",
            {"skip": True},
            "not yet bounded on another host: " + META_WHY,
        ),
    ],
}
for _fig in ("fig4a", "fig4b", "fig4c"):
    RULES[_fig] = [
        (
            r"/per_seed\[\d+\]/(test_acc|test_acc_noisy_labels|train_acc)/\w+",
            {"per_seed": True},
            "per-seed accuracies: per_seed_bounds (meta-trained: 3 x sqrt(2) x the spread "
            "over seeds; adapted: 3 x sqrt(2) x the evaluation's own spread / sqrt(runs); "
            "fixed: 5 flipped predictions per run)",
        ),
        (
            r"/summary/.*",
            {"skip": True},
            "means and intervals over seeds of the per-seed numbers compared above",
        ),
        (r"/details/.*", {"skip": True}, "per-step records of each seed: " + META_WHY),
    ]


# -- least squares (fig2, fig3, thm5, thm6): step sizes tuned on flat objectives ----------
# eta* is found in two stages (experiments/generalization.py): the best point of a
# geometric grid of the float32 meta-objective, then Adam on log(eta) from it
# (``refine_lr`` per step), keeping the best iterate. Near a minimum the objective is flat,
# so another host's rounding may pick another grid point or another iterate; the numbers
# computed from eta* (RMSEs, test errors) then follow it.
LS_FIGURES = ("fig2", "fig3", "thm5", "thm6")
GRID_PICK_WHY = (
    "the grid's best step size, the argmin of a float32 meta-objective that is flat near "
    "its minimum: equal, or the next grid point when the stored objective there is within "
    "1e-3 relative of the stored minimum (thm6, n = 500, under --xla_cpu_max_isa=AVX: "
    "0.4727 for 0.5200)"
)
ETA_STAR_WHY = (
    "the tuned step size, Adam's best iterate in log(eta) from the grid's pick: within one "
    "Adam step, exp(refine_lr) - 1 relative (2% at refine_lr = 0.02; observed 0.24% under "
    "--xla_cpu_max_isa=AVX), one grid spacing more when the grid's pick moved to the next "
    "point"
)
LS_PATH_WHY = (
    "Adam's path from the grid's pick: float32 (" + F32_WHY + ") when both runs start "
    "from the same grid point; from another one it is another path, and only where it "
    "ends (eta*, above) is a claim"
)
RMSE_GAP_WHY = (
    "a difference of two test RMSEs (TbT - TbV), each float32 within 1e-3 relative: "
    "1e-3 times the largest stored RMSE sum, absolute (the gap's relative change is "
    "unbounded where the two nearly cancel: fig3 at the largest n, 4.7e-4 for 5.1e-4)"
)
for _fig in LS_FIGURES:
    RULES[_fig] = [
        (r"/settings\[\d+\]/eta_grid_best_(tbt|tbv)", {"resolve": "grid_pick"}, GRID_PICK_WHY),
        (r"/settings\[\d+\]/eta_star_(tbt|tbv)", {"resolve": "eta_star"}, ETA_STAR_WHY),
        (r"/settings\[\d+\]/meta_gd_(tbt|tbv)/.*", {"resolve": "path"}, LS_PATH_WHY),
        (
            r"/checks/(eta_star_tbt|eta_star_tbv_times_t)\[\d+\]",
            {"resolve": "eta_star_check"},
            "thm5's eta* per horizon (times t): " + ETA_STAR_WHY,
        ),
        (
            r"/checks/eta_star_\w+_max_over_min",
            {"resolve": "eta_star_ratio"},
            "a ratio of two tuned step sizes: twice the tolerance of one (" + ETA_STAR_WHY + ")",
        ),
        (r"/checks/test_rmse_gap\w*\[\d+\]", {"resolve": "rmse_gap"}, RMSE_GAP_WHY),
    ]


class LeastSquaresTolerance:
    """Resolves the ``{"resolve": kind}`` rules of :data:`LS_FIGURES` against both files."""

    def __init__(self, stored: dict, new: dict):
        self.stored, self.new = stored, new
        grid = stored["eta_grid"]
        self.spacing = grid[1] / grid[0]  # geometric grid: the ratio of neighbours
        self.step = math.exp(stored["config"]["refine_lr"]) - 1.0
        sums = [s["test_rmse_tbt"] + s["test_rmse_tbv"] for s in stored["settings"]]
        self.gap_abs = 1e-3 * max(sums)

    def moved(self, i: int, name: str) -> bool:
        key = f"eta_grid_best_{name}"
        return self.new["settings"][i][key] != self.stored["settings"][i][key]

    def eta_rel(self, i: int, name: str) -> float:
        if self.moved(i, name):
            return self.spacing * (1.0 + self.step) - 1.0
        return self.step

    def grid_pick(self, i: int, name: str):
        grid = self.stored["eta_grid"]
        values = self.stored["settings"][i][f"meta_objective_{name}"]

        def accept(new, old):
            if new == old:
                return True
            a, b = (min(range(len(grid)), key=lambda k, v=v: abs(grid[k] - v)) for v in (new, old))
            close = abs(values[a] - values[b]) <= 1e-3 * max(abs(values[a]), abs(values[b]))
            return abs(a - b) == 1 and close

        return {"accept": accept}

    def resolve(self, kind: str, path: str) -> dict:
        m = re.match(r"/(?:settings|checks/\w+)\[(\d+)\](?:/\w+_(tbt|tbv)\b)?", path)
        i = int(m[1]) if m else None
        name = m[2] if m and m[2] else None
        if kind == "grid_pick":
            return self.grid_pick(i, name)
        if kind == "eta_star":
            return {"rel": self.eta_rel(i, name)}
        if kind == "path":
            return {"skip": True} if self.moved(i, name) else dict(F32)
        if kind == "eta_star_check":
            name = "tbt" if "/eta_star_tbt[" in path else "tbv"
            return {"rel": self.eta_rel(i, name)}
        if kind == "eta_star_ratio":
            n = len(self.stored["settings"])
            name = "tbt" if "tbt" in path else "tbv"
            return {"rel": 2 * max(self.eta_rel(k, name) for k in range(n))}
        if kind == "rmse_gap":
            return {"abs": self.gap_abs}
        raise ValueError(f"unknown least-squares rule {kind!r}")


# -- the quick experiments whose runs adapt or meta-train (health, sweep, towers, stability)
RUN_DRAW_WHY = (
    "the learning rate of each run is adapted by the hypergradient levels, so another "
    "host's rounding makes a run a new draw of its seed's training (as for the "
    "learning-rate-free optimizers of fig4): a mean over the seeds is held to 3 sqrt(2) "
    "s / sqrt(seeds), s the stored seeds' sample SD at that point, at least 5 flipped "
    "predictions per run for an accuracy (observed under --xla_cpu_max_isa=AVX: 0.003)"
)
RULES["towers"] = [
    (
        r"/rows\[\d+\]/(test_accuracy|train_loss|last_batch_loss|final_lr)\[\d+\]"
        r"|/rows\[\d+\]/(test_accuracy_seeds|train_loss_seeds|lr_trajectory)\[\d+\]\[\d+\]",
        {"resolve": "run"},
        "each point's mean over seeds (at large lr0 training is chaotic and the seeds spread "
        "widely, which the bound follows): "
        + RUN_DRAW_WHY
        + "; one seed's numbers, the per-step learning rates and the last minibatch's loss "
        "(one noisy sample per run) are records of a draw, not compared; the final learning "
        "rate, 5% (observed 2%)",
    ),
    (
        r"/rows\[\d+\]/(spread|best_accuracy|worst_accuracy)|/spread/\w+/\d+",
        {"resolve": "spread"},
        "the best, the worst and their difference over lr0 of the accuracies above: twice "
        "the largest bound of the row's accuracies",
    ),
]
RULES["sweep"] = [
    (
        r"/cells\[\d+\]/(converged_at|final_eta)",
        {"resolve": "cell"},
        "meta-GD's first step that stays within rtol of eta* (converged_at) and its last "
        "eta: for a run that converged (success, compared exactly), within 5% of the "
        "meta-steps (50 of 1000; observed 21 at t = 1280, eta0 = 2.4 eta*, where the run "
        "first overshoots into the rough part of the landscape: the exact mpmath run moves "
        "too, with the float32-drawn task) and 1e-3 relative; for one that did not converge "
        "in its 1000 meta-steps, where it stopped is not a claim (t = 5120: observed 0.6%)",
    ),
]
RULES["health"] = [
    (
        r"/mnist/rows\[\d+\]/(exponent|predicted_overflow_float32)",
        {"rel": 0.05},
        "the finite-time Lyapunov exponent of the learned optimizer's float32 training "
        "dynamics (and the overflow horizon computed from it): an average along a trajectory "
        "that another host's rounding replaces after about ln(1/u) / lambda steps (160 at "
        "lambda = 0.1), i.e. a statistical estimate (observed 1.4%); 5%",
    ),
    (
        r"/mnist/rows\[\d+\]/meta_gradient_abs/\d+",
        {"resolve": "decade"},
        "float32 meta-gradients through 50-400 steps of those dynamics, which amplify "
        "rounding differences as they amplify the meta-gradient: within a factor of 10 "
        "(observed 2.6 at t = 200), the claims being the order of growth and where it "
        "overflows (observed_nonfinite_at, compared exactly)",
    ),
    (
        r"/quadratic/\w+/max_relative_error",
        {"abs": 1e-5},
        "the largest relative error of the predicted exponent over the sweep (about 2e-4): "
        "rounding moves an error measure absolutely (observed 7.6e-7), not relatively",
    ),
]
RULES["stability"] = [
    (
        r"/(meta_training|trajectory|curvature_sweep|step_scale_grid|first_step_alignment)/.*"
        r"|/radius_initial/trained|/baseline/lopt",
        {"skip": True},
        "not yet bounded on another host: the learned optimizer analysed here is "
        "meta-trained in the run; " + META_WHY,
    ),
]


class TowersTolerance:
    """The towers rules: a run's numbers against the stored seeds' spread."""

    K, FLIPS = 3.0, 5

    def __init__(self, stored: dict, new: dict):
        self.stored, self.new = stored, new
        self.n_test = stored["settings"]["n_test"]

    def bound(self, r: int, i: int, key: str) -> float:
        seeds = self.stored["rows"][r][f"{key}_seeds"][i]
        n = len(seeds)
        bound = self.K * math.sqrt(2) * _sd(seeds) / math.sqrt(n)
        return max(bound, self.FLIPS / self.n_test) if key == "test_accuracy" else bound

    def resolve(self, kind: str, path: str) -> dict:
        m = re.match(r"/rows\[(\d+)\]/(\w+?)(_seeds)?\[(\d+)\]", path)
        if kind == "run":
            r, key, i = int(m[1]), m[2], int(m[4])
            if m[3] or key in ("lr_trajectory", "last_batch_loss"):
                return {"skip": True}  # one seed's run, a per-step record, one minibatch
            if key == "final_lr":
                return {"rel": 0.05}
            return {"abs": self.bound(r, i, key)}
        rows = self.stored["rows"]
        m = re.match(r"/rows\[(\d+)\]", path)
        which = [int(m[1])] if m else range(len(rows))
        if not m:
            variant, height = re.match(r"/spread/(\w+)/(\d+)", path).groups()
            which = [
                k
                for k, row in enumerate(rows)
                if row["variant"] == variant and row["height"] == int(height)
            ]
        bounds = [
            self.bound(r, i, "test_accuracy")
            for r in which
            for i in range(len(rows[r]["test_accuracy"]))
        ]
        return {"abs": 2 * max(bounds)} if bounds else {"skip": True}


class SweepTolerance:
    """The sweep rules: converged runs within a few meta-steps, unconverged ones not."""

    def __init__(self, stored: dict, new: dict):
        self.stored, self.new = stored, new
        self.steps = stored["config"]["meta_steps"]

    def resolve(self, kind: str, path: str) -> dict:
        i = int(re.match(r"/cells\[(\d+)\]", path)[1])
        converged = self.stored["cells"][i]["success"] and self.new["cells"][i]["success"]
        if not converged:
            return {"skip": True}
        return {"abs": 0.05 * self.steps} if path.endswith("converged_at") else dict(F32)


class HealthTolerance:
    """The health rules: learned-optimizer meta-gradients within a decade."""

    def __init__(self, stored: dict, new: dict):
        pass

    def resolve(self, kind: str, path: str) -> dict:
        def accept(new, old):
            if new is None or old is None or not (new and old):
                return new == old
            return abs(math.log10(abs(new) / abs(old))) <= 1.0

        return {"accept": accept}


def rule_for(experiment: str, path: str):
    """The first ``(pattern, tolerance, reason)`` of ``RULES`` matching ``path``, or None."""
    for pattern, tol, why in RULES.get(experiment, []) + RULES["*"]:
        if re.fullmatch(pattern, path):
            return pattern, tol, why
    return None


RESOLVERS = {
    **dict.fromkeys(LS_FIGURES, LeastSquaresTolerance),
    "towers": TowersTolerance,
    "sweep": SweepTolerance,
    "health": HealthTolerance,
}


FLOAT32_LOG10_RANGE = (math.log10(1.1754944e-38), math.log10(3.4028235e38))


def _float32_range(stored: dict, path: str) -> dict:
    """thm3's float32 tolerances, from the stored exact values (see RULES["thm3"])."""
    lo, hi = FLOAT32_LOG10_RANGE
    m = re.fullmatch(r"/curves\[(\d+)\]/\w+\[(\d+)\]", path)
    if m:
        exact = stored["curves"][int(m[1])]["exact_log10"][int(m[2])]
        return dict(F32) if exact is not None and lo < exact < hi else {"skip": True}
    name = path.removeprefix("/checks/failures_from_t/").rsplit("/", 1)[0]  # holds a /
    curve = next(c for c in stored["curves"] if f"{c['objective']} eta={c['eta_label']}" == name)
    t_out = next(
        (
            t
            for t, e in zip(curve["t"], curve["exact_log10"], strict=True)
            if e is None or not lo < e < hi
        ),
        None,
    )

    def beyond(v):
        return v is None or (t_out is not None and v >= t_out)

    return {"accept": lambda new, old: new == old or (beyond(new) and beyond(old))}


# -- per-seed numbers of the MNIST learned-optimizer experiments (fig4a/b/c) -------------
META_TRAINED = ("tbt", "tbv")
LR_FREE = ("prodigy", "dog", "schedule_free_adamw")
FIXED = ("sgd", "adam", "warm_start")
PER_SEED_KEYS = {
    "test_acc": "test_acc",
    "test_acc_noisy_labels": "test_acc_noisy",
    "train_acc": "train_acc",
}
K_SIGMA = 3.0  # a 3-sigma bound on the difference of two draws
FLIPS_PER_RUN = 5  # predictions of one evaluation run that another host's rounding may flip


def per_seed_bounds(stored: dict, seed_index: int) -> dict:
    """``{(key, optimizer): (bound in points, reason)}`` for the numbers of
    ``stored["per_seed"][seed_index]`` (a fig4a/b/c results file) rerun on another host.

    * sgd, adam, warm_start (nothing meta-trained, nothing adapted): the same optimizer on
      the same digits; another host's rounding can only flip predictions near a decision
      boundary. A run's accuracy moves 100/n points per flipped digit (n = 1000 test
      digits, ``families.eval.n`` training digits); the number is the mean of ``runs``
      runs, so FLIPS_PER_RUN flips in every run, all one way, move it by
      FLIPS_PER_RUN * 100/n points (0.5 for n = 1000). Observed: 0.02 (one flip).
    * prodigy, dog, schedule_free_adamw (step sizes adapted from gradient and distance
      estimates): a rounding difference can change the adapted step size and with it the
      whole trajectory of a run, i.e. each run becomes a new draw of the evaluation's own
      randomness. Two means of ``runs`` such draws differ with standard deviation
      sqrt(2) s_run / sqrt(runs) (s_run: sample SD of the stored runs at this seed); the
      bound is K_SIGMA times that.
    * tbt, tbv (meta-trained): another host's rounding grows over 150 meta-steps of
      truncated ES into another learned optimizer (and maybe another selected checkpoint):
      the rerun is a new draw of the meta-training outcome. Its spread is estimated by
      sigma = max(s_seed, s_run): s_seed, the sample SD of the number over the stored seeds
      (which differ in their data and meta-training draws, an upper estimate of the
      rounding's effect), and s_run as above (a floor when the few seeds happen to agree).
      The stored and the rerun number are two such draws: the bound is
      K_SIGMA * sqrt(2) * sigma.
    """
    seeds = stored["per_seed"]
    row = seeds[seed_index]
    details = stored["details"][str(row["seed"])]
    n_test = stored.get("data", {}).get("info", {}).get("num_test", 1000)
    n_train = details["families"]["eval"]["n"]
    out = {}
    for key, fam in PER_SEED_KEYS.items():
        n = n_train if key == "train_acc" else n_test
        for name in row[key]:
            s_run, n_runs = _run_spread(details, name, fam)
            if name in FIXED:
                bound = FLIPS_PER_RUN * 100 / n
                why = f"{FLIPS_PER_RUN} flipped predictions per run of {n} digits"
            elif name in LR_FREE:
                bound = K_SIGMA * math.sqrt(2) * s_run / math.sqrt(n_runs)
                why = f"{K_SIGMA:g} x sqrt(2) x s_run {s_run:.2f} / sqrt({n_runs} runs)"
            else:
                s_seed = _sd([s[key][name] for s in seeds]) if len(seeds) > 1 else 0.0
                sigma = max(s_seed, s_run)
                bound = K_SIGMA * math.sqrt(2) * sigma
                why = (
                    f"{K_SIGMA:g} x sqrt(2) x max(s_seed {s_seed:.2f} over {len(seeds)} seeds, "
                    f"s_run {s_run:.2f})"
                )
            out[(key, name)] = (bound, why)
    return out


def _run_spread(details: dict, name: str, fam: str) -> tuple[float, int]:
    """``(s_run, runs)``: the sample SD in points of ``name``'s metric ``fam`` over the
    evaluation runs, at the step the per-seed numbers are read: the meta-training horizon
    (``details["evaluated_at"]["horizon"]``; the stored per-step SD is over the runs, with
    divisor ``runs``, so it is rescaled by sqrt(runs / (runs - 1))), or the last step in
    files that predate ``evaluated_at`` (the per-run values are stored for it)."""
    evaluation = details["evaluation"][name]
    horizon = details.get("evaluated_at", {}).get("horizon")
    if horizon is None:
        runs = [100 * r for r in evaluation[fam]["final"]["runs"]]
        return _sd(runs), len(runs)
    n = int(evaluation["runs"])
    population_sd = evaluation[fam]["std"][evaluation["steps"].index(horizon)]
    return 100 * population_sd * math.sqrt(n / (n - 1)), n


def _sd(values) -> float:
    """Sample standard deviation (n - 1)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
