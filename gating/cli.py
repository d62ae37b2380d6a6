"""The ``gating`` command.

* ``gating check PATH``: exit 0 when the configuration directory (or pipeline file) is
  valid, 1 with every error as ``FILE:LINE:COLUMN: message`` otherwise.
* ``gating plan PATH [--json]``: the per-architecture stages of every pipeline and the
  builders they become.
* ``gating demo``: create and run the embedded demo master with its workers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from gating.diagnostics import ConfigError
from gating.plan import Plan, sorted_builders
from gating.site import load_config


def _load(path: str) -> Plan | None:
    try:
        return load_config(path).plan
    except ConfigError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        n = len(exc.diagnostics)
        print(f"{n} error{'s' if n != 1 else ''} found", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    plan = _load(args.path)
    if plan is None:
        return 1
    jobs = sum(1 for b in plan.builders if b.kind == "job")
    print(f"OK: {len(plan.pipelines)} pipeline(s), {jobs} job builder(s)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    plan = _load(args.path)
    if plan is None:
        return 1
    if args.json:
        json.dump(plan.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for p in plan.pipelines:
        triggers = ", ".join(t.kind for t in p.triggers) or "manual"
        print(f"pipeline {p.name} ({p.file}; triggers: {triggers})")
        for lane in p.lanes():
            stages = " -> ".join(
                "[" + ", ".join(f"{job}[{index}]" for job, index in stage) + "]"
                for stage in p.stages_for(lane)
            )
            print(f"  {lane:<8} {stages}")
    print()
    print(f"{'builder':<48} {'arch':<8} workers")
    for b in sorted_builders(plan.builders):
        print(f"{b.name:<48} {b.arch or '-':<8} {', '.join(b.workernames) or '-'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gating import demo

    return demo.run(args.basedir, port=args.port, pb_port=args.pb_port)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gating", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a configuration directory or pipeline file")
    check.add_argument("path")
    check.set_defaults(func=cmd_check)
    plan = sub.add_parser("plan", help="show the stages and builders a configuration makes")
    plan.add_argument("path")
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(func=cmd_plan)
    demo = sub.add_parser("demo", help="run the embedded demo master, workers and web UI")
    demo.add_argument("--basedir", default=".gating-demo")
    demo.add_argument("--port", type=int, default=8010, help="web UI port")
    demo.add_argument("--pb-port", type=int, default=9989, help="port workers connect to")
    demo.set_defaults(func=cmd_demo)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
