"""Compare regenerated experiment results with the stored ones (``make figures-check``).

    python scripts/compare_results.py NEW_DIR STORED_DIR NAME [NAME ...] --out FILE.json

For every ``NAME``, ``NEW_DIR/NAME/results.json`` is compared with
``STORED_DIR/NAME/results.json`` in one of two modes, chosen per experiment from the
host each file records (``environment``: CPU model, vector extensions,
``--xla_cpu_max_isa``, jax and jaxlib; ``common.host_fingerprint``):

* **bitwise**, when the stored results were written on this host (equal fingerprints):
  the same compiled program on the same CPU, so every number must be equal.
* **claims**, when they were written on another host, or on an unknown one (files from
  before the host was recorded): XLA compiled other code, float rounding differs, and
  each number is held to the tolerance of the first matching rule of ``RULES`` (the
  table, with the reason for each entry, is also in docs/reliability.md, "Stored results
  on another host"). Booleans, strings, None and integers not named by a rule (the
  claims themselves: checks, chosen settings, counts) must be equal in both modes.

``--mode bitwise|claims`` forces one mode. Keys that record the machine, the date or
timings (``environment``, ``*seconds*``, ``time_s``, ``timings``, ``figures``) are
skipped, and so is ``table``, the markdown rendering of numbers compared elsewhere in the
file (meta_tune's holds a seconds-per-meta-step column). Writes a JSON report and a
markdown table beside it (both name the mode and why), prints the table, and exits 1 if
any experiment differs.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

SKIP = ("environment", "seconds", "time_s", "timings", "figures", "wall", "elapsed")
SKIP_EXACT = ("table",)  # exact: "stable" is a method name, not a rendering

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
        (r"/settings\[\d+\]/eta_grid_best_(tbt|tbv)", {"ls": "grid_pick"}, GRID_PICK_WHY),
        (r"/settings\[\d+\]/eta_star_(tbt|tbv)", {"ls": "eta_star"}, ETA_STAR_WHY),
        (r"/settings\[\d+\]/meta_gd_(tbt|tbv)/.*", {"ls": "path"}, LS_PATH_WHY),
        (
            r"/checks/(eta_star_tbt|eta_star_tbv_times_t)\[\d+\]",
            {"ls": "eta_star_check"},
            "thm5's eta* per horizon (times t): " + ETA_STAR_WHY,
        ),
        (
            r"/checks/eta_star_\w+_max_over_min",
            {"ls": "eta_star_ratio"},
            "a ratio of two tuned step sizes: twice the tolerance of one (" + ETA_STAR_WHY + ")",
        ),
        (r"/checks/test_rmse_gap\w*\[\d+\]", {"ls": "rmse_gap"}, RMSE_GAP_WHY),
    ]


class LeastSquaresTolerance:
    """Resolves the ``{"ls": kind}`` rules of :data:`LS_FIGURES` against both files."""

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


def _skipped(key: str) -> bool:
    return key in SKIP_EXACT or any(s in key for s in SKIP)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def rule_for(experiment: str, path: str):
    """The first ``(pattern, tolerance, reason)`` of ``RULES`` matching ``path``, or None."""
    for pattern, tol, why in RULES.get(experiment, []) + RULES["*"]:
        if re.fullmatch(pattern, path):
            return pattern, tol, why
    return None


def compare(new, old, rtol: float = 0.0, path: str = "", tolerance=None) -> dict:
    """Number by number: ``{"equal": n, "close": n, "skipped": n, "max_rel": x,
    "differ": [(path, new, old), ...], "rules": {pattern: n}}``.

    ``tolerance(path, new, old)`` -> ``(pattern, {"rel"|"abs"|"skip": ...})`` or None
    (claims mode); without it (bitwise mode) numbers must be equal, or within ``rtol``.
    """
    out = {"equal": 0, "close": 0, "skipped": 0, "max_rel": 0.0, "differ": [], "rules": {}}

    def add(other):
        for k in ("equal", "close", "skipped"):
            out[k] += other[k]
        out["max_rel"] = max(out["max_rel"], other["max_rel"])
        out["differ"] += other["differ"]
        for k, n in other["rules"].items():
            out["rules"][k] = out["rules"].get(k, 0) + n

    rule = tolerance(path, new, old) if tolerance and path else None
    if rule and "accept" in rule[1] and not isinstance(new, dict | list):
        if rule[1]["accept"](new, old):
            out["equal" if new == old else "close"] += 1
            out["rules"][rule[0]] = 1
        else:
            out["differ"].append((path, new, old))
        return out
    if rule and rule[1].get("skip"):
        out["skipped"] += 1
        out["rules"][rule[0]] = 1
        return out
    if isinstance(new, dict) and isinstance(old, dict):
        for key in sorted(set(new) | set(old)):
            if _skipped(key):
                continue
            if key not in new or key not in old:
                where = "only in the new results" if key in new else "only in the stored ones"
                out["differ"].append((f"{path}/{key}", where, ""))
                continue
            add(compare(new[key], old[key], rtol, f"{path}/{key}", tolerance))
    elif isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            add(compare(a, b, rtol, f"{path}[{i}]", tolerance))
    elif _number(new) and _number(old):
        if new == old or (_nan(new) and _nan(old)):
            out["equal"] += 1
            return out
        tol = dict(rule[1]) if rule else {}
        if not tol and tolerance and (isinstance(new, float) or isinstance(old, float)):
            tol = dict(DEFAULT_FLOAT[0])
        if not tol and tolerance is None and rtol:
            tol = {"rel": rtol}
        big = max(abs(new), abs(old))
        rel = abs(new - old) / big if big else 0.0
        ok = math.isfinite(rel) and (
            ("rel" in tol and rel <= tol["rel"]) or ("abs" in tol and abs(new - old) <= tol["abs"])
        )
        if ok:
            out["close"] += 1
            out["max_rel"] = max(out["max_rel"], rel)
            if rule:
                out["rules"][rule[0]] = out["rules"].get(rule[0], 0) + 1
        else:
            out["differ"].append((path, new, old))
    elif new == old:
        out["equal"] += 1
    else:
        out["differ"].append((path, new, old))
    return out


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def claims_tolerance(experiment: str, stored: dict, new_results: dict | None = None):
    """``tolerance(path, new, old)`` for :func:`compare` in claims mode: the rule of
    ``RULES``, with per-seed bounds resolved against the stored file and the least-squares
    rules against both files."""
    bounds: dict[int, dict] = {}
    ls = (
        LeastSquaresTolerance(stored, new_results)
        if experiment in LS_FIGURES and new_results is not None
        else None
    )

    def tolerance(path, new, old):
        rule = rule_for(experiment, path)
        if rule is not None and "ls" in rule[1]:
            if ls is None:
                raise ValueError(f"{experiment}: the least-squares rules need the new results")
            return rule[0], ls.resolve(rule[1]["ls"], path), rule[2]
        if rule is not None and rule[1].get("float32_range"):
            return rule[0], _float32_range(stored, path), rule[2]
        if rule is None or not rule[1].get("per_seed") or not _number(new):
            return rule
        i, key, name = re.fullmatch(r"/per_seed\[(\d+)\]/(\w+)/(\w+)", path).groups()
        i = int(i)
        if i not in bounds:
            bounds[i] = per_seed_bounds(stored, i)
        bound, _ = bounds[i][(key, name)]
        return rule[0], {"abs": bound}, rule[2]

    return tolerance


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


def host_of(env: dict | None):
    from experiments import common

    return common.host_fingerprint(env)


def this_host():
    from experiments import common

    return common.this_host()


def _describe(host) -> str:
    if host is None:
        return "unknown (no CPU recorded)"
    isa = f", --xla_cpu_max_isa={host['xla_cpu_max_isa']}" if host.get("xla_cpu_max_isa") else ""
    simd = "+".join(host.get("cpu_simd") or []) or "no AVX2"
    return f"{host['cpu_model']} ({simd}{isa}; jax {host.get('jax')}, jaxlib {host.get('jaxlib')})"


def choose_mode(stored_env: dict | None, here, forced: str = "auto") -> tuple[str, str]:
    """``("bitwise" | "claims", why)`` for a stored file's ``environment``, ``here`` the
    fingerprint of the host that wrote the new results."""
    stored = host_of(stored_env)
    if forced != "auto":
        return forced, f"forced with --mode {forced}"
    if here is not None and stored == here:
        return "bitwise", "stored on the same host (CPU, extensions, XLA ISA, jax/jaxlib)"
    if here is None:
        return "claims", "this host has no fingerprint (no /proc/cpuinfo)"
    if stored is None:
        return "claims", "the stored file records no host: taken as another host"
    return "claims", f"stored on {_describe(stored)}, another host"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new")
    parser.add_argument("stored")
    parser.add_argument("names", nargs="+")
    parser.add_argument(
        "--mode",
        choices=("auto", "bitwise", "claims"),
        default="auto",
        help="auto: bitwise when the stored file was written on this host, else claims",
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--made-by", default="make figures-check", help="named in the report")
    args = parser.parse_args(argv)
    here = this_host()
    report = {"this_host": here, "mode": args.mode, "experiments": {}}
    rows = [
        "| experiment | mode (why) | numbers equal | within tolerance | not claims (skipped) "
        "| max rel. diff | differ |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name in args.names:
        new_file = Path(args.new) / name / "results.json"
        old_file = Path(args.stored) / name / "results.json"
        if not new_file.is_file():
            raise SystemExit(f"{new_file} is missing: run `python -m experiments {name}` first.")
        new, old = json.loads(new_file.read_text()), json.loads(old_file.read_text())
        # the host of the new results (as recorded: XLA_FLAGS may differ from this process's)
        new_host = host_of(new.get("environment")) or here
        mode, why = choose_mode(old.get("environment"), new_host, args.mode)
        tolerance = claims_tolerance(name, old, new) if mode == "claims" else None
        res = compare(new, old, tolerance=tolerance)
        res = {
            "mode": mode,
            "why": why,
            "stored_host": host_of(old.get("environment")),
            "new_host": new_host,
            **res,
        }
        report["experiments"][name] = res
        shown = "; ".join(
            f"{p}: {a} vs {b}" if b != "" else f"{p}: {a}" for p, a, b in res["differ"][:3]
        )
        more = f" (+{len(res['differ']) - 3} more)" if len(res["differ"]) > 3 else ""
        rows.append(
            f"| {name} | {mode} ({why}; new results from {_describe(new_host)}) | "
            f"{res['equal']} | {res['close']} | {res['skipped']} | "
            f"{res['max_rel']:.1e} | {shown + more if res['differ'] else 'none'} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    table = "\n".join(rows) + "\n"
    used = sorted({p for r in report["experiments"].values() for p in r["rules"]})
    notes = "".join(
        f"- `{p}`: {why}\n"
        for p in used
        for exp_rules in RULES.values()
        for q, _, why in exp_rules
        if q == p
    )
    out.with_suffix(".md").write_text(
        f"Regenerated results against the stored ones, compared on {_describe(here)}; "
        f"`{args.made_by}` writes this file. Mode per experiment: bitwise (every number "
        "equal) when the stored file was written on this host, else claims (the "
        "tolerances of `RULES` in scripts/compare_results.py; docs/reliability.md, "
        '"Stored results on another host").\n\n'
        + table
        + (f"\nRules used:\n\n{notes}" if notes else "")
    )
    print(table)
    return 1 if any(r["differ"] for r in report["experiments"].values()) else 0


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
            runs = [100 * r for r in details["evaluation"][name][fam]["final"]["runs"]]
            s_run = _sd(runs)
            if name in FIXED:
                bound = FLIPS_PER_RUN * 100 / n
                why = f"{FLIPS_PER_RUN} flipped predictions per run of {n} digits"
            elif name in LR_FREE:
                bound = K_SIGMA * math.sqrt(2) * s_run / math.sqrt(len(runs))
                why = f"{K_SIGMA:g} x sqrt(2) x s_run {s_run:.2f} / sqrt({len(runs)} runs)"
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


def _sd(values) -> float:
    """Sample standard deviation (n - 1)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
