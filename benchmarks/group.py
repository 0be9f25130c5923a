"""``python -m benchmarks.group NAME [--preset P] [--no-peer] [--out DIR]``: one group of
``make bench`` alone (``estimators``, ``momentum``, ...; the keys of
:data:`benchmarks.run.GROUPS`), written to ``DIR/NAME-<preset>.json`` and ``.md``, with the
group's claim printed. ``make bench`` runs every group, with the method tables."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.run import GROUPS, group_preset


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.group", description=__doc__)
    parser.add_argument("name", choices=sorted(GROUPS))
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--no-peer", action="store_true", help="skip the peer library")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    module = GROUPS[args.name]
    if args.preset not in module.PRESETS:
        parser.error(f"group {args.name} has the presets {sorted(module.PRESETS)}.")
    section = module.measure(
        group_preset(module, args.preset, peer=not args.no_peer), not args.no_progress
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{args.name}-{args.preset}"
    stem.with_suffix(".json").write_text(json.dumps(section, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(module.render_markdown(section) + "\n")
    print(module.claim(section))
    print(f"wrote {stem}.json, {stem}.md")
    return section


if __name__ == "__main__":
    main()
