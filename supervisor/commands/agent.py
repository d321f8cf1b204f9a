"""`warden agent`: KubeArmor-style JSON alerts from the pinned events ring buffer. See supervisor.agent."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from initdata.errors import GateError
from supervisor.agent import Throttle, main_with
from supervisor.config import DEFAULT_CONFIG_PATH, WardenConfig, load_config
from supervisor.exit_codes import EXIT_FAILURE


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="write one JSON alert per enforcement event (stdout and agent.logPath)",
        description="Reads the pinned events ring buffer; throttling and the log file come from the "
        "configuration's agent section (KubeArmor keys alertThrottling, maxAlertPerSec, throttleSec, logPath).",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH}; built-in defaults if absent)")
    parser.add_argument("--max-events", type=int, metavar="N", help="exit after N events (tests, debugging)")
    parser.set_defaults(handler=run_agent)


def run_agent(args: argparse.Namespace) -> int:
    if args.config.exists():
        try:
            config = load_config(args.config)
        except GateError as exc:
            print(f"warden: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    else:
        config = WardenConfig()
    agent = config.agent
    throttle = Throttle(enabled=agent.alert_throttling, max_per_sec=agent.max_alert_per_sec,
                        throttle_sec=agent.throttle_sec)
    return main_with(config.pin_dir, config.state_dir, throttle, agent.log_path, args.max_events)
