"""Strict reading of KubeArmorPolicy / KubeArmorHostPolicy documents into `Policy` values.

Users bring the policies they already write for KubeArmor (`apiVersion: security.kubearmor.com/v1`). The
reader never guesses: a field it does not understand is refused, never ignored, because an ignored rule is
a rule that silently is not enforced. Every problem is reported as `FILE:LINE: field: message`.

What is accepted (KubeArmor CRD, `deployments/CRD/KubeArmor{,Host}Policy.yaml`; README "KubeArmor
compatibility" has the table, field by field):
- `spec.process` / `spec.file`: `matchPaths` {path, ownerOnly, fromSource[{path}]} (process rules may give
  `execname`, the executable's name at any path, instead of `path`: compiled into the process patterns
  `/NAME` and `/**/NAME`, so without fromSource), `matchDirectories` {dir, recursive, ownerOnly,
  fromSource}, `matchPatterns` {pattern, ownerOnly} (AppArmor globs, checked by bpf.policy.glob.parse: a
  pattern the engine cannot enforce as written is refused with the reason), and `readOnly` on file rules;
  `pts` and `allowedArgs` as below.
- `spec.network.matchProtocols` {protocol, fromSource}; `spec.capabilities.matchCapabilities`
  {capability, fromSource}. Host policies must give `fromSource` for both, as the host CRD requires.
- `action`, `severity`, `tags`, `message` at spec, section and rule level. Each rule takes the innermost
  value given (rule > section > spec); the action defaults to Block, as in KubeArmor.
- `spec.selector` {matchLabels, matchExpressions} for KubeArmorPolicy, `spec.nodeSelector` {matchLabels}
  (required) for KubeArmorHostPolicy. A null or absent `spec` is an empty policy, as in KubeArmor.

Accepted but not enforced as written, each named in the policy's warnings (Policy.warnings), never where
ignoring it would weaken a Block or widen an Allow (that is refused, with the reason):
- `syscalls`: KubeArmor only audits them, from its system monitor; warden has no syscall hook.
- `pts: true` on a Block or Audit rule: the rule applies with or without a terminal (covers more).
- `allowedArgs` on a Block or Audit rule: the rule applies whatever the arguments (covers more).
- `presets` and `matchDNSQueries` with action Audit: nothing is audited.
- a null or absent `spec`: the policy has nothing to enforce.

Refused although the CRD has them, each with a message saying why:
- `fromSource` on an `execname` rule (patterns have no source: the rule would apply to every process).
- `apparmor` (its deny rules would be dropped), `presets` and `matchDNSQueries` with action Block or
  Allow, `pts: true` and `allowedArgs` on an Allow rule, `device`: ignoring any of them would let through
  what the policy stops.

Paths are validated and normalised by `bpf.policy.model.normalise_path`. `kubearmor.io/container.name`
takes a regex or KubeArmor's bracketed list (bpf.policy.model.container_name_list).
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
    ENFORCED_PRESETS,
    PROTOCOLS,
    SYSCALLS,
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
    PresetMatch,
    Problem,
    ProtocolMatch,
    Selector,
    canonical_capability,
    container_name_list,
    normalise_path,
)
from bpf.policy.nodes import NodeReader, line_of

API_VERSION: Final = "security.kubearmor.com/v1"

_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
# A container name in KubeArmor's bracketed list: Kubernetes' DNS-1123 label, or a Docker-style name.
_CONTAINER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_K8S_NAME_MAX = 253

# Per-item field sets. "Unsupported" fields are valid KubeArmor but not enforceable here; they get a
# message saying so instead of "unknown field".
_ALERT_FIELDS = frozenset({"severity", "tags", "message", "action"})
_UNSUPPORTED_WHY: Final[Mapping[str, str]] = {
    "device": "device rules are not supported by the BPF-LSM engine (no device hook); ignoring them would "
              "let through the devices the policy stops",
}
# KubeArmor's preset names (KubeArmor pkg/KubeArmorController/api/security.kubearmor.com/v1/common.go).
PRESETS: Final = frozenset({"filelessExec", "protectEnv", "exec", "protectProc"})

_EXECNAME = re.compile(r"[^/]+")  # the CRD's MatchBinType pattern, ^[^\/]+$
_GLOB_SPECIAL: Final = frozenset("*?[]{},\\")  # escaped with '\\' when an execname becomes a pattern
# What each narrowing field makes a rule depend on, which warden cannot check.
_NARROWING_WHY: Final[Mapping[str, str]] = {
    "pts": "controlling terminal",
    "allowedArgs": "arguments",
}


class DocumentReader(NodeReader):
    """Reads one YAML document into a Policy, appending every problem it finds to `problems`."""

    unsupported = _UNSUPPORTED_WHY

    def __init__(self, origin: str, problems: list[Problem]) -> None:
        super().__init__(origin, problems)
        self._start = len(problems)
        self.warnings: list[str] = []  # Policy.warnings of the document being read

    # -- document ----------------------------------------------------------------------------------------

    def read(self, node: Node) -> Policy | None:
        top = self.mapping(node, "", frozenset({"apiVersion", "kind", "metadata", "spec"}),
                           required=("apiVersion", "kind", "metadata"))
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
        if kind is None:
            return None
        if "spec" not in top:
            # KubeArmor's CRD does not require spec and the apiserver prunes a null one (its kubebuilder
            # scaffold samples have `spec:` with a comment only): an empty policy, accepted, warned.
            # Its empty selector selects every container (host); with no rules it adds only its warning.
            policy: Policy | None = Policy(
                kind, name or "", namespace, Selector(()), (), (), (), (), origin=self.origin,
                line=line_of(node), warnings=("spec: null or absent (an empty policy: no rules to enforce)",))
        else:
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
        allowed = frozenset({selector_key, "process", "file", "network", "capabilities", "syscalls", "presets",
                             "apparmor"}) | _ALERT_FIELDS
        hint = {other_key: f"{kind} uses {selector_key}"}
        spec = self.mapping(node, "spec", allowed, required=(selector_key,), hint=hint)
        if spec is None:
            return None
        defaults = self.alert_defaults(spec, "spec", _Defaults(None, (), None, Action.BLOCK))
        if "apparmor" in spec and self.string(spec["apparmor"], "spec.apparmor") is not None:
            self.problem(spec["apparmor"], "spec.apparmor",
                         "an AppArmor profile cannot be enforced (warden enforces with BPF-LSM only; KubeArmor "
                         "applies it only where AppArmor is the enforcer), and ignoring it would drop its deny "
                         "rules; write them as file/process rules")
        self.syscalls_section(spec.get("syscalls"), "spec.syscalls")
        presets = self.presets(spec.get("presets"), "spec.presets", defaults)
        selector = None
        if selector_key in spec:
            read_selector = self.node_selector if host else self.selector
            selector = read_selector(spec[selector_key])
        process, process_patterns = self.path_section(spec.get("process"), "spec.process", defaults, file=False)
        files, file_patterns = self.path_section(spec.get("file"), "spec.file", defaults, file=True)
        network = self.network_section(spec.get("network"), "spec.network", defaults, host=host)
        capabilities = self.capability_section(spec.get("capabilities"), "spec.capabilities", defaults,
                                               host=host)
        if (not (process or files or network or capabilities or process_patterns or file_patterns or presets)
                and not self.warnings
                and len(self.problems) == self._start):
            self.problem(node, "spec", "the policy has no rules (process, file, network or capabilities)")
        if selector is None:
            return None
        return Policy(kind, name, namespace, selector, process, files, network, capabilities,
                      file_patterns=file_patterns, process_patterns=process_patterns, presets=presets,
                      origin=self.origin, line=line,
                      warnings=tuple(self.warnings))

    def warn(self, where: str, what: str) -> None:
        """Record a field accepted but not enforced as written (Policy.warnings)."""
        self.warnings.append(f"{where} ({what})")

    # -- fields warden does not enforce ------------------------------------------------------------------

    def syscalls_section(self, node: Node | None, where: str) -> None:
        """KubeArmor's `syscalls`: read in full (so structural errors are reported), then warned about.
        KubeArmor itself only audits them (its syscalls section has no action), so nothing blocked by
        KubeArmor is let through; warden has no syscall hook to audit them with."""
        section = self.section(node, where, frozenset({"matchSyscalls", "matchPaths"}),
                               alert=frozenset({"severity", "tags", "message"}))
        if section is None:
            return
        self.alert_defaults(section, where, _Defaults(None, (), None, Action.AUDIT))
        count = 0
        for key, object_key in (("matchSyscalls", None), ("matchPaths", "path")):
            items = self.sequence(section[key], f"{where}.{key}") if key in section else []
            for i, item_node in enumerate(items):
                here = f"{where}.{key}[{i}]"
                fields = {"syscall", "fromSource", "severity", "tags", "message"}
                if object_key is not None:
                    fields |= {object_key, "recursive"}
                # The CRD requires none of them (SyscallMatchType, SyscallMatchPathType: all omitempty).
                item = self.mapping(item_node, here, frozenset(fields))
                if item is None:
                    continue
                count += 1
                self.alert_defaults(item, here, _Defaults(None, (), None, Action.AUDIT))
                if "syscall" in item:
                    for j, name in enumerate(self.string_list(item["syscall"], f"{here}.syscall") or ()):
                        if name not in SYSCALLS:
                            self.problem(item["syscall"], f"{here}.syscall[{j}]",
                                         f"unknown syscall {name!r} (not in the KubeArmor CRD's list)")
                if object_key is not None and object_key in item:
                    raw = self.string(item[object_key], f"{here}.{object_key}")
                    if raw is not None:
                        self.path(item[object_key], f"{here}.{object_key}", directory=raw.endswith("/"))
                if "recursive" in item:
                    self.boolean(item["recursive"], f"{here}.recursive")
                if "fromSource" in item:
                    self.syscall_sources(item["fromSource"], f"{here}.fromSource")
        if count:
            self.warn(where, "not monitored: warden has no syscall hook; KubeArmor only audits syscalls, "
                             "it never blocks them")

    def syscall_sources(self, node: Node, where: str) -> None:
        for i, item_node in enumerate(self.sequence(node, where)):
            here = f"{where}[{i}]"
            item = self.mapping(item_node, here, frozenset({"path", "dir", "recursive"}))
            if item is None:
                continue
            if ("path" in item) == ("dir" in item):
                self.problem(item_node, here, "give exactly one of path and dir")
            for key in ("path", "dir"):
                # The CRD's MatchSyscallPathType: a file or a directory path, either key.
                raw = self.string(item[key], f"{here}.{key}") if key in item else None
                if raw is not None:
                    self.path(item[key], f"{here}.{key}", directory=raw.endswith("/"))
            if "recursive" in item:
                self.boolean(item["recursive"], f"{here}.recursive")

    def presets(self, node: Node | None, where: str, outer: _Defaults) -> tuple[PresetMatch, ...]:
        """KubeArmor's presets (filelessExec, protectEnv, exec, protectProc) are separate BPF programs in
        KubeArmor (KubeArmor/presets/, KubeArmor/BPF/filelessexec.bpf.c). filelessExec is enforced, with
        Block or Audit (KubeArmor's two; an Allow means nothing there and is refused). warden has no
        program for the others: a Block or Allow one is refused (ignoring it would let through what it
        stops), an Audit one is accepted and warned about (nothing is audited)."""
        if node is None:
            return ()
        out: list[PresetMatch] = []
        for i, item_node in enumerate(self.sequence(node, where)):
            here = f"{where}[{i}]"
            item = self.mapping(item_node, here, frozenset({"name", "action"}), required=("name",))
            if item is None or "name" not in item:
                continue
            name = self.string(item["name"], f"{here}.name")
            defaults = self.alert_defaults(item, here, outer)
            action = defaults.action
            if name is not None and name not in PRESETS:
                self.problem(item["name"], f"{here}.name",
                             f"unknown preset {name!r}; KubeArmor has {', '.join(sorted(PRESETS))}")
            elif name in ENFORCED_PRESETS and action is Action.ALLOW:
                self.problem(item["name"], f"{here}.action",
                             f"the preset {name!r} takes Block or Audit (KubeArmor's preset has no Allow)")
            elif name in ENFORCED_PRESETS:
                out.append(PresetMatch(name, action, defaults.alert()))
            elif name is not None and action is not Action.AUDIT:
                self.problem(item["name"], f"{here}.name",
                             f"the preset {name!r} cannot be enforced (warden has no BPF program for it), and "
                             f"ignoring a {action} preset would let through what it stops")
            elif name is not None:
                self.warn(f"{here} {name}", "not audited: warden has no BPF program for this preset")
        return tuple(out)

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
                names = container_name_list(value)
                if names is not None:
                    # KubeArmor's Kubernetes-mode list (exact names; "" and "[]": every container of the
                    # pod), read as KubeArmor reads it. A name that is no container name (a regex, say)
                    # would silently select nothing: refused.
                    for name in names:
                        if _CONTAINER_NAME.fullmatch(name) is None:
                            self.problem(key_node, f"{where}.{key}",
                                         f"{name!r} in the container list {value!r} is not a container name "
                                         f"(a bracketed list names containers exactly; for a regex, drop the "
                                         f"brackets)")
                            ok = False
                    labels[key] = value
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

    def section(self, node: Node | None, where: str, rule_lists: frozenset[str], *,
                alert: frozenset[str] = _ALERT_FIELDS) -> dict[str, Node] | None:
        if node is None:
            return None
        return self.mapping(node, where, rule_lists | alert)

    def path_section(self, node: Node | None, where: str, outer: _Defaults, *,
                     file: bool) -> tuple[tuple[PathMatch, ...], tuple[PatternMatch, ...]]:
        section = self.section(node, where, frozenset({"matchPaths", "matchDirectories", "matchPatterns"}))
        if section is None:
            return (), ()
        defaults = self.alert_defaults(section, where, outer)
        flags = frozenset({"ownerOnly", "fromSource", "pts", "readOnly"} if file
                          else {"ownerOnly", "fromSource", "pts"})
        rules: list[PathMatch] = []
        patterns: list[PatternMatch] = []
        for i, item in enumerate(self.sequence(section["matchPaths"], f"{where}.matchPaths")
                                 if "matchPaths" in section else []):
            here = f"{where}.matchPaths[{i}]"
            if file:
                rules.extend(self.path_rule(item, here, defaults, "path", flags, directory=False))
            else:  # process: the executable's path, or its name (execname, compiled into patterns)
                rules.extend(self.path_rule(item, here, defaults, "path", flags | {"execname", "allowedArgs"},
                                            directory=False, by_name=patterns))
        for i, item in enumerate(self.sequence(section["matchDirectories"], f"{where}.matchDirectories")
                                 if "matchDirectories" in section else []):
            here = f"{where}.matchDirectories[{i}]"
            rules.extend(self.path_rule(item, here, defaults, "dir", flags | {"recursive"}, directory=True))
        for i, item in enumerate(self.sequence(section["matchPatterns"], f"{where}.matchPatterns")
                                 if "matchPatterns" in section else []):
            pattern = self.pattern_rule(item, f"{where}.matchPatterns[{i}]", defaults, file=file)
            if pattern is not None:
                patterns.append(pattern)
        return tuple(rules), tuple(patterns)

    def path_rule(self, node: Node, where: str, outer: _Defaults, key: str, flags: frozenset[str], *,
                  directory: bool, by_name: list[PatternMatch] | None = None) -> list[PathMatch]:
        """One matchPaths or matchDirectories rule. With `by_name` (process matchPaths), the rule may give
        `execname` instead of `path`: its patterns are appended to `by_name`, and no PathMatch returned."""
        item = self.mapping(node, where, flags | {key} | _ALERT_FIELDS,
                            required=() if by_name is not None else (key,))
        if item is None:
            return []
        if by_name is not None and ("execname" in item) == (key in item):
            # The CRD makes neither required; a rule needs exactly one object.
            self.problem(node, f"{where}.{key}", "give exactly one of path and execname")
            return []
        path = self.path(item[key], f"{where}.{key}", directory=directory) if key in item else None
        defaults = self.alert_defaults(item, where, outer)
        owner_only = self.flag(item, "ownerOnly", where)
        read_only = self.flag(item, "readOnly", where)
        recursive = self.flag(item, "recursive", where)
        sources = self.sources(item, where, required=False)
        narrowing_ok = self.narrowing_fields(item, where, defaults.action)
        if "execname" in item and by_name is not None:
            patterns = self.execname_patterns(item, where, defaults, owner_only)
            if patterns is not None and sources is not None and narrowing_ok:
                by_name.extend(patterns)
            return []
        if path is None or sources is None or None in (owner_only, read_only, recursive) or not narrowing_ok:
            return []
        kind = PathKind.EXACT if not directory else PathKind.DIR_RECURSIVE if recursive else PathKind.DIR
        return [PathMatch(path, kind, bool(read_only), bool(owner_only), sources, defaults.action,
                          defaults.alert())]

    def narrowing_fields(self, item: Mapping[str, Node], where: str, action: Action) -> bool:
        """`pts: true` (only processes with a controlling terminal) and `allowedArgs` (KubeArmor: only
        executions with other arguments) narrow a rule; warden cannot check either. On a Block or Audit
        rule the rule then covers more than written (warned); on an Allow rule it would permit more than
        written, so it is refused. False after a problem."""
        ok = True
        narrowed: list[str] = []
        if "pts" in item:
            pts = self.boolean(item["pts"], f"{where}.pts")
            ok = ok and pts is not None
            if pts:
                narrowed.append("pts")
        if "allowedArgs" in item:
            args = self.string_list(item["allowedArgs"], f"{where}.allowedArgs")
            ok = ok and args is not None
            if args is not None and len(args) > 20:
                self.problem(item["allowedArgs"], f"{where}.allowedArgs", "at most 20 arguments (CRD maxItems)")
                ok = False
            narrowed.append("allowedArgs")
        for key in narrowed:
            if action is Action.ALLOW:
                self.problem(item[key], f"{where}.{key}",
                             f"{key} makes an Allow rule depend on the {_NARROWING_WHY[key]}, which warden "
                             f"cannot check; ignoring it would allow more than written")
                ok = False
            else:
                self.warn(f"{where}.{key}", f"the {action} applies whatever the {_NARROWING_WHY[key]}: the "
                                            f"rule covers more than written, never less")
        return ok

    def execname_patterns(self, item: Mapping[str, Node], where: str, defaults: _Defaults,
                          owner_only: bool | None) -> tuple[PatternMatch, ...] | None:
        """`execname`: the executable's name, at any path (KubeArmor's BPF enforcer compares the executed
        file's d_name; the CRD pattern is ^[^/]+$). That is the set of paths whose last component is the
        name: the process patterns `/NAME` and `/**/NAME` (a whole-component `**` needs one byte, so the
        second does not match `/NAME` itself), with the glob's special characters in NAME escaped. One
        pattern `/{,**/}NAME` would also match `//NAME` (the `**` inside a group may be empty). Patterns
        carry no fromSource, so `fromSource` on an execname rule is refused, never dropped. None after a
        problem."""
        node = item["execname"]
        name = self.string(node, f"{where}.execname")
        if name is None:
            return None
        if _EXECNAME.fullmatch(name) is None or name in (".", ".."):
            self.problem(node, f"{where}.execname", f"{name!r} is not an executable name (no '/', not '.' or '..')")
            return None
        if "fromSource" in item:
            self.problem(item["fromSource"], f"{where}.fromSource",
                         f"execname {name!r} is enforced as a pattern, and patterns have no fromSource; "
                         f"ignoring it would apply the rule to every process (give the absolute path with path)")
            return None
        escaped = "".join(f"\\{c}" if c in _GLOB_SPECIAL else c for c in name)
        texts = (f"/{escaped}", f"/**/{escaped}")
        for text in texts:
            try:
                parse(text)
            except PatternError as exc:
                self.problem(node, f"{where}.execname", f"execname enforced as a pattern: {exc}")
                return None
        if owner_only is None:
            return None
        return tuple(PatternMatch(text, False, owner_only, defaults.action, defaults.alert()) for text in texts)

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
        section = self.section(node, where, frozenset({"matchProtocols", "matchDNSQueries"}))
        if section is None:
            return ()
        defaults = self.alert_defaults(section, where, outer)
        if "matchDNSQueries" in section:
            self.dns_queries(section["matchDNSQueries"], f"{where}.matchDNSQueries", defaults, host=host)
        rules: list[ProtocolMatch] = []
        items = self.sequence(section["matchProtocols"], f"{where}.matchProtocols") \
            if "matchProtocols" in section else []
        for i, item_node in enumerate(items):
            here = f"{where}.matchProtocols[{i}]"
            required = ("protocol", "fromSource") if host else ("protocol",)
            item = self.mapping(item_node, here, frozenset({"protocol", "fromSource", "pts"}) | _ALERT_FIELDS,
                                required=required)
            if item is None:
                continue
            narrowing_ok = self.narrowing_fields(item, here, self.alert_defaults(item, here, defaults).action)
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
            if protocol is not None and sources is not None and narrowing_ok:
                rules.append(ProtocolMatch(protocol, sources, rule_defaults.action, rule_defaults.alert()))
        return tuple(rules)

    def dns_queries(self, node: Node, where: str, outer: _Defaults, *, host: bool) -> None:
        """`matchDNSQueries` {domain, fromSource}: KubeArmor parses DNS queries in socket_sendmsg; warden has
        no such program. Block and Allow rules are refused (ignoring them would let the queries through,
        or, for Allow, drop a whitelist); Audit rules are accepted and warned about (nothing is audited)."""
        audited = 0
        for i, item_node in enumerate(self.sequence(node, where)):
            here = f"{where}[{i}]"
            item = self.mapping(item_node, here, frozenset({"domain", "fromSource"}) | _ALERT_FIELDS,
                                required=("domain",))
            if item is None or "domain" not in item:
                continue
            domain = self.string(item["domain"], f"{here}.domain")
            action = self.alert_defaults(item, here, outer).action
            self.sources(item, here, required=False)
            if domain is None:
                continue
            if action is Action.AUDIT:
                audited += 1
            else:
                self.problem(item["domain"], f"{here}.domain",
                             f"DNS query rules cannot be enforced (warden has no DNS hook), and ignoring a {action} "
                             f"rule for {domain!r} would let through what it stops")
        if audited:
            self.warn(where, "not audited: warden has no DNS hook")

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

