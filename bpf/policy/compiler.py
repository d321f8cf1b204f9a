"""Compile parsed policies into the RuleSet of one scope.

Scopes:
- `HostScope(node_labels=None)`: the KubeArmorHostPolicy policies whose nodeSelector selects this VM. The
  VM is the only node, so by default every nodeSelector selects it (whatever its matchLabels say); give
  `node_labels` to require that each matchLabels entry be present in that map with the same value. The
  supervisor gives the `node_labels` of its (measured) configuration, supervisor.config.
- `ContainerScope(name, labels)`: the KubeArmorPolicy policies whose selector selects a container with this
  name and these labels (see bpf.policy.model.Selector: container.name is a full-match regex, other labels exact,
  matchExpressions In/NotIn on "key=value" identities).
- `AnyContainerScope()`: the rules for a process in a container nobody registered (a mount namespace
  that is not the host's, threat-model.md "Scopes"). Nothing measured says which container it is, so it
  gets the union of every KubeArmorPolicy that could apply to some container: fail closed, the
  conflict rules below keep the strictest rule per object (`selects`, the one place this is decided).

Each rule with fromSource becomes one rule per source; a rule without fromSource has source None.

Conflicts. Rules are keyed by (category, object, kind, source): (path, kind, source) for file and process,
(protocol, source) for network, (capability, source) for capabilities. When several rules share a key, one
wins, chosen by, in order:
  1. the stronger action: Block beats Audit beats Allow;
  2. the stricter flags: for Block/Audit the rule covering more (readOnly false before true, ownerOnly false
     before true, since both flags narrow what is denied); for Allow the rule permitting less (readOnly
     true before false, ownerOnly true before false);
  3. the lowest policy name, then lowest severity (None first), tags, message: any remaining tie is
     broken by value, never by input order.
The winner keeps its own alert metadata. Nothing depends on the order of policies, files or documents.

Warnings: the RuleSet carries, sorted, one line per selected policy that has fields accepted but not enforced
as written (Policy.warning_summary), so that what a scope does not enforce is in its digest and status.

Default posture per category (KubeArmor's whitelist mode): when any selected policy has an Allow rule in a
category (counted before conflict resolution, so an Audit or Block on the same object does not switch the
whitelist off), that category's posture is the configured one (`Postures`, KubeArmor's default "audit"),
else None. Process follows the file posture, as in KubeArmor (its default_posture.md: "Process based
operations are treated under File resource only").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from bpf.policy.glob import AutomatonLimitError
from bpf.policy.limits import MAX_RULES_PER_SCOPE
from bpf.policy.model import (
    Action,
    AlertFields,
    CapabilityMatch,
    PathMatch,
    PatternMatch,
    Policy,
    PolicyError,
    PolicyKind,
    Problem,
    ProtocolMatch,
)
from bpf.policy.ruleset import (
    CapabilityRule,
    CategoryPostures,
    FileRule,
    NetworkRule,
    PatternRule,
    Posture,
    PresetRule,
    ProcessRule,
    RuleAlert,
    RuleSet,
    capability_rule_key,
    file_rule_key,
    network_rule_key,
    pattern_rule_key,
    preset_rule_key,
    process_rule_key,
)

__all__ = [
    "AnyContainerScope",
    "ContainerScope",
    "HostScope",
    "PodUnionScope",
    "Postures",
    "RuleLimitError",
    "Scope",
    "compile",
    "selects",
]


def _frozen_labels(labels: Mapping[str, str] | None) -> Mapping[str, str] | None:
    return None if labels is None else MappingProxyType(dict(labels))


@dataclass(frozen=True)
class HostScope:
    node_labels: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "node_labels", _frozen_labels(self.node_labels))

    def __hash__(self) -> int:
        return hash(("host", None if self.node_labels is None else tuple(sorted(self.node_labels.items()))))

    def __str__(self) -> str:
        return "host"


@dataclass(frozen=True)
class ContainerScope:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            # Container names are never empty; AnyContainerScope relies on that (".+" selects them all).
            raise ValueError("a container name must not be empty")
        object.__setattr__(self, "labels", _frozen_labels(self.labels))

    def __hash__(self) -> int:
        return hash(("container", self.name, tuple(sorted(self.labels.items()))))

    def __str__(self) -> str:
        return f"container:{self.name}"


@dataclass(frozen=True)
class AnyContainerScope:
    def __str__(self) -> str:
        return "any-container"


@dataclass(frozen=True)
class PodUnionScope:
    """A registered container whose name the signed pod does not list (trust.identity.Union): every
    KubeArmorPolicy that could select some container with these pod labels, whatever its name.
    `labels` None: the bundle named no pod, so every KubeArmorPolicy."""

    labels: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen_labels(self.labels))

    def __hash__(self) -> int:
        return hash(("pod-union", None if self.labels is None else tuple(sorted(self.labels.items()))))

    def __str__(self) -> str:
        return "container-union"


Scope = HostScope | ContainerScope | AnyContainerScope | PodUnionScope


@dataclass(frozen=True)
class Postures:
    """Configured default postures (KubeArmor: defaultFilePosture etc., all "audit" by default).

    Pass the host* values of a KubeArmor configuration when compiling a HostScope."""

    file: Posture = Posture.AUDIT
    network: Posture = Posture.AUDIT
    capabilities: Posture = Posture.AUDIT


class RuleLimitError(PolicyError):
    """The scope's RuleSet would exceed bpf.policy.limits.MAX_RULES_PER_SCOPE."""


