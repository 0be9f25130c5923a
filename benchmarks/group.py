"""``python -m benchmarks.group NAME [--preset P] [--no-peer] [--out DIR]``: one group of
``make bench`` alone (``learned_estimators``, ``momentum``, ...; the keys of
:data:`benchmarks.run.GROUPS`, or ``estimators`` for ``learned_estimators``), written to
``DIR/NAME-<preset>.json`` and ``.md``, with the group's claim printed. ``make bench`` runs
every group, with the method tables."""

from __future__ import annotations

import sys
from typing import Any

from benchmarks import common
from benchmarks.run import GROUPS

# Short names accepted beside the keys of GROUPS.
ALIASES = {"estimators": "learned_estimators"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the command line, run the named group, write and return its section."""
    parser = common.group_parser("python -m benchmarks.group", __doc__)
    parser.add_argument("name", choices=sorted({*GROUPS, *ALIASES}))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    module = GROUPS[ALIASES.get(args.name, args.name)]
    if args.preset not in module.PRESETS:
        parser.error(f"group {args.name} has the presets {sorted(module.PRESETS)}.")
    return common.run_group(args.name, module, args)


if __name__ == "__main__":
    main()
