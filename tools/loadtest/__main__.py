"""The command line: `python -m tools.loadtest` runs and prints; `python -m tools.loadtest serve` is the service."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

import tools.loadtest
from tools.loadtest.options import Options
from tools.loadtest.report import format_report, run
from tools.loadtest.service import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.loadtest", description=tools.loadtest.__doc__)
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="run the service (used by the harness)")
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--debug-logs", action="store_true")
    defaults = Options()
    for option in fields(Options):
        parser.add_argument(
            f"--{option.name.replace('_', '-')}",
            type=type(getattr(defaults, option.name)),
            default=getattr(defaults, option.name),
        )
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port, args.debug_logs)
        return
    report = run(Options(**{option.name: getattr(args, option.name) for option in fields(Options)}))
    print(format_report(report), flush=True)
    sys.exit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
