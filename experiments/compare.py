"""Compare regenerated experiment results with the stored ones (``make figures-check``).

    python -m experiments.compare NEW_DIR STORED_DIR NAME [NAME ...] --out FILE.json

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

from experiments.compare_rules import (
    DEFAULT_FLOAT,
    RESOLVERS,
    RULES,
    _float32_range,
    per_seed_bounds,
    rule_for,
)

__all__ = ["RULES", "claims_tolerance", "compare", "main", "per_seed_bounds", "rule_for"]

SKIP = ("environment", "seconds", "time_s", "timings", "figures", "wall", "elapsed")
SKIP_EXACT = ("table",)  # exact: "stable" is a method name, not a rendering


def _skipped(key: str) -> bool:
    return key in SKIP_EXACT or any(s in key for s in SKIP)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


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
    resolver = RESOLVERS.get(experiment)
    ls = resolver(stored, new_results) if resolver and new_results is not None else None

    def tolerance(path, new, old):
        rule = rule_for(experiment, path)
        if rule is not None and "resolve" in rule[1]:
            if ls is None:
                raise ValueError(f"{experiment}: its rules need the new results")
            return rule[0], ls.resolve(rule[1]["resolve"], path), rule[2]
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
    # a pattern shared by several experiments' rules is listed once per explanation
    notes = "".join(
        dict.fromkeys(
            f"- `{p}`: {why}\n"
            for p in used
            for exp_rules in RULES.values()
            for q, _, why in exp_rules
            if q == p
        )
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


if __name__ == "__main__":
    sys.exit(main())
