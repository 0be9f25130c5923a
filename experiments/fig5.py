"""Figure 5 of Wang et al. (2021) and the claims of Figures 4-5 over seeds
(``configs/fig5.py``): reads the fig4a-c results, writes ``results.json`` and
``claims.md`` (included in ``docs/experiments/fig4.md``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections

from experiments import common, mnist_report

PAGE = "experiments/fig4.md"  # the documentation page (experiments/registry.py)
GROUP = "mnist"
ORDER = 130


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict[str, Any]:
    """Load the settings' results (missing ones are named, not fatal), check the claims."""
    del progress
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded, missing = {}, {}
    for name, path in cfg.results.items():
        path = Path(path)
        rerun = f"`python -m experiments {name} --out {path.parent}`"
        if path.exists():
            stored = json.loads(path.read_text())
            if "per_seed" in stored and not stored.get("complete", True):
                done, wanted = stored["seeds_done"], stored["config"]["seeds"]
                missing[name] = (
                    f"{path} is partial ({len(done)} of {len(wanted)} seeds): finish it with "
                    f"the same command, {rerun}"
                )
            elif "per_seed" in stored:
                loaded[name] = stored
            else:
                missing[name] = f"{path} has no per_seed results (an older protocol): run {rerun}"
        else:
            missing[name] = f"{path} not found: run {rerun}"
    results = {
        "experiment": "fig5",
        "config": cfg.to_dict(),
        "missing": missing,
        "claims": mnist_report.claims(loaded),
        "train_acc_fig4b": loaded["fig4b"]["summary"]["train_acc"] if "fig4b" in loaded else None,
        "seeds": {k: [r["seed"] for r in v["per_seed"]] for k, v in loaded.items()},
    }
    (out / "claims.md").write_text(claims_table(results) + "\n")
    common.write_json(out / "results.json", results)
    return common.jsonable(results)


def claims_table(results: dict[str, Any]) -> str:
    """Markdown: each pre-registered test (one-sided, paired by seed), its numbers and its
    verdict."""
    rows = [
        "| claim (one-sided, paired by seed) | verdict | mean | one-sided 95% bound | "
        "95% interval | p | seeds (n) | seeds for power 0.8 |",
        "|---|---|---:|---:|---|---:|---|---:|",
    ]
    for entry in results["claims"].values():
        if entry["verdict"] == "not run":
            rows.append(f"| {entry['claim']} | not run | | | | | | |")
            continue
        lo, hi = entry.get("ci95", [None, None])
        fmt = lambda v, f="+.1f": "–" if v is None else format(v, f)
        seeds = entry.get("seeds", list(range(entry["n"])))
        rows.append(
            f"| {entry['claim']} | **{entry['verdict']}** | {fmt(entry['mean'])} | "
            f"> {fmt(entry['lower95'])} | [{fmt(lo)}, {fmt(hi)}] | {fmt(entry['p'], '.3f')} | "
            f"{seeds} ({entry['n']}) | {entry.get('seeds_for_power') or '–'} |"
        )
    for name, why in results["missing"].items():
        rows.append(f"| ({name} missing) | | | | | | {why} | |")
    return "\n".join(rows)


def summarize(results: dict[str, Any]) -> str:
    return claims_table(results)
