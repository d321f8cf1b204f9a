"""KubeArmor policies: the model, and strict parsing of KubeArmorPolicy / KubeArmorHostPolicy YAML.

Users bring the policies they already write for KubeArmor (`apiVersion: security.kubearmor.com/v1`). This
module turns YAML text into typed, frozen `Policy` values, or raises `PolicyError` listing every problem as
`FILE:LINE: field: message`. It never guesses: a field it does not understand is refused, never ignored,
because an ignored rule is a rule that silently is not enforced.

What is accepted (KubeArmor CRD, `deployments/CRD/KubeArmor{,Host}Policy.yaml`):
- `spec.process` / `spec.file`: `matchPaths` {path, ownerOnly, fromSource[{path}]}, `matchDirectories` {dir,
  recursive, ownerOnly, fromSource}, and `readOnly` on file rules.
- `spec.network.matchProtocols` {protocol, fromSource}; `spec.capabilities.matchCapabilities`
  {capability, fromSource}. Host policies must give `fromSource` for both, as the host CRD requires.
- `action`, `severity`, `tags`, `message` at spec, section and rule level. Each rule takes the innermost
  value given (rule > section > spec); the action defaults to Block, as in KubeArmor.
- `spec.selector` {matchLabels, matchExpressions} for KubeArmorPolicy, `spec.nodeSelector` {matchLabels}
  (required) for KubeArmorHostPolicy.

What is refused although the CRD has it, each with a message saying why:
- `matchPatterns`: parsed (so structural errors are reported), then refused, because the BPF-LSM engine
  matches exact paths and directory prefixes only; it cannot evaluate glob/regex patterns.
- `syscalls`, `presets`, `apparmor`, `device`, `matchDNSQueries`, `execname`, `allowedArgs`, `pts`:
  the engine has no hook that enforces them.

Validation beyond the CRD (why: the values go into BPF map keys and into alerts):
- Paths follow the CRD patterns (`^/+.*[^/]$` for paths, `^/$|^/.*/$` for directories), are normalised by
  collapsing repeated slashes, and are refused when they contain `.` or `..` components, NUL, a line break,
  or exceed `bpf.limits.MAX_PATH_BYTES` / `MAX_PATH_DEPTH`.
- YAML: `yaml.SafeLoader` only; anchors and aliases are refused outright (no alias bombs), nesting depth and
  node count are bounded, duplicate mapping keys are refused (YAML would silently keep the last one), and
  a text over `MAX_TEXT_BYTES` (1 MiB) is refused before it is parsed.

Selectors (see `Selector`): `kubearmor.io/container.name` in matchLabels is a regular expression (Python
`re`) on the container name, as in KubeArmor's unorchestrated mode. It must match the whole name: `web`
selects the container `web`, not `webserver`; write `web.*` or `.*web.*` for more. Other labels must match
exactly; matchExpressions use KubeArmor's form `{key: label, operator: In|NotIn, values: ["k=v", ...]}`.
KubeArmor's bracketed list form (`"[c1,c2]"`, Kubernetes mode only) is refused with a hint to write
`c1|c2`: read as a regex it would be a character class selecting no real container.
"""

from __future__ import annotations

import enum
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar, cast

import yaml
import yaml.reader
from yaml.composer import ComposerError
from yaml.constructor import SafeConstructor
from yaml.error import Mark
from yaml.events import AliasEvent, CollectionStartEvent, Event, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bpf.limits import MAX_PATH_BYTES, MAX_PATH_DEPTH

API_VERSION: Final = "security.kubearmor.com/v1"
CONTAINER_NAME_LABEL: Final = "kubearmor.io/container.name"

# Refusal limits for untrusted YAML. 1 MiB is far more than any real bundle; the node and depth bounds keep
# parsing linear and the (recursive) composer far from Python's recursion limit.
MAX_TEXT_BYTES: Final = 1 << 20
MAX_YAML_NODES: Final = 100_000
MAX_YAML_DEPTH: Final = 64

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

_E = TypeVar("_E", bound=enum.StrEnum)
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_K8S_NAME_MAX = 253


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
        return f"{_printable(self.file)}:{self.line}: {_printable(self.field)}: {_printable(self.message)}"


