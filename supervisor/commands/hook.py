"""`warden hook [--stage STAGE]`: the OCI runtime hook (fails closed). See supervisor.hook."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from supervisor.hook import DEFAULT_SOCKET, DEFAULT_TIMEOUT_S, Stage, main_with


def _timeout(text: str) -> float:
    value = float(text)
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError("must be in (0, 600] seconds")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "hook",
        help="OCI runtime hook: register a container and wait for its rules (fails closed)",
        description="Reads the OCI state JSON on stdin. Without --stage, a 'stopped' state means poststop "
        "and anything else createRuntime (Kata guest hooks run the hook without arguments).",
    )
    parser.add_argument("--stage", choices=[s.value for s in Stage], help="the OCI hook stage")
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, help=f"control socket ({DEFAULT_SOCKET})")
    parser.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"wait this long for the supervisor's acknowledgement (default {DEFAULT_TIMEOUT_S:g})")
    parser.set_defaults(handler=run_hook)


def run_hook(args: argparse.Namespace) -> int:
    stage = Stage(args.stage) if args.stage else None
    return main_with(sys.stdin.buffer, stage, args.socket, args.timeout)
