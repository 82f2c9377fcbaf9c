"""The command line: `python -m tools.perf bench [...]` or `python -m tools.perf load [...]`."""

from __future__ import annotations

import argparse
import sys

import tools.perf
from tools.perf import bench, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.perf", description=tools.perf.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in (("bench", bench), ("load", load)):
        module.add_arguments(commands.add_parser(name, help=module.__doc__.split("\n")[0]))  # type: ignore[union-attr]
    args = parser.parse_args(argv)
    return bench.command(args) if args.command == "bench" else load.command(args)


if __name__ == "__main__":
    sys.exit(main())