class PolicyError(Exception):
    """Policies were refused; `problems` says why, one entry per problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


@dataclass(frozen=True)
class Alert:
    """What an alert for a matched rule carries (innermost of rule, section, spec)."""

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
    alert: Alert


@dataclass(frozen=True)
class ProtocolMatch:
    protocol: str  # lowercase, one of PROTOCOLS
    sources: tuple[str, ...]
    action: Action
    alert: Alert


@dataclass(frozen=True)
class CapabilityMatch:
    capability: str  # lowercase bare name, one of CAPABILITIES
    sources: tuple[str, ...]
    action: Action
    alert: Alert


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
    origin: str = field(default="", compare=False)  # file the policy came from
    line: int = field(default=0, compare=False)  # line of its document


# --------------------------------------------------------------------------------------------------------
# Public entry points


def parse_policy_text(text: str, *, origin: str) -> tuple[Policy, ...]:
    """Parse every YAML document in `text` (empty documents are skipped). `origin` names it in problems."""
    problems: list[Problem] = []
    policies = _parse_text(text, origin, problems)
    problems.extend(_duplicate_problems(policies))
    if problems:
        raise PolicyError(problems)
    return policies


def load_policy_paths(paths: Sequence[Path]) -> tuple[Policy, ...]:
    """Load policy files and directories (recursively: *.yaml and *.yml, sorted; symlinked directories are
    not descended into, symlinked files are read). A file named explicitly is read whatever its suffix; a
    *.yaml entry that cannot be read is a problem, never skipped. Every problem in every file is reported
    together."""
    problems: list[Problem] = []
    policies: list[Policy] = []
    seen: set[str] = set()
    for file in _policy_files(paths, problems):
        key = os.path.realpath(file)
        if key in seen:
            continue
        seen.add(key)
        text = _read_text(file, problems)
        if text is not None:
            policies.extend(_parse_text(text, str(file), problems))
    problems.extend(_duplicate_problems(policies))
    if problems:
        raise PolicyError(problems)
    return tuple(policies)


# --------------------------------------------------------------------------------------------------------
# Files


def _policy_files(paths: Sequence[Path], problems: list[Problem]) -> Iterator[Path]:
    for path in paths:
        try:
            mode = path.stat().st_mode  # follows symlinks given explicitly
        except FileNotFoundError:
            problems.append(Problem(str(path), 0, "path", "no such file or directory"))
            continue
        except (OSError, ValueError) as exc:  # e.g. ENAMETOOLONG, ELOOP, EACCES, an embedded NUL
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(Problem(str(path), 0, "path", f"cannot access: {why}"))
            continue
        if stat.S_ISDIR(mode):
            before = len(problems)
            found = sorted(_yaml_files_under(path, problems))
            if not found and len(problems) == before:
                problems.append(Problem(str(path), 0, "path", "directory holds no *.yaml or *.yml files"))
            yield from found
        elif stat.S_ISREG(mode):
            yield path
        else:
            problems.append(Problem(str(path), 0, "path", "not a regular file or directory"))


def _yaml_files_under(directory: Path, problems: list[Problem]) -> Iterator[Path]:
    def unreadable(error: OSError) -> None:
        # os.walk skips what it cannot list; a skipped directory would be policies silently not enforced.
        problems.append(Problem(str(error.filename or directory), 0, "path",
                                f"cannot read directory: {error.strerror or error}"))

    for root, dirs, files in os.walk(directory, onerror=unreadable, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith((".yaml", ".yml")):
                continue
            # A policy file that cannot be read (a dangling symlink, a FIFO) is reported, never skipped.
            candidate = Path(root, name)
            try:
                mode = candidate.stat().st_mode
            except OSError as exc:
                problems.append(Problem(str(candidate), 0, "path", f"cannot access: {exc.strerror or exc}"))
                continue
            if stat.S_ISREG(mode):
                yield candidate
            else:
                problems.append(Problem(str(candidate), 0, "path", "not a regular file"))


def _read_text(file: Path, problems: list[Problem]) -> str | None:
    try:
        with file.open("rb") as stream:
            data = stream.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        problems.append(Problem(str(file), 0, "path", f"cannot read: {exc.strerror or exc}"))
        return None
    if len(data) > MAX_TEXT_BYTES:
        problems.append(Problem(str(file), 0, "file", _too_large_message()))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(str(file), 0, "file", f"not valid UTF-8 (byte offset {exc.start})"))
        return None


def _too_large_message() -> str:
    return f"larger than {MAX_TEXT_BYTES} bytes (1 MiB), the limit for one policy text; refused unparsed"


def _duplicate_problems(policies: Sequence[Policy]) -> list[Problem]:
    # Two policies with one name would be ambiguous in alerts, and KubeArmor would let the later one
    # replace the earlier, which makes the result depend on file order.
    first: dict[tuple[PolicyKind, str], Policy] = {}
    problems = []
    for policy in policies:
        key = (policy.kind, policy.name)
        if key in first:
            earlier = first[key]
            problems.append(Problem(policy.origin, policy.line, "metadata.name",
                                    f"duplicate {policy.kind} name {policy.name!r}; first defined at "
                                    f"{earlier.origin}:{earlier.line}"))
        else:
            first[key] = policy
    return problems


# --------------------------------------------------------------------------------------------------------
# YAML


class _BoundedSafeLoader(yaml.SafeLoader):
    """SafeLoader composing nodes (for line numbers); refuses aliases and anchors, bounds size and depth."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._node_count = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event: Event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = cast(Mark | None, event.start_mark)
        if isinstance(event, AliasEvent) or (
            isinstance(event, ScalarEvent | CollectionStartEvent) and event.anchor is not None
        ):
            # Refusing anchors outright (not only expansion) keeps a bundle readable as written.
            raise ComposerError(
                None, None, "YAML anchors and aliases are not allowed in policies", mark)
        self._node_count += 1
        if self._node_count > MAX_YAML_NODES:
            raise ComposerError(
                None, None, f"more than {MAX_YAML_NODES} YAML nodes in one text", mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ComposerError(
                    None, None, f"YAML nested deeper than {MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _parse_text(text: str, origin: str, problems: list[Problem]) -> tuple[Policy, ...]:
    found: list[Problem] = []
    policies = _parse_text_unsorted(text, origin, found)
    problems.extend(sorted(found, key=lambda p: p.line))  # stable: same-line problems keep their order
    return policies


def _parse_text_unsorted(text: str, origin: str, problems: list[Problem]) -> tuple[Policy, ...]:
    # Cheap checks first: len(text) is a lower bound on the UTF-8 size.
    if len(text) > MAX_TEXT_BYTES:
        problems.append(Problem(origin, 0, "file", _too_large_message()))
        return ()
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        problems.append(Problem(origin, 0, "file", f"not valid Unicode (character offset {exc.start})"))
        return ()
    if size > MAX_TEXT_BYTES:
        problems.append(Problem(origin, 0, "file", _too_large_message()))
        return ()

    policies: list[Policy] = []
    try:
        loader = _BoundedSafeLoader(text)  # the reader checks for non-printable characters here
    except yaml.reader.ReaderError as exc:
        problems.append(_reader_problem(origin, text, exc))
        return ()
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None or _is_null(node):
                continue  # an empty document, e.g. after a trailing '---'
            policy = _DocumentReader(origin, problems).read(node)
            if policy is not None:
                policies.append(policy)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problems.append(Problem(origin, line, "yaml", exc.problem or exc.context or "invalid YAML"))
    except yaml.reader.ReaderError as exc:
        problems.append(_reader_problem(origin, text, exc))
    except yaml.YAMLError as exc:
        problems.append(Problem(origin, 0, "yaml", str(exc).replace("\n", " ")))
    finally:
        loader.dispose()
    return tuple(policies)


def _reader_problem(origin: str, text: str, error: yaml.reader.ReaderError) -> Problem:
    # ReaderError is not a MarkedYAMLError: it has a character position, not a line.
    line = text.count("\n", 0, max(error.position, 0)) + 1
    character = error.character if isinstance(error.character, int) else 0
    return Problem(origin, line, "yaml", f"unacceptable character U+{character:04X}: {error.reason}")


_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_CONSTRUCTOR = SafeConstructor()


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _is_mapping(node: Node) -> bool:
    # The tag check refuses !!set, !!omap-like and application tags on collections: only plain mappings.
    return isinstance(node, MappingNode) and node.tag == _MAP


def _is_list(node: Node) -> bool:
    return isinstance(node, SequenceNode) and node.tag == _SEQ


def _describe(node: Node) -> str:
    if _is_mapping(node):
        return "a mapping"
    if _is_list(node):
        return "a list"
    if not isinstance(node, ScalarNode):
        return f"a collection tagged {node.tag}"
    short = {_STR: "a string", _INT: "an integer", _BOOL: "a boolean", _NULL: "null", _FLOAT: "a float",
             _TIMESTAMP: "a timestamp"}
    described = short.get(node.tag, f"a scalar tagged {node.tag}")
    if node.tag != _STR and node.style is None:
        # YAML 1.1 reads yes/no/on/off, 1.0, 2024-01-01 as non-strings; quoting is the usual fix.
        described += f" ({node.value!r} unquoted; quote it for a string)"
    return described


# Per-item field sets. "Unsupported" fields are valid KubeArmor but not enforceable here; they get a
# message saying so instead of "unknown field".
_ALERT_FIELDS = frozenset({"severity", "tags", "message", "action"})
_UNSUPPORTED_WHY: Final[Mapping[str, str]] = {
    "syscalls": "syscall rules are not enforced by the BPF-LSM engine (KubeArmor itself only audits them)",
    "presets": "presets are not supported by the BPF-LSM engine",
    "apparmor": "AppArmor profiles do not apply: enforcement is BPF-LSM only",
    "device": "device rules are not supported by the BPF-LSM engine",
    "matchDNSQueries": "DNS query rules are not supported by the BPF-LSM engine",
    "execname": "execname rules are not supported by the BPF-LSM engine; give the absolute path instead",
    "allowedArgs": "argument matching is not supported by the BPF-LSM engine",
    "pts": "pts (controlling terminal) rules are not supported by the BPF-LSM engine",
}


class _DocumentReader:
    """Reads one YAML document into a Policy, appending every problem it finds to `problems`."""

    def __init__(self, origin: str, problems: list[Problem]) -> None:
        self.origin = origin
        self.problems = problems
        self._start = len(problems)

    # -- reporting and typed access ------------------------------------------------------------------------

    def problem(self, node: Node | None, where: str, message: str) -> None:
        # The document itself has no dotted path; name it so that every problem line has a field.
        self.problems.append(Problem(self.origin, _line(node) if node is not None else 0, where or "document",
                                     message))

    def mapping(self, node: Node, where: str, allowed: frozenset[str], required: Sequence[str] = (),
                hint: Mapping[str, str] | None = None) -> dict[str, Node] | None:
        """The mapping's entries (null values dropped, as Kubernetes treats them as unset), after refusing
        non-string keys, duplicate keys and unknown fields."""
        if not isinstance(node, MappingNode) or not _is_mapping(node):
            self.problem(node, where, f"must be a mapping, not {_describe(node)}")
            return None
        entries: dict[str, Node] = {}
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag != _STR:
                self.problem(key_node, where, f"keys must be strings, not {_describe(key_node)}")
                continue
            key = key_node.value
            child = f"{where}.{key}" if where else key
            if key in seen:
                self.problem(key_node, child, "duplicate key")
                continue
            seen.add(key)
            if key not in allowed:
                why = _UNSUPPORTED_WHY.get(key)
                extra = (hint or {}).get(key)
                if why is not None:
                    self.problem(key_node, child, f"not supported: {why}")
                else:
                    self.problem(key_node, child, f"unknown field {key!r}" + (f" ({extra})" if extra else ""))
                continue
            if not _is_null(value_node):
                entries[key] = value_node
        for key in required:
            if key not in entries and key in seen:
                self.problem(node, f"{where}.{key}" if where else key, "must not be null")
            elif key not in entries:
                self.problem(node, f"{where}.{key}" if where else key, "is required")
        return entries

    def sequence(self, node: Node, where: str) -> list[Node]:
        if not isinstance(node, SequenceNode) or not _is_list(node):
            self.problem(node, where, f"must be a list, not {_describe(node)}")
            return []
        return list(node.value)

    def string(self, node: Node, where: str) -> str | None:
        if not isinstance(node, ScalarNode) or node.tag != _STR:
            self.problem(node, where, f"must be a string, not {_describe(node)}")
            return None
        value: str = node.value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.problem(node, where, "not valid Unicode (lone surrogate)")
            return None
        return value

    def boolean(self, node: Node, where: str) -> bool | None:
        if not isinstance(node, ScalarNode) or node.tag != _BOOL:
            self.problem(node, where, f"must be true or false, not {_describe(node)}")
            return None
        return bool(_CONSTRUCTOR.construct_yaml_bool(node))

    def integer(self, node: Node, where: str) -> int | None:
        if not isinstance(node, ScalarNode) or node.tag != _INT:
            self.problem(node, where, f"must be an integer, not {_describe(node)}")
            return None
        try:
            return int(_CONSTRUCTOR.construct_yaml_int(node))
        except ValueError:  # e.g. more digits than int() accepts
            self.problem(node, where, "not a usable integer")
            return None

    def string_list(self, node: Node, where: str) -> tuple[str, ...] | None:
        if not isinstance(node, SequenceNode) or not _is_list(node):
            self.problem(node, where, f"must be a list of strings, not {_describe(node)}")
            return None
        values = [self.string(item, f"{where}[{i}]") for i, item in enumerate(node.value)]
        return None if any(v is None for v in values) else tuple(v for v in values if v is not None)

    def string_map(self, node: Node, where: str) -> dict[str, tuple[Node, str]] | None:
        if not isinstance(node, MappingNode) or not _is_mapping(node):
            self.problem(node, where, f"must be a mapping, not {_describe(node)}")
            return None
        result: dict[str, tuple[Node, str]] = {}
        ok = True
        for key_node, value_node in node.value:
            key = self.string(key_node, where)
            if key is None:
                ok = False
                continue
            if key in result:
                self.problem(key_node, f"{where}.{key}", "duplicate key")
                ok = False
                continue
            value = self.string(value_node, f"{where}.{key}")
            if value is None:
                ok = False
                continue
            result[key] = (key_node, value)
        return result if ok else None

    # -- document ----------------------------------------------------------------------------------------

    def read(self, node: Node) -> Policy | None:
        top = self.mapping(node, "", frozenset({"apiVersion", "kind", "metadata", "spec"}),
                           required=("apiVersion", "kind", "metadata", "spec"))
        if top is None:
            return None
        if "apiVersion" in top:
            api = self.string(top["apiVersion"], "apiVersion")
            if api is not None and api != API_VERSION:
                self.problem(top["apiVersion"], "apiVersion", f"must be {API_VERSION!r}, not {api!r}")
        kind: PolicyKind | None = None
        if "kind" in top:
            raw_kind = self.string(top["kind"], "kind")
            if raw_kind is not None:
                try:
                    kind = PolicyKind(raw_kind)
                except ValueError:
                    self.problem(top["kind"], "kind",
                                 f"must be KubeArmorPolicy or KubeArmorHostPolicy, not {raw_kind!r}")
        name, namespace = self.metadata(top.get("metadata"))
        if kind is None or "spec" not in top:
            return None
        policy = self.spec(top["spec"], kind, name or "", namespace, _line(node))
        if policy is None or name is None or len(self.problems) > self._start:
            return None
        return policy

    def metadata(self, node: Node | None) -> tuple[str | None, str | None]:
        if node is None:
            return None, None
        meta = self.mapping(node, "metadata", frozenset({"name", "namespace", "labels", "annotations"}),
                            required=("name",))
        if meta is None:
            return None, None
        name = self.k8s_name(meta.get("name"), "metadata.name")
        namespace = self.k8s_name(meta.get("namespace"), "metadata.namespace")
        for key in ("labels", "annotations"):
            if key in meta:
                self.string_map(meta[key], f"metadata.{key}")
        return name, namespace

    def k8s_name(self, node: Node | None, where: str) -> str | None:
        if node is None:
            return None
        value = self.string(node, where)
        if value is None:
            return None
        if len(value) > _K8S_NAME_MAX or _K8S_NAME.fullmatch(value) is None:
            self.problem(node, where, f"{value!r} is not a valid name (lowercase letters, digits, '-' and "
                                      f"'.', starting and ending alphanumeric, at most {_K8S_NAME_MAX} "
                                      f"characters)")
            return None
        return value

    def spec(self, node: Node, kind: PolicyKind, name: str, namespace: str | None,
             line: int) -> Policy | None:
        host = kind is PolicyKind.HOST
        selector_key = "nodeSelector" if host else "selector"
        other_key = "selector" if host else "nodeSelector"
        allowed = frozenset({selector_key, "process", "file", "network", "capabilities"}) | _ALERT_FIELDS
        hint = {other_key: f"{kind} uses {selector_key}"}
        spec = self.mapping(node, "spec", allowed, required=(selector_key,), hint=hint)
        if spec is None:
            return None
        defaults = self.alert_defaults(spec, "spec", _Defaults(None, (), None, Action.BLOCK))
        selector = None
        if selector_key in spec:
            read_selector = self.node_selector if host else self.selector
            selector = read_selector(spec[selector_key])
        process = self.path_section(spec.get("process"), "spec.process", defaults, file=False)
        files = self.path_section(spec.get("file"), "spec.file", defaults, file=True)
        network = self.network_section(spec.get("network"), "spec.network", defaults, host=host)
        capabilities = self.capability_section(spec.get("capabilities"), "spec.capabilities", defaults,
                                               host=host)
        if not (process or files or network or capabilities) and len(self.problems) == self._start:
            self.problem(node, "spec", "the policy has no rules (process, file, network or capabilities)")
        if selector is None:
            return None
        return Policy(kind, name, namespace, selector, process, files, network, capabilities,
                      origin=self.origin, line=line)

    # -- selectors --------------------------------------------------------------------------------------

    def selector(self, node: Node) -> Selector | None:
        sel = self.mapping(node, "spec.selector", frozenset({"matchLabels", "matchExpressions"}))
        if sel is None:
            return None
        labels = self.match_labels(sel.get("matchLabels"), "spec.selector.matchLabels")
        expressions: list[LabelExpression] = []
        ok = labels is not None or "matchLabels" not in sel
        if "matchExpressions" in sel:
            items = self.sequence(sel["matchExpressions"], "spec.selector.matchExpressions")
            for i, item in enumerate(items):
                expression = self.label_expression(item, f"spec.selector.matchExpressions[{i}]")
                if expression is None:
                    ok = False
                else:
                    expressions.append(expression)
        if not ok:
            return None
        if not labels and not expressions:
            # Outside Kubernetes there is no namespace to scope an empty selector to; KubeArmor's
            # unorchestrated mode also demands matchLabels. Selecting everything must be explicit.
            self.problem(node, "spec.selector",
                         f"must have matchLabels or matchExpressions; to select every container use "
                         f"matchLabels: {{{CONTAINER_NAME_LABEL}: \".*\"}}")
            return None
        return Selector(tuple(sorted((labels or {}).items())), tuple(expressions))

    def node_selector(self, node: Node) -> Selector | None:
        sel = self.mapping(node, "spec.nodeSelector", frozenset({"matchLabels"}))
        if sel is None:
            return None
        labels = self.match_labels(sel.get("matchLabels"), "spec.nodeSelector.matchLabels", regex=False)
        if labels is None and "matchLabels" in sel:
            return None
        return Selector(tuple(sorted((labels or {}).items())))

    def match_labels(self, node: Node | None, where: str, *, regex: bool = True) -> dict[str, str] | None:
        if node is None:
            return None
        entries = self.string_map(node, where)
        if entries is None:
            return None
        labels: dict[str, str] = {}
        ok = True
        for key, (key_node, value) in entries.items():
            if not key:
                self.problem(key_node, where, "label keys must not be empty")
                ok = False
            elif regex and key == CONTAINER_NAME_LABEL:
                if value.startswith("[") and value.endswith("]") and "," in value:
                    # KubeArmor's Kubernetes-mode list; as a regex it would be a character class that
                    # selects no real container, i.e. silently enforce nothing.
                    alternatives = "|".join(v.strip() for v in value[1:-1].split(","))
                    self.problem(key_node, f"{where}.{key}",
                                 f"the bracketed container list {value!r} is not supported; write the regex "
                                 f"{alternatives!r}")
                    ok = False
                    continue
                try:
                    re.compile(value)
                except (re.error, RecursionError, OverflowError) as exc:
                    self.problem(key_node, f"{where}.{key}", f"not a valid regular expression: {exc}")
                    ok = False
            labels[key] = value
        return labels if ok else None

    def label_expression(self, node: Node, where: str) -> LabelExpression | None:
        item = self.mapping(node, where, frozenset({"key", "operator", "values"}),
                            required=("key", "operator", "values"))
        if item is None or len(item) < 3:
            return None
        key = self.string(item["key"], f"{where}.key")
        if key is not None and key != "label":
            self.problem(item["key"], f"{where}.key", f"must be 'label', not {key!r}")
        operator = self.choice(item["operator"], f"{where}.operator", LabelOperator)
        values = self.string_list(item["values"], f"{where}.values")
        if values is not None:
            for i, value in enumerate(values):
                if "=" not in value:
                    self.problem(item["values"], f"{where}.values[{i}]",
                                 f"must be a 'key=value' label, not {value!r}")
                    values = None
                    break
        if key != "label" or operator is None or values is None:
            return None
        if not values:
            self.problem(item["values"], f"{where}.values", "must not be empty")
            return None
        return LabelExpression(operator, values)

    # -- alert fields and actions ----------------------------------------------------------------------

    def choice(self, node: Node, where: str, kind: type[_E]) -> _E | None:
        value = self.string(node, where)
        if value is None:
            return None
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(m.value for m in kind)
            self.problem(node, where, f"must be one of {choices}, not {value!r}")
            return None

    def alert_defaults(self, entries: Mapping[str, Node], where: str, outer: _Defaults) -> _Defaults:
        """The innermost-wins values at this level: what is given here, else what the outer level gave."""
        severity, tags, message, action = outer.severity, outer.tags, outer.message, outer.action
        if "severity" in entries:
            value = self.integer(entries["severity"], f"{where}.severity")
            if value is not None and not 1 <= value <= 10:
                self.problem(entries["severity"], f"{where}.severity", f"must be 1 to 10, not {value}")
            elif value is not None:
                severity = value
        if "tags" in entries:
            tags = self.string_list(entries["tags"], f"{where}.tags") or tags
        if "message" in entries:
            message = self.string(entries["message"], f"{where}.message") or message
        if "action" in entries:
            action = self.choice(entries["action"], f"{where}.action", Action) or action
        return _Defaults(severity, tags, message, action)

    def sources(self, entries: Mapping[str, Node], where: str, *, required: bool) -> tuple[str, ...] | None:
        if "fromSource" not in entries:
            # When required, mapping() has already reported it missing.
            return None if required else ()
        items = self.sequence(entries["fromSource"], f"{where}.fromSource")
        if required and not items:
            self.problem(entries["fromSource"], f"{where}.fromSource",
                         "must name at least one source in host policies (KubeArmorHostPolicy CRD)")
            return None
        result: list[str] = []
        ok = True
        for i, item in enumerate(items):
            here = f"{where}.fromSource[{i}]"
            source = self.mapping(item, here, frozenset({"path"}),
                                  required=("path",), hint={"dir": "fromSource takes path only here"})
            if source is None or "path" not in source:
                ok = False
                continue
            path = self.path(source["path"], f"{here}.path", directory=False)
            if path is None:
                ok = False
            elif path not in result:
                result.append(path)
        return tuple(result) if ok else None

    # -- paths -------------------------------------------------------------------------------------------

    def path(self, node: Node, where: str, *, directory: bool) -> str | None:
        raw = self.string(node, where)
        if raw is None:
            return None
        normalised, error = normalise_path(raw, directory=directory)
        if error is not None:
            self.problem(node, where, error)
        return normalised

    # -- sections ----------------------------------------------------------------------------------------

    def section(self, node: Node | None, where: str, rule_lists: frozenset[str]) -> dict[str, Node] | None:
        if node is None:
            return None
        return self.mapping(node, where, rule_lists | _ALERT_FIELDS)

    def path_section(self, node: Node | None, where: str, outer: _Defaults, *,
                     file: bool) -> tuple[PathMatch, ...]:
        section = self.section(node, where, frozenset({"matchPaths", "matchDirectories", "matchPatterns"}))
        if section is None:
            return ()
        defaults = self.alert_defaults(section, where, outer)
        flags = frozenset({"ownerOnly", "fromSource", "readOnly"} if file else {"ownerOnly", "fromSource"})
        rules: list[PathMatch] = []
        for i, item in enumerate(self.sequence(section["matchPaths"], f"{where}.matchPaths")
                                 if "matchPaths" in section else []):
            here = f"{where}.matchPaths[{i}]"
            rules.extend(self.path_rule(item, here, defaults, "path", flags, directory=False))
        for i, item in enumerate(self.sequence(section["matchDirectories"], f"{where}.matchDirectories")
                                 if "matchDirectories" in section else []):
            here = f"{where}.matchDirectories[{i}]"
            rules.extend(self.path_rule(item, here, defaults, "dir", flags | {"recursive"}, directory=True))
        for i, item in enumerate(self.sequence(section["matchPatterns"], f"{where}.matchPatterns")
                                 if "matchPatterns" in section else []):
            self.pattern_rule(item, f"{where}.matchPatterns[{i}]", defaults, file=file)
        return tuple(rules)

    def path_rule(self, node: Node, where: str, outer: _Defaults, key: str, flags: frozenset[str], *,
                  directory: bool) -> list[PathMatch]:
        item = self.mapping(node, where, flags | {key} | _ALERT_FIELDS, required=(key,))
        if item is None:
            return []
        path = self.path(item[key], f"{where}.{key}", directory=directory) if key in item else None
        defaults = self.alert_defaults(item, where, outer)
        owner_only = self.flag(item, "ownerOnly", where)
        read_only = self.flag(item, "readOnly", where)
        recursive = self.flag(item, "recursive", where)
        sources = self.sources(item, where, required=False)
        if path is None or sources is None or None in (owner_only, read_only, recursive):
            return []
        kind = PathKind.EXACT if not directory else PathKind.DIR_RECURSIVE if recursive else PathKind.DIR
        return [PathMatch(path, kind, bool(read_only), bool(owner_only), sources, defaults.action,
                          defaults.alert())]

    def flag(self, item: Mapping[str, Node], key: str, where: str) -> bool | None:
        if key not in item:
            return False
        return self.boolean(item[key], f"{where}.{key}")

    def pattern_rule(self, node: Node, where: str, outer: _Defaults, *, file: bool) -> None:
        flags = {"pattern", "ownerOnly", "readOnly"} if file else {"pattern", "ownerOnly"}
        item = self.mapping(node, where, frozenset(flags) | _ALERT_FIELDS, required=("pattern",))
        if item is None:
            return
        # Parsed in full first, so that every structural problem is reported along with the refusal.
        self.alert_defaults(item, where, outer)
        for key in ("ownerOnly", "readOnly"):
            self.flag(item, key, where)
        if "pattern" in item and self.string(item["pattern"], f"{where}.pattern") is not None:
            self.problem(item["pattern"], f"{where}.pattern",
                         "matchPatterns cannot be enforced: the BPF-LSM engine matches exact paths and "
                         "directory prefixes, not glob/regex patterns; use matchPaths or matchDirectories")

    def network_section(self, node: Node | None, where: str, outer: _Defaults, *,
                        host: bool) -> tuple[ProtocolMatch, ...]:
        section = self.section(node, where, frozenset({"matchProtocols"}))
        if section is None:
            return ()
        defaults = self.alert_defaults(section, where, outer)
        rules: list[ProtocolMatch] = []
        items = self.sequence(section["matchProtocols"], f"{where}.matchProtocols") \
            if "matchProtocols" in section else []
        for i, item_node in enumerate(items):
            here = f"{where}.matchProtocols[{i}]"
            required = ("protocol", "fromSource") if host else ("protocol",)
            item = self.mapping(item_node, here, frozenset({"protocol", "fromSource"}) | _ALERT_FIELDS,
                                required=required)
            if item is None:
                continue
            protocol = None
            if "protocol" in item:
                raw = self.string(item["protocol"], f"{here}.protocol")
                if raw is not None and raw.lower() not in PROTOCOLS:
                    self.problem(item["protocol"], f"{here}.protocol",
                                 f"unknown protocol {raw!r}; one of {', '.join(sorted(PROTOCOLS))} "
                                 f"(any case)")
                elif raw is not None:
                    protocol = raw.lower()
            rule_defaults = self.alert_defaults(item, here, defaults)
            sources = self.sources(item, here, required=host)
            if protocol is not None and sources is not None:
                rules.append(ProtocolMatch(protocol, sources, rule_defaults.action, rule_defaults.alert()))
        return tuple(rules)

    def capability_section(self, node: Node | None, where: str, outer: _Defaults, *,
                           host: bool) -> tuple[CapabilityMatch, ...]:
        section = self.section(node, where, frozenset({"matchCapabilities"}))
        if section is None:
            return ()
        defaults = self.alert_defaults(section, where, outer)
        rules: list[CapabilityMatch] = []
        items = self.sequence(section["matchCapabilities"], f"{where}.matchCapabilities") \
            if "matchCapabilities" in section else []
        for i, item_node in enumerate(items):
            here = f"{where}.matchCapabilities[{i}]"
            required = ("capability", "fromSource") if host else ("capability",)
            item = self.mapping(item_node, here, frozenset({"capability", "fromSource"}) | _ALERT_FIELDS,
                                required=required)
            if item is None:
                continue
            capability = None
            if "capability" in item:
                raw = self.string(item["capability"], f"{here}.capability")
                if raw is not None:
                    capability = canonical_capability(raw)
                    if capability is None:
                        self.problem(item["capability"], f"{here}.capability",
                                     f"unknown capability {raw!r}; use a name from the KubeArmor CRD list, "
                                     f"e.g. net_raw or sys_admin")
            rule_defaults = self.alert_defaults(item, here, defaults)
            sources = self.sources(item, here, required=host)
            if capability is not None and sources is not None:
                rules.append(CapabilityMatch(capability, sources, rule_defaults.action,
                                             rule_defaults.alert()))
        return tuple(rules)


@dataclass(frozen=True)
class _Defaults:
    severity: int | None
    tags: tuple[str, ...]
    message: str | None
    action: Action

    def alert(self) -> Alert:
        return Alert(self.severity, self.tags, self.message)


# --------------------------------------------------------------------------------------------------------
# Values shared with the compiler and the CLI


def normalise_path(raw: str, *, directory: bool) -> tuple[str | None, str | None]:
    """(normalised path, None) or (None, why it is refused). Directories keep their trailing slash."""
    shown = _printable(repr(raw))
    if "\x00" in raw:
        return None, f"{shown} contains a NUL character"
    if "\n" in raw or "\r" in raw:
        return None, f"{shown} contains a line break"
    if not raw.startswith("/"):
        return None, f"{shown} is not absolute (must start with '/')"
    if directory and not raw.endswith("/"):
        return None, (f"{shown}: a directory must end with '/' (pattern ^/$|^/.*/$); "
                      f"did you mean {_printable(repr(raw + '/'))}?")
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


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
