"""`warden engine apply|status`: load or adopt the BPF-LSM engine, and show what it enforces.

`apply POLICY_PATH... --no-gate` compiles the policies for the host scope, the any-container scope and
every registered container, loads or adopts the pinned programs, syncs the maps, and exits: enforcement
stays pinned under /sys/fs/bpf/warden. It bypasses the attestation gate, so it refuses to run without
`--no-gate` (image builders, the baseline policy and tests use it). Exit codes: 0 done; 1 refused
policies or an engine error (one line on stderr); 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bpf.kernel.engine import Engine
from bpf.kernel.errors import EngineError
from bpf.kernel.libbpf import BpfError
from bpf.kernel.manifest import DEFAULT_STATE_DIR
from bpf.kernel.pins import DEFAULT_PIN_DIR
from bpf.policy.compiler import Postures
from bpf.policy.files import load_policy_paths
from bpf.policy.model import PolicyError
from bpf.policy.ruleset import Posture
from supervisor.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("engine", help="load, adopt and inspect the BPF-LSM engine",
                                   description="Load or adopt the pinned BPF-LSM engine; show its state.")
    parser.add_argument("--pin-dir", type=Path, default=DEFAULT_PIN_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=argparse.SUPPRESS)
    actions = parser.add_subparsers(dest="engine_command", metavar="ACTION")
    parser.set_defaults(handler=lambda _args: _usage(parser))

    apply = actions.add_parser("apply", help="enforce policies now, without the attestation gate",
                               description="Compile POLICY_PATHs and load or adopt the engine (needs --no-gate).")
    apply.add_argument("paths", nargs="+", type=Path, metavar="POLICY_PATH")
    apply.add_argument("--no-gate", action="store_true",
                       help="required: acknowledge that these policies are applied without attestation")
    for category in ("file", "network", "capabilities"):
        apply.add_argument(f"--{category}-posture", choices=[p.value for p in Posture], default="audit",
                           help=f"default {category} posture where a scope has Allow rules (default: audit)")
    apply.add_argument("--json", action="store_true", help="print the report as JSON")
    apply.set_defaults(handler=run_apply)

    status = actions.add_parser("status", help="links, maps, rule counts, digests and event drops")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=run_status)


def _engine(args: argparse.Namespace) -> Engine:
    return Engine(pin_dir=args.pin_dir, state_dir=args.state_dir)


def run_apply(args: argparse.Namespace) -> int:
    if not args.no_gate:
        print("warden engine apply: refusing to enforce policies without the attestation gate; pass --no-gate "
              "to apply them anyway (image builders, baseline policy, tests)", file=sys.stderr)
        return EXIT_USAGE
    try:
        policies = load_policy_paths(args.paths)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_FAILURE
    for policy in policies:  # accepted, not enforced as written: said, never silent
        warning = policy.warning_line()
        if warning is not None:
            print(warning, file=sys.stderr)
    postures = Postures(file=Posture(args.file_posture), network=Posture(args.network_posture),
                        capabilities=Posture(args.capabilities_posture))
    try:
        report = _engine(args).load_or_adopt(policies, postures)
    except (EngineError, BpfError, OSError) as exc:
        print(f"warden engine apply: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(report.to_json())
    else:
        print(f"{report.mode}: loaded {', '.join(report.loaded) or '-'}; adopted {', '.join(report.adopted) or '-'}")
        for scope, digest in sorted(report.ruleset_digests.items()):
            print(f"  scope {scope}: {report.rule_counts[scope]} rules, {digest}")
        print(f"  map entries written {report.added}, removed {report.removed}; {report.timings_s['total']:.2f}s")
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    try:
        status = _engine(args).status()
    except (EngineError, BpfError, OSError) as exc:
        print(f"warden engine status: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(status.to_json())
        return EXIT_OK
    if not status.loaded:
        print("engine: not loaded")
        return EXIT_OK
    print(f"engine: {len(status.links)} links, event drops {status.event_drops}")
    for link in status.links:
        state = "attached" if link.attached else "DETACHED"
        print(f"  link {link.link_id:>5} prog {link.prog_id:>5} {link.object}/{link.program} {link.hook} {state}")
    for name, info in sorted(status.scopes.items()):
        print(f"  scope {name} (id {info['id']}): {info['rule_count']} rules, {info['map_nodes']} map nodes, "
              f"{info['ruleset_digest']}")
    for name, digest in sorted(status.object_digests.items()):
        print(f"  object {name}: {digest}")
    for name, info in sorted(status.maps.items()):
        entries = f", {info['entries']} entries" if "entries" in info else ""
        print(f"  map {name}: id {info['id']}, max {info['max_entries']}{entries}")
    return EXIT_OK


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE
