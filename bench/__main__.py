"""``python -m bench [SCENARIO...] [--json FILE] [--list] [--keep]``: run the named
scenarios (default: all), print the table of figures; exit 0 when every figure was
measured and met its goal, 1 otherwise, 2 on a usage error."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from bench import discover, format_table, machine_text, report, run_scenario


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    scenarios = discover()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run benchmark scenarios and print their figures.",
        epilog="scenarios: " + ", ".join(sorted(scenarios)),
    )
    parser.add_argument("scenario", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the figures here")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scenarios' work directories (debugging)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the scenarios' work directories go (default: a temporary directory)",
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        help="screenshots and logs (default: $GATING_TEST_ARTIFACTS or test-artifacts/, + bench/)",
    )
    args = parser.parse_args(args_in)

    if args.list:
        for sc in sorted(scenarios.values(), key=lambda s: s.name):
            print(f"{sc.name:20} {sc.description}")
        return 0
    unknown = [n for n in args.scenario if n not in scenarios]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(scenarios)}")
    names = args.scenario or sorted(scenarios)

    if args.artifacts is None:
        from tests.support.browser import artifacts_dir

        args.artifacts = artifacts_dir() / "bench"
    args.artifacts.mkdir(parents=True, exist_ok=True)

    workroot = args.workdir or Path(tempfile.mkdtemp(prefix="gating-bench-"))
    workroot.mkdir(parents=True, exist_ok=True)
    figures = []
    try:
        for name in names:
            figures += run_scenario(scenarios[name], workroot, args.artifacts, args.keep)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workroot, ignore_errors=True)

    result = report(figures, args_in)
    print(f"machine: {machine_text(result['machine'])}")
    print(f"date: {result['date']}")
    print()
    print(format_table(figures), end="")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    ok = all(f.error is None and f.met is not False for f in figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
