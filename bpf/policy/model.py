"""KubeArmor policies as typed, frozen values: what the reader (bpf.policy.reader) produces and the
compiler (bpf.policy.compiler) consumes.

Selectors (see `Selector`): `kubearmor.io/container.name` in matchLabels is a regular expression (Python
`re`) on the container name, as in KubeArmor's unorchestrated mode. It must match the whole name: `web`
selects the container `web`, not `webserver`; write `web.*` or `.*web.*` for more. Other labels must match
exactly; matchExpressions use KubeArmor's form `{key: label, operator: In|NotIn, values: ["k=v", ...]}`.

Paths (see `normalise_path`) follow the CRD patterns (`^/+.*[^/]$` for paths, `^/$|^/.*/$` for
directories), are normalised by collapsing repeated slashes, and are refused when they contain `.` or `..`
components, NUL, a line break, or exceed `bpf.policy.limits.MAX_PATH_BYTES` / `MAX_PATH_DEPTH`: they go
into BPF map keys and into alerts.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from bpf.policy.limits import MAX_PATH_BYTES, MAX_PATH_DEPTH
from initdata.errors import printable

CONTAINER_NAME_LABEL: Final = "kubearmor.io/container.name"

# Regexes that select every container (see Selector.selects_every_container). Kept to an explicit list:
# deciding in general whether a regex matches every string is not something to do by guesswork.
MATCH_ALL_CONTAINER_REGEXES: Final = frozenset({".*", "^.*$", ".+", "^.+$"})

PROTOCOLS: Final = frozenset(
    {"tcp", "udp", "icmp", "icmpv6", "raw", "sctp", "stream", "dgram", "rdm", "seqpacket", "dccp", "packet",
     "all"}
)

# The CRD's list (KA common.go MatchCapabilitiesType), bare lowercase names.
CAPABILITIES: Final = frozenset(
    {"chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
     "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
     "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
     "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control",
     "setfcap", "mac_override", "mac_admin"}
)


class PolicyKind(enum.StrEnum):
    CONTAINER = "KubeArmorPolicy"
    HOST = "KubeArmorHostPolicy"


class Action(enum.StrEnum):
    ALLOW = "Allow"
    AUDIT = "Audit"
    BLOCK = "Block"


class PathKind(enum.StrEnum):
    EXACT = "exact"  # matchPaths: this file only
    DIR = "dir"  # matchDirectories, recursive false: the directory's direct children
    DIR_RECURSIVE = "dir_recursive"  # matchDirectories, recursive true: everything below it


@dataclass(frozen=True)
class Problem:
    """One reason a policy was refused, pointing at the offending YAML line."""

    file: str
    line: int  # 1-based; 0 when the problem is about the file as a whole
    field: str  # dotted path, e.g. spec.file.matchDirectories[0].dir
    message: str

    def __str__(self) -> str:
        # File names and messages may carry attacker-chosen characters; escape them so that one problem
        # is always exactly one line on a terminal.
        return f"{printable(self.file)}:{self.line}: {printable(self.field)}: {printable(self.message)}"


class PolicyError(Exception):
    """Policies were refused; `problems` says why, one entry per problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


@dataclass(frozen=True)
class AlertFields:
    """The alert fields a rule gives its alerts (innermost of rule, section, spec); the compiler adds the
    policy name (bpf.policy.ruleset.RuleAlert)."""

    severity: int | None
    tags: tuple[str, ...]
    message: str | None


@dataclass(frozen=True)
class PathMatch:
    """A process or file rule from matchPaths or matchDirectories.

    `path` is normalised; directories keep their trailing slash. `sources` is empty when the rule applies
    to every program, else the normalised fromSource paths.
    """

    path: str
    kind: PathKind
    read_only: bool  # always False for process rules
    owner_only: bool
    sources: tuple[str, ...]
    action: Action
    alert: AlertFields


@dataclass(frozen=True)
class PatternMatch:
    """A process or file rule from matchPatterns: `pattern` is an AppArmor glob, already checked by
    bpf.policy.glob.parse. The CRD gives patterns no fromSource."""

    pattern: str
    read_only: bool  # always False for process rules
    owner_only: bool
    action: Action
    alert: AlertFields


@dataclass(frozen=True)
class ProtocolMatch:
    protocol: str  # lowercase, one of PROTOCOLS
    sources: tuple[str, ...]
    action: Action
    alert: AlertFields


@dataclass(frozen=True)
class CapabilityMatch:
    capability: str  # lowercase bare name, one of CAPABILITIES
    sources: tuple[str, ...]
    action: Action
    alert: AlertFields


class LabelOperator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"


@dataclass(frozen=True)
class LabelExpression:
    """KubeArmor matchExpressions item; `values` are "key=value" identities."""

    operator: LabelOperator
    values: tuple[str, ...]


