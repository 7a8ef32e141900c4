"""``python -m coldtrace.grafana [--out DIR] [--check]``: render the dashboards, or check them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from coldtrace.grafana.build import DEFAULT_OUT, stale, write_all


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboard JSON files; with ``--check``, exit 1 if any is missing or out of date."""
    parser = argparse.ArgumentParser(prog="python -m coldtrace.grafana", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"directory (default: {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the files differ")
    args = parser.parse_args(argv)
    if args.check:
        differing = stale(args.out)
        for name in differing:
            print(f"{args.out / name}: out of date; run python -m coldtrace.grafana", file=sys.stderr)
        return 1 if differing else 0
    for path in write_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
