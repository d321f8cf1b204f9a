"""`warden teardown`: the only thing that removes enforcement.

Unpins every warden link (detaching its program) and map under /sys/fs/bpf/warden and removes the
engine manifest; logs each removed pin. Nothing else in warden unpins: SIGTERM, SIGKILL, crashes and
restarts of any warden process leave enforcement in place.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bpf.kernel.engine import Engine
from bpf.kernel.errors import EngineError
from bpf.kernel.manifest import DEFAULT_STATE_DIR
from bpf.kernel.pins import DEFAULT_PIN_DIR
from bpf.kernel.self_protect import SelfGuard
from supervisor.exit_codes import EXIT_FAILURE, EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("teardown", help="remove all pinned enforcement (explicit, logged)",
                                   description="Unpin every warden BPF link and map: enforcement stops.")
    parser.add_argument("--pin-dir", type=Path, default=DEFAULT_PIN_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run_teardown)


def run_teardown(args: argparse.Namespace) -> int:
    try:
        removed = Engine(pin_dir=args.pin_dir, state_dir=args.state_dir).teardown()
        removed += SelfGuard(pin_root=args.pin_dir).teardown()
    except (EngineError, OSError) as exc:
        print(f"warden teardown: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILURE
    for path in removed:
        print(f"warden teardown: removed {path}", file=sys.stderr)
    print(f"warden teardown: {len(removed)} pins removed; enforcement is off" if removed
          else "warden teardown: nothing pinned")
    return EXIT_OK
