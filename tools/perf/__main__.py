"""The command line: `python -m tools.perf bench|load|profile [...]`."""

from __future__ import annotations

import argparse
import sys

import tools.perf
from tools.perf import bench, load, profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.perf", description=tools.perf.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    modules = {"bench": bench, "load": load, "profile": profile}
    for name, module in modules.items():
        module.add_arguments(commands.add_parser(name, help=module.__doc__.split("\n")[0]))  # type: ignore[union-attr]
    args = parser.parse_args(argv)
    status: int = modules[args.command].command(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
