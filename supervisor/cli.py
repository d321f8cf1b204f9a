"""The `warden` command line.

Every subcommand group lives in its own module under `supervisor.commands` (discovered, so adding a
command touches one file); each module exposes `register(subparsers)`, which adds its parser and sets
`handler` to a function `(argparse.Namespace) -> int`. Domain errors are turned into one-line
messages by the command modules; this entry point is the last line of defence: no input may ever produce a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from supervisor import __version__, commands

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in warden, never a verdict about input


class CommandModule(Protocol):
    def register(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warden",
        description="coco-warden: attestation-gated BPF-LSM enforcement for confidential guest VMs.",
    )
    parser.add_argument("--version", action="version", version=f"warden {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module: CommandModule = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors, as argparse does
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE
    except Exception as exc:  # the safety net: a message, never a traceback
        if os.environ.get("WARDEN_DEBUG"):
            raise
        print(f"warden: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
