"""`warden status [--json]`: ask the running supervisor over the control socket.

Exit codes: 0 the supervisor is READY; 1 it answers but is not READY (the reason is printed);
3 nothing answers on the control socket (supervisor not running).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from supervisor.control import ControlUnavailable, call
from supervisor.exit_codes import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK
from supervisor.hook import DEFAULT_SOCKET


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="gate result, enforcement, agent and containers of the running supervisor",
        description="Ask the running supervisor for its status over the control socket.",
    )
    parser.add_argument("--json", action="store_true", help="print the whole status object as JSON")
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, help=f"control socket ({DEFAULT_SOCKET})")
    parser.set_defaults(handler=run_status)


def _lines(status: dict[str, Any]) -> list[str]:
    gate = status.get("gate") or {}
    enforcement = status.get("enforcement") or {}
    agent = status.get("agent") or {}
    engine = status.get("engine")
    lines = [
        f"phase:        {status.get('phase')}",
        f"status:       {status.get('status')}",
        f"gate:         {gate.get('result')}" + (f" ({gate.get('error')})" if gate.get("error") else ""),
        f"measurement:  {gate.get('measurement_source')}" + (" INSECURE" if gate.get("insecure") else ""),
        f"bundle:       v{enforcement.get('bundle_version')} {enforcement.get('bundle_digest') or ''}".rstrip(),
        f"ruleset:      {enforcement.get('ruleset_digest') or '-'} ({enforcement.get('origin') or 'nothing enforced'}"
        + (", adopted pins" if enforcement.get("adopted") else "") + ")",
        f"agent:        {agent.get('state', 'none')}" + (" DEGRADED" if agent.get("degraded") else "")
        + f", restarts {agent.get('restarts', 0)}, crashes in window {agent.get('crashes_in_window', 0)}",
        f"containers:   {len(status.get('containers') or [])}",
        f"health:       {'; '.join(status.get('health') or []) or 'ok'}",
    ]
    aael = status.get("aael")
    if isinstance(aael, dict):
        lines.append(f"aael:         {aael_line(aael)}")
    kbs = status.get("kbs_update")
    if isinstance(kbs, dict):
        result = kbs.get("last_result") or {}
        outcome = "applied" if result.get("ok") else "refused"
        last = f"last: {outcome} {result.get('error') or result.get('reload', '')}".rstrip() if result else \
            "nothing fetched yet"
        error = f"; fetch error: {kbs['last_poll_error']}" if kbs.get("last_poll_error") else ""
        lines.append(f"kbs update:   {kbs.get('resource')} via {kbs.get('via')}, {kbs.get('polls')} polls, "
                     f"{last}{error}")
    if isinstance(engine, dict):
        for key in ("links", "maps", "events", "drops"):
            if key in engine:
                value = engine[key]
                text = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
                lines.append(f"{key + ':':<14}{text}")
    return lines


def aael_line(aael: dict[str, Any]) -> str:
    """Whether the enforced RuleSet is in the attestation-agent's event log, and why not."""
    if aael.get("recorded"):
        return (f"recorded {aael.get('ruleset')} (after {aael.get('recorded_after_s')}s, "
                f"{aael.get('attempts')} attempts)")
    if aael.get("ruleset") is None:
        return "nothing to record"
    return f"NOT recorded yet ({aael.get('attempts')} attempts; last error: {aael.get('last_error') or '-'})"


def run_status(args: argparse.Namespace) -> int:
    try:
        reply = call(args.socket, {"op": "status"})
    except (ControlUnavailable, OSError) as exc:
        print(f"warden: supervisor not running: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    status = reply.get("status")
    if not reply.get("ok") or not isinstance(status, dict):
        print(f"warden: {args.socket}: status refused: {reply.get('error')}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print("\n".join(_lines(status)))
    return EXIT_OK if status.get("phase") == "ready" else EXIT_FAILURE