def selects(policy: Policy, scope: Scope) -> bool:
    """Whether `policy` applies in `scope`."""
    if isinstance(scope, HostScope):
        return policy.kind is PolicyKind.HOST and policy.selector.matches_node(scope.node_labels)
    if policy.kind is not PolicyKind.CONTAINER:
        return False
    if isinstance(scope, ContainerScope):
        return policy.selector.matches_container(scope.name, scope.labels)
    if isinstance(scope, PodUnionScope):
        return policy.selector.could_match_any_name(scope.labels)
    # An unregistered container could be any container: every container policy applies (fail closed).
    return True


def compile(policies: Iterable[Policy], scope: Scope, *, postures: Postures = Postures()) -> RuleSet:
    """The canonical RuleSet of `scope`. Raises RuleLimitError when it would not fit the engine."""
    selected = [p for p in policies if selects(p, scope)]

    files: list[FileRule] = []
    processes: list[ProcessRule] = []
    networks: list[NetworkRule] = []
    capabilities: list[CapabilityRule] = []
    file_patterns: list[PatternRule] = []
    process_patterns: list[PatternRule] = []
    presets: list[PresetRule] = []
    for policy in selected:
        presets.extend(PresetRule(m.name, m.action, _rule_alert(policy, m.alert)) for m in policy.presets)
        file_patterns.extend(PatternRule(m.pattern, m.read_only, m.owner_only, m.action, _rule_alert(policy, m.alert))
                             for m in policy.file_patterns)
        process_patterns.extend(PatternRule(m.pattern, False, m.owner_only, m.action, _rule_alert(policy, m.alert))
                                for m in policy.process_patterns)
        for match in policy.file:
            files.extend(FileRule(match.path, match.kind, match.read_only, match.owner_only, source,
                                  match.action, _rule_alert(policy, match.alert))
                         for source in _sources(match.sources))
        for match in policy.process:
            processes.extend(ProcessRule(match.path, match.kind, match.owner_only, source, match.action,
                                         _rule_alert(policy, match.alert))
                             for source in _sources(match.sources))
        for protocol in policy.network:
            networks.extend(NetworkRule(protocol.protocol, source, protocol.action,
                                        _rule_alert(policy, protocol.alert))
                            for source in _sources(protocol.sources))
        for capability in policy.capabilities:
            capabilities.extend(CapabilityRule(capability.capability, source, capability.action,
                                               _rule_alert(policy, capability.alert))
                                for source in _sources(capability.sources))

    file_posture = postures.file if (_has_allow(m for p in selected for m in p.file)
                                     or _has_allow(m for p in selected for m in p.file_patterns)) else None
    process_posture = postures.file if (_has_allow(m for p in selected for m in p.process)
                                        or _has_allow(m for p in selected for m in p.process_patterns)) else None
    network_posture = postures.network if _has_allow(m for p in selected for m in p.network) else None
    capabilities_posture = (postures.capabilities if _has_allow(m for p in selected for m in p.capabilities)
                            else None)
    ruleset = RuleSet(
        file=_resolve(files, file_rule_key, _path_rule_preference),
        process=_resolve(processes, process_rule_key, _path_rule_preference),
        network=_resolve(networks, network_rule_key, _preference),
        capabilities=_resolve(capabilities, capability_rule_key, _preference),
        postures=CategoryPostures(
            file=file_posture,
            process=process_posture,
            network=network_posture,
            capabilities=capabilities_posture,
        ),
        file_patterns=_resolve(file_patterns, pattern_rule_key, _path_rule_preference),
        process_patterns=_resolve(process_patterns, pattern_rule_key, _path_rule_preference),
        warnings=tuple(sorted({w for p in selected if (w := p.warning_summary()) is not None})),
        presets=_resolve(presets, preset_rule_key, _preference),
    )
    if ruleset.rule_count > MAX_RULES_PER_SCOPE:
        raise RuleLimitError([Problem(f"<scope {scope}>", 0, "rules",
                                      f"{ruleset.rule_count} rules; the engine's limit is "
                                      f"{MAX_RULES_PER_SCOPE} per scope (MAX_RULES_PER_SCOPE)")])
    for category in ("file", "process"):
        try:
            getattr(ruleset, f"{category}_automata")
        except AutomatonLimitError as exc:
            raise RuleLimitError([Problem(f"<scope {scope}>", 0, f"{category}.matchPatterns", str(exc))]) from None
    return ruleset


