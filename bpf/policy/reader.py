"""Strict reading of KubeArmorPolicy / KubeArmorHostPolicy documents into `Policy` values.

Users bring the policies they already write for KubeArmor (`apiVersion: security.kubearmor.com/v1`). The
reader never guesses: a field it does not understand is refused, never ignored, because an ignored rule is
a rule that silently is not enforced. Every problem is reported as `FILE:LINE: field: message`.

What is accepted (KubeArmor CRD, `deployments/CRD/KubeArmor{,Host}Policy.yaml`):
- `spec.process` / `spec.file`: `matchPaths` {path, ownerOnly, fromSource[{path}]}, `matchDirectories` {dir,
  recursive, ownerOnly, fromSource}, `matchPatterns` {pattern, ownerOnly} (AppArmor globs, checked by
  bpf.policy.glob.parse: a pattern the engine cannot enforce as written is refused with the reason), and
  `readOnly` on file rules.
- `spec.network.matchProtocols` {protocol, fromSource}; `spec.capabilities.matchCapabilities`
  {capability, fromSource}. Host policies must give `fromSource` for both, as the host CRD requires.
- `action`, `severity`, `tags`, `message` at spec, section and rule level. Each rule takes the innermost
  value given (rule > section > spec); the action defaults to Block, as in KubeArmor.
- `spec.selector` {matchLabels, matchExpressions} for KubeArmorPolicy, `spec.nodeSelector` {matchLabels}
  (required) for KubeArmorHostPolicy.

What is refused although the CRD has it, each with a message saying why:
- `syscalls`, `presets`, `apparmor`, `device`, `matchDNSQueries`, `execname`, `allowedArgs`, `pts`:
  the engine has no hook that enforces them.

Paths are validated and normalised by `bpf.policy.model.normalise_path`. KubeArmor's bracketed container
list form (`"[c1,c2]"`, Kubernetes mode only) is refused with a hint to write `c1|c2`: read as a regex it
would be a character class selecting no real container.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from yaml.nodes import Node

from bpf.policy.glob import PatternError, parse
from bpf.policy.model import (
    CONTAINER_NAME_LABEL,
    PROTOCOLS,
    Action,
    AlertFields,
    CapabilityMatch,
    LabelExpression,
    LabelOperator,
    PathKind,
    PathMatch,
    PatternMatch,
    Policy,
    PolicyKind,
    Problem,
    ProtocolMatch,
    Selector,
    canonical_capability,
    normalise_path,
)
from bpf.policy.nodes import NodeReader, line_of

API_VERSION: Final = "security.kubearmor.com/v1"

_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_K8S_NAME_MAX = 253

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


class DocumentReader(NodeReader):
    """Reads one YAML document into a Policy, appending every problem it finds to `problems`."""

    unsupported = _UNSUPPORTED_WHY

    def __init__(self, origin: str, problems: list[Problem]) -> None:
        super().__init__(origin, problems)
        self._start = len(problems)

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
        policy = self.spec(top["spec"], kind, name or "", namespace, line_of(node))
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
        process, process_patterns = self.path_section(spec.get("process"), "spec.process", defaults, file=False)
        files, file_patterns = self.path_section(spec.get("file"), "spec.file", defaults, file=True)
        network = self.network_section(spec.get("network"), "spec.network", defaults, host=host)
        capabilities = self.capability_section(spec.get("capabilities"), "spec.capabilities", defaults,
                                               host=host)
        if (not (process or files or network or capabilities or process_patterns or file_patterns)
                and len(self.problems) == self._start):
            self.problem(node, "spec", "the policy has no rules (process, file, network or capabilities)")
        if selector is None:
            return None
        return Policy(kind, name, namespace, selector, process, files, network, capabilities,
                      file_patterns=file_patterns, process_patterns=process_patterns, origin=self.origin, line=line)

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
                     file: bool) -> tuple[tuple[PathMatch, ...], tuple[PatternMatch, ...]]:
        section = self.section(node, where, frozenset({"matchPaths", "matchDirectories", "matchPatterns"}))
        if section is None:
            return (), ()
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
        patterns: list[PatternMatch] = []
        for i, item in enumerate(self.sequence(section["matchPatterns"], f"{where}.matchPatterns")
                                 if "matchPatterns" in section else []):
            pattern = self.pattern_rule(item, f"{where}.matchPatterns[{i}]", defaults, file=file)
            if pattern is not None:
                patterns.append(pattern)
        return tuple(rules), tuple(patterns)

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

    def pattern_rule(self, node: Node, where: str, outer: _Defaults, *, file: bool) -> PatternMatch | None:
        flags = {"pattern", "ownerOnly", "readOnly"} if file else {"pattern", "ownerOnly"}
        item = self.mapping(node, where, frozenset(flags) | _ALERT_FIELDS, required=("pattern",))
        if item is None:
            return None
        defaults = self.alert_defaults(item, where, outer)
        owner_only = self.flag(item, "ownerOnly", where)
        read_only = self.flag(item, "readOnly", where)
        pattern = self.string(item["pattern"], f"{where}.pattern") if "pattern" in item else None
        if pattern is not None:
            try:
                parse(pattern)
            except PatternError as exc:
                self.problem(item["pattern"], f"{where}.pattern", str(exc))
                pattern = None
        if pattern is None or owner_only is None or read_only is None:
            return None
        return PatternMatch(pattern, bool(read_only), bool(owner_only), defaults.action, defaults.alert())

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

    def alert(self) -> AlertFields:
        return AlertFields(self.severity, self.tags, self.message)

