"""The `warden` command line.

Every subcommand group lives in its own module under `supervisor.commands` (discovered, so adding a
command touches one file); each module exposes `register(subparsers)`, which adds its parser and sets
`handler` to a function `(argparse.Namespace) -> int`. A module is named after its command, so a
command line that names one imports only that module: `warden hook` runs on every container start
and must not pay for importing the gate, the compiler and the engine. Domain errors are turned into one-line
messages by the command modules; this entry point is the last line of defence: no input may ever produce a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import Protocol

from supervisor import __version__, commands
from supervisor.cli_support import Handler
from supervisor.exit_codes import EXIT_FAILURE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE


class CommandModule(Protocol):
    def register(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


def command_names() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(commands.__path__))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with just `only` (which must be a command name)."""
    parser = argparse.ArgumentParser(
        prog="warden",
        description="coco-warden: attestation-gated BPF-LSM enforcement for confidential guest VMs.",
    )
    parser.add_argument("--version", action="version", version=f"warden {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [only] if only is not None else command_names():
        module: CommandModule = importlib.import_module(f"{commands.__name__}.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    named = arguments[0] if arguments and arguments[0] in command_names() else None
    parser = build_parser(only=named)
    args = parser.parse_args(arguments)  # exits 2 on usage errors, as argparse does
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_FAILURE
    except Exception as exc:  # the safety net: a message, never a traceback
        if os.environ.get("WARDEN_DEBUG"):
            raise
        print(f"warden: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
