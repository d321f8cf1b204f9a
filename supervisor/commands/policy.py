"""`warden policy check|compile`: validate KubeArmor policies and show the RuleSet a scope would enforce.

Exit codes: 0 valid; 1 the policies were refused (one `FILE:LINE: field: message` line per problem on
stderr; a missing path is such a problem); 2 usage errors.

`check` prints one line per policy (`FILE:LINE: KIND NAME (namespace NS): N rules`) and, on stderr, one
`FILE:LINE: warning: ...` line per policy that has fields accepted but not enforced as written (see
bpf.policy.model.Policy.warnings), then `ok: N policies`. `compile` shows the scope's warnings under its
table (they are part of the RuleSet and its digest).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from bpf.policy.compiler import Scope
    from bpf.policy.model import PolicyError
    from bpf.policy.ruleset import Posture, RuleAlert, RuleSet

# The policy modules (and PyYAML) are imported by the handlers, not here: every `warden` command imports
# this module at start-up to register its parser.
POSTURE_CHOICES = ("audit", "block")



def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("policy", help="validate and compile KubeArmor policies",
                                   description="Validate and compile KubeArmorPolicy and "
                                               "KubeArmorHostPolicy YAML.")
    actions = parser.add_subparsers(dest="policy_command", metavar="ACTION")
    parser.set_defaults(handler=lambda _args: _usage(parser))

    check = actions.add_parser("check", help="validate policy files and directories",
                               description="Validate policies; print one line per problem, exit 1 if any.")
    check.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                       help="policy file, or directory searched recursively for *.yaml and *.yml")
    check.set_defaults(handler=run_check)

    comp = actions.add_parser("compile", help="show the rule table a scope enforces, and its digest",
                              description="Compile policies for one scope; print the rules and the digest.")
    comp.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                      help="policy file, or directory searched recursively for *.yaml and *.yml")
    comp.add_argument("--scope", type=_scope_spec, default="any-container",
                      metavar="host|container:NAME|any-container",
                      help="whose rules to compile (default: any-container, the rules for a container "
                           "nobody registered)")
    comp.add_argument("--label", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                      help="a label of the container (with --scope container:NAME); repeatable")
    comp.add_argument("--node-label", action="append", type=_key_value, default=None, metavar="KEY=VALUE",
                      help="a label of this node (with --scope host); when given, host policies' "
                           "nodeSelector must match them, otherwise every nodeSelector selects this VM")
    for category in ("file", "network", "capabilities"):
        comp.add_argument(f"--{category}-posture", choices=POSTURE_CHOICES, default="audit",
                          help=f"default {category} posture where the scope has Allow rules "
                               f"(default: audit, as KubeArmor)")
    comp.add_argument("--json", action="store_true", help="print the canonical RuleSet JSON instead")
    comp.set_defaults(handler=run_compile)


# --------------------------------------------------------------------------------------------------------
# Handlers


def run_check(args: argparse.Namespace) -> int:
    from bpf.policy.files import load_policy_paths
    from bpf.policy.model import PolicyError

    try:
        policies = load_policy_paths(args.paths)
    except PolicyError as exc:
        return _report(exc)
    for policy in policies:
        namespace = f"namespace {_show(policy.namespace)}" if policy.namespace is not None else "no namespace"
        noun = "rule" if policy.rule_count == 1 else "rules"
        print(f"{_show(policy.origin)}:{policy.line}: {policy.kind} {_show(policy.name)} ({namespace}): "
              f"{policy.rule_count} {noun}")
        warning = policy.warning_line()
        if warning is not None:
            print(warning, file=sys.stderr)
    noun = "policy" if len(policies) == 1 else "policies"
    print(f"ok: {len(policies)} {noun}")
    return EXIT_OK


def run_compile(args: argparse.Namespace) -> int:
    from bpf.policy.compiler import Postures, compile
    from bpf.policy.files import load_policy_paths
    from bpf.policy.model import PolicyError
    from bpf.policy.ruleset import Posture

    scope_spec: str = args.scope
    if args.label and not scope_spec.startswith("container:"):
        return _usage_error("--label needs --scope container:NAME")
    if args.node_label is not None and scope_spec != "host":
        return _usage_error("--node-label needs --scope host")
    scope = _scope(scope_spec, dict(args.label), None if args.node_label is None else dict(args.node_label))
    postures = Postures(file=Posture(args.file_posture), network=Posture(args.network_posture),
                        capabilities=Posture(args.capabilities_posture))
    try:
        ruleset = compile(load_policy_paths(args.paths), scope, postures=postures)
    except PolicyError as exc:
        return _report(exc)
    if args.json:
        print(ruleset.to_json())
    else:
        print(render_table(ruleset, scope))
    return EXIT_OK


def _report(error: PolicyError) -> int:
    for problem in error.problems:
        print(problem, file=sys.stderr)
    return EXIT_FAILURE


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _usage_error(message: str) -> int:
    print(f"warden policy compile: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# --------------------------------------------------------------------------------------------------------
# Argument types (argparse turns ArgumentTypeError into a usage error, exit 2)


def _scope_spec(text: str) -> str:
    if text in ("host", "any-container") or (text.startswith("container:") and len(text) > len("container:")):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not host, container:NAME or any-container")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _scope(spec: str, labels: dict[str, str], node_labels: dict[str, str] | None) -> Scope:
    from bpf.policy.compiler import AnyContainerScope, ContainerScope, HostScope

    if spec == "host":
        return HostScope(node_labels)
    if spec == "any-container":
        return AnyContainerScope()
    return ContainerScope(spec.removeprefix("container:"), labels)


# --------------------------------------------------------------------------------------------------------
# Table


def _show(text: str | None) -> str:
    if text is None:
        return "-"
    # Paths and messages come from policy authors: escape anything that could move the cursor.
    return text if text.isprintable() and text else repr(text)


def _alert_cell(alert: RuleAlert) -> str:
    parts = [alert.policy]
    if alert.severity is not None:
        parts.append(f"severity={alert.severity}")
    if alert.tags:
        parts.append("tags=" + ",".join(_show(t) for t in alert.tags))
    if alert.message is not None:
        parts.append(f"message={_show(alert.message)}")
    return " ".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def render_table(ruleset: RuleSet, scope: Scope | str) -> str:
    lines = [f"scope: {scope}"]

    def section(title: str, posture: Posture | None, header: Sequence[str],
                rows: Sequence[Sequence[str]]) -> None:
        shown = posture.value if posture is not None else "none (no Allow rules)"
        lines.append(f"{title} rules: {len(rows)}, default posture: {shown}")
        if rows:
            lines.extend(_table(header, rows))

    def flags(*named: tuple[str, bool]) -> str:
        return ",".join(name for name, on in named if on) or "-"

    section("file", ruleset.postures.file, ("ACTION", "KIND", "PATH", "FLAGS", "SOURCE", "POLICY"),
            [(r.action.value, r.kind.value, _show(r.path),
              flags(("read-only", r.read_only), ("owner-only", r.owner_only)), _show(r.source),
              _alert_cell(r.alert)) for r in ruleset.file]
            + [(r.action.value, "pattern", _show(r.pattern),
                flags(("read-only", r.read_only), ("owner-only", r.owner_only)), "-", _alert_cell(r.alert))
               for r in ruleset.file_patterns])
    section("process", ruleset.postures.process, ("ACTION", "KIND", "PATH", "FLAGS", "SOURCE", "POLICY"),
            [(r.action.value, r.kind.value, _show(r.path), flags(("owner-only", r.owner_only)),
              _show(r.source), _alert_cell(r.alert)) for r in ruleset.process]
            + [(r.action.value, "pattern", _show(r.pattern), flags(("owner-only", r.owner_only)), "-",
                _alert_cell(r.alert)) for r in ruleset.process_patterns])
    section("network", ruleset.postures.network, ("ACTION", "PROTOCOL", "SOURCE", "POLICY"),
            [(r.action.value, r.protocol, _show(r.source), _alert_cell(r.alert)) for r in ruleset.network])
    section("capabilities", ruleset.postures.capabilities, ("ACTION", "CAPABILITY", "SOURCE", "POLICY"),
            [(r.action.value, r.capability, _show(r.source), _alert_cell(r.alert))
             for r in ruleset.capabilities])
    lines.extend(f"warning: {_show(w)}" for w in ruleset.warnings)
    lines.append(f"rules: {ruleset.rule_count}")
    if ruleset.automata_digest is not None:
        states = [a.nstates for a in (*ruleset.file_automata, *ruleset.process_automata)]
        lines.append(f"matchPatterns automata: {len(states)} ({sum(states)} states), {ruleset.automata_digest}")
    lines.append(f"digest: {ruleset.digest}")
    return "\n".join(lines)