@dataclass(frozen=True)
class Selector:
    """Which containers (KubeArmorPolicy) or nodes (KubeArmorHostPolicy, matchLabels only) a policy selects.

    matchLabels and matchExpressions are ANDed. A container's identities are its labels as "key=value"
    plus `kubearmor.io/container.name=<name>`, as KubeArmor's runtime handlers add that label.
    """

    match_labels: tuple[tuple[str, str], ...]  # sorted by key
    match_expressions: tuple[LabelExpression, ...] = ()

    def matches_container(self, name: str, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if key == CONTAINER_NAME_LABEL:
                if re.fullmatch(value, name) is None:
                    return False
            elif labels.get(key) != value:
                return False
        identities = {f"{k}={v}" for k, v in labels.items()} | {f"{CONTAINER_NAME_LABEL}={name}"}
        for expression in self.match_expressions:
            hit = any(v in identities for v in expression.values)
            if hit != (expression.operator is LabelOperator.IN):
                return False
        return True

    def selects_every_container(self) -> bool:
        """True only for `matchLabels: {kubearmor.io/container.name: R}` alone, with R one of
        MATCH_ALL_CONTAINER_REGEXES.

        Container names are never empty, so `.+` selects every container as `.*` does.
        """
        return (
            not self.match_expressions
            and len(self.match_labels) == 1
            and self.match_labels[0][0] == CONTAINER_NAME_LABEL
            and self.match_labels[0][1] in MATCH_ALL_CONTAINER_REGEXES
        )

    def matches_node(self, node_labels: Mapping[str, str] | None) -> bool:
        """Host policies: without a node label map (the usual case: the VM is the only node), any
        nodeSelector selects this node; with one, every matchLabels entry must be present and equal."""
        if node_labels is None:
            return True
        return all(node_labels.get(k) == v for k, v in self.match_labels)


@dataclass(frozen=True)
class Policy:
    kind: PolicyKind
    name: str
    namespace: str | None  # recorded, not used for selection: a confidential VM runs one pod
    selector: Selector  # spec.selector, or spec.nodeSelector for host policies
    process: tuple[PathMatch, ...]
    file: tuple[PathMatch, ...]
    network: tuple[ProtocolMatch, ...]
    capabilities: tuple[CapabilityMatch, ...]
    file_patterns: tuple[PatternMatch, ...] = ()
    process_patterns: tuple[PatternMatch, ...] = ()
    origin: str = field(default="", compare=False)  # file the policy came from
    line: int = field(default=0, compare=False)  # line of its document



def normalise_path(raw: str, *, directory: bool) -> tuple[str | None, str | None]:
    """(normalised path, None) or (None, why it is refused). Directories keep their trailing slash."""
    shown = printable(repr(raw))
    if "\x00" in raw:
        return None, f"{shown} contains a NUL character"
    if "\n" in raw or "\r" in raw:
        return None, f"{shown} contains a line break"
    if not raw.startswith("/"):
        return None, f"{shown} is not absolute (must start with '/')"
    if directory and not raw.endswith("/"):
        return None, (f"{shown}: a directory must end with '/' (pattern ^/$|^/.*/$); "
                      f"did you mean {printable(repr(raw + '/'))}?")
    if not directory and raw.endswith("/"):
        return None, (f"{shown}: a path must not end with '/' (pattern ^/+.*[^/]$); "
                      f"use matchDirectories for a directory")
    components = [c for c in raw.split("/") if c]
    if any(c in (".", "..") for c in components):
        return None, f"{shown} contains a '.' or '..' component; give the canonical path"
    normalised = "/" + "/".join(components) + ("/" if directory and components else "")
    if len(components) > MAX_PATH_DEPTH:
        return None, (f"{shown} has {len(components)} components; the engine's limit is {MAX_PATH_DEPTH} "
                      f"(MAX_PATH_DEPTH)")
    try:
        size = len(normalised.encode("utf-8"))
    except UnicodeEncodeError:
        return None, f"{shown} is not valid Unicode (lone surrogate)"
    if size > MAX_PATH_BYTES:
        return None, (f"{shown} is {size} bytes long; the engine's limit is {MAX_PATH_BYTES} bytes "
                      f"(MAX_PATH_BYTES, UTF-8, a directory's trailing '/' included)")
    return normalised, None


def canonical_capability(raw: str) -> str | None:
    """Lowercase bare capability name, or None if it is not in the CRD list. A `cap_` prefix is accepted:
    the CRD's pattern is unanchored at the start, so KubeArmor admits `CAP_NET_RAW` too."""
    name = raw.lower()
    if name.startswith("cap_"):
        name = name[4:]
    return name if name in CAPABILITIES else None



