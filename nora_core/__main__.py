"""Command line: `python -m nora_core {sweep,train} --help`."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand and return its exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m nora_core",
        description="Train and compare LoRA and NoRA adapters from the command line.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from nora_core import cli_sweep, cli_train

    cli_sweep.add_parser(commands)
    cli_train.add_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.handler(args, parser)


if __name__ == "__main__":
    sys.exit(main())
