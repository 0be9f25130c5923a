"""Compare regenerated experiment results with the stored ones (``make figures-check``).

    python scripts/compare_results.py NEW_DIR STORED_DIR NAME [NAME ...] --out FILE.json

For every ``NAME``, ``NEW_DIR/NAME/results.json`` is compared with
``STORED_DIR/NAME/results.json`` number by number: equal, within ``--rtol`` (float
rounding of another build or machine), or different (the path and both values are
listed). Keys that record the machine, the date or timings (``environment``,
``*seconds*``, ``time_s``, ``timings``, ``figures``) are skipped, and so is ``table``,
the markdown rendering of numbers compared elsewhere in the file (meta_tune's holds a
seconds-per-meta-step column). Writes a JSON report
and a markdown table beside it, prints the table, and exits 1 if any experiment differs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

SKIP = ("environment", "seconds", "time_s", "timings", "figures", "wall", "elapsed")
SKIP_EXACT = ("table",)  # exact: "stable" is a method name, not a rendering


def _skipped(key: str) -> bool:
    return key in SKIP_EXACT or any(s in key for s in SKIP)


def compare(new, old, rtol: float, path: str = "") -> dict:
    """``{"equal": n, "close": n, "max_rel": x, "differ": [(path, new, old), ...]}``."""
    out = {"equal": 0, "close": 0, "max_rel": 0.0, "differ": []}

    def add(other):
        out["equal"] += other["equal"]
        out["close"] += other["close"]
        out["max_rel"] = max(out["max_rel"], other["max_rel"])
        out["differ"] += other["differ"]

    if isinstance(new, dict) and isinstance(old, dict):
        for key in sorted(set(new) | set(old)):
            if _skipped(key):
                continue
            if key not in new or key not in old:
                where = "only in the new results" if key in new else "only in the stored ones"
                out["differ"].append((f"{path}/{key}", where, ""))
                continue
            add(compare(new[key], old[key], rtol, f"{path}/{key}"))
    elif isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            add(compare(a, b, rtol, f"{path}[{i}]"))
    elif _number(new) and _number(old):
        if new == old or (new is None and old is None):
            out["equal"] += 1
        else:
            rel = abs(new - old) / max(abs(new), abs(old))
            if math.isfinite(rel) and rel <= rtol:
                out["close"] += 1
                out["max_rel"] = max(out["max_rel"], rel)
            else:
                out["differ"].append((path, new, old))
    elif new == old:
        out["equal"] += 1
    else:
        out["differ"].append((path, new, old))
    return out


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new")
    parser.add_argument("stored")
    parser.add_argument("names", nargs="+")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--out", required=True)
    parser.add_argument("--made-by", default="make figures-check", help="named in the report")
    args = parser.parse_args(argv)
    report = {"rtol": args.rtol, "experiments": {}}
    rows = [
        "| experiment | numbers equal | within rtol | max rel. diff | differ |",
        "|---|---:|---:|---:|---|",
    ]
    for name in args.names:
        new_file = Path(args.new) / name / "results.json"
        old_file = Path(args.stored) / name / "results.json"
        if not new_file.is_file():
            raise SystemExit(f"{new_file} is missing: run `python -m l2l_jax {name}` first.")
        res = compare(json.loads(new_file.read_text()), json.loads(old_file.read_text()), args.rtol)
        report["experiments"][name] = res
        shown = "; ".join(
            f"{p}: {a} vs {b}" if b != "" else f"{p}: {a}" for p, a, b in res["differ"][:3]
        )
        more = f" (+{len(res['differ']) - 3} more)" if len(res["differ"]) > 3 else ""
        rows.append(
            f"| {name} | {res['equal']} | {res['close']} | {res['max_rel']:.1e} | "
            f"{shown + more if res['differ'] else 'none'} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    table = "\n".join(rows) + "\n"
    out.with_suffix(".md").write_text(
        f"Regenerated results against the stored ones (rtol {args.rtol:g}); "
        f"`{args.made_by}` writes this file.\n\n" + table
    )
    print(table)
    return 1 if any(r["differ"] for r in report["experiments"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