def _has_allow(matches: Iterable[PathMatch | PatternMatch | ProtocolMatch | CapabilityMatch]) -> bool:
    return any(m.action is Action.ALLOW for m in matches)


def _sources(sources: tuple[str, ...]) -> tuple[str | None, ...]:
    return sources if sources else (None,)


def _rule_alert(policy: Policy, alert: AlertFields) -> RuleAlert:
    return RuleAlert(policy.name, alert.severity, alert.tags, alert.message)


_ACTION_STRENGTH = {Action.BLOCK: 0, Action.AUDIT: 1, Action.ALLOW: 2}  # lower sorts first, wins

_R = TypeVar("_R", FileRule, ProcessRule, NetworkRule, CapabilityRule, PatternRule, PresetRule)


def _alert_order(alert: RuleAlert) -> tuple[str, bool, int, tuple[str, ...], bool, str]:
    return (alert.policy, alert.severity is not None, alert.severity or 0, alert.tags,
            alert.message is not None, alert.message or "")


_Preference = tuple[int, tuple[bool, bool], tuple[str, bool, int, tuple[str, ...], bool, str]]


def _preference(rule: NetworkRule | CapabilityRule | PresetRule) -> _Preference:
    return (_ACTION_STRENGTH[rule.action], (False, False), _alert_order(rule.alert))


def _path_rule_preference(rule: FileRule | ProcessRule | PatternRule) -> _Preference:
    read_only = rule.read_only if isinstance(rule, FileRule | PatternRule) else False
    # Allow: permit less, so the narrowing flags sort first. Block/Audit: deny more, so they sort last.
    narrowing = (read_only, rule.owner_only)
    flags = (not narrowing[0], not narrowing[1]) if rule.action is Action.ALLOW else narrowing
    return (_ACTION_STRENGTH[rule.action], flags, _alert_order(rule.alert))


def _resolve(rules: list[_R], key: Callable[[_R], tuple[object, ...]],
             preference: Callable[[_R], _Preference]) -> tuple[_R, ...]:
    """One rule per key (the most preferred), in canonical key order."""
    winners: dict[tuple[object, ...], _R] = {}
    for rule in rules:
        k = key(rule)
        current = winners.get(k)
        if current is None or preference(rule) < preference(current):
            winners[k] = rule
    return tuple(sorted(winners.values(), key=key))
