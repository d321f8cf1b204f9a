"""`warden run`: the supervisor (systemd Type=notify service). See supervisor.daemon."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bpf.kernel.loading import Preload
from bpf.kernel.pins import DEFAULT_PIN_DIR
from supervisor.exit_codes import EXIT_FAILURE, EXIT_OK
from supervisor.locations import DEFAULT_CONFIG_PATH


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the supervisor (systemd Type=notify service)",
        description="Gate, enforce, supervise the agent, serve the control socket, ping the watchdog.",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--check-config", action="store_true",
                        help="only validate the configuration and the kernel prerequisites, then exit")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    parser.set_defaults(handler=run_supervisor)


def run_supervisor(args: argparse.Namespace) -> int:
    # The verifier's load of the engine objects is most of a start: it begins here, in the kernel, while
    # Python imports the gate, the compiler and the daemon below (imported here, not at the top, for
    # that reason). Nothing is attached before the gate has decided; a restart that adopts pins loads
    # nothing (bpf.kernel.loading).
    preload = None if args.check_config else Preload(DEFAULT_PIN_DIR)
    from initdata.errors import GateError
    from supervisor.config import load_config
    from supervisor.daemon import Supervisor, configure_logging
    from supervisor.enforcement import Enforcement
    from supervisor.notify import Notifier
    from supervisor.prerequisites import check_prerequisites

    configure_logging(args.debug)
    notifier = None if args.check_config else Notifier()
    try:
        config = load_config(args.config)
    except GateError as exc:
        # Before the config is known there is nothing to enforce with: say why, exit 1.
        if notifier is not None:
            notifier.status(f"NOT READY: configuration refused: {exc}")
        print(f"warden: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.check_config:
        problems = check_prerequisites(config.pin_dir)
        for problem in problems:
            print(f"warden: {problem}", file=sys.stderr)
        if not problems:
            print(f"warden: {config.origin}: configuration valid; bpffs, securityfs and BPF LSM present")
        return EXIT_FAILURE if problems else EXIT_OK
    assert notifier is not None
    return Supervisor(config, notifier=notifier,
                      engine_factory=lambda pin_dir, state_dir: Enforcement(pin_dir, state_dir, preload)).run()
