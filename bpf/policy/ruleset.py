"""RuleSet: the compiled, canonical rule table for one scope, as the BPF engine loads it.

A RuleSet is what gets measured and reported as "the enforced policy", so its serialisation is canonical:
`to_json()` gives the same bytes for the same rules (sorted keys, fixed separators, ASCII only, rules in
a fixed order), and `digest` is "sha256:<hex>" of those bytes. `from_json()` reads it back, validating
as strictly as the compiler does, so the engine never has to re-parse YAML.

JSON shape (format "coco-warden/ruleset/v1"):
    {"capabilities": [{"action", "alert", "capability", "source"}],
     "file": [{"action", "alert", "kind", "owner_only", "path", "read_only", "source"}],
     "format": "coco-warden/ruleset/v1",
     "network": [{"action", "alert", "protocol", "source"}],
     "postures": {"capabilities", "file", "network", "process"},   # null, "audit" or "block"
     "process": [{"action", "alert", "kind", "owner_only", "path", "source"}],
     "warnings": ["KIND NAME: accepted, not enforced as written: ...", ...]}   # sorted, one per policy
with "alert" = {"message", "policy", "severity", "tags"}. `source` is null for "any program". `warnings`
names what the scope's policies say that is not enforced as written (bpf.policy.model.Policy.warnings): it
is part of the digest, so a measured RuleSet also says what it does not enforce. The key is present only
when there is a warning (still one encoding per RuleSet), so a RuleSet without warnings keeps the digest
it had before warnings existed.
A RuleSet with enforced presets (filelessExec) has "presets": [{"action", "alert", "name"}] (present only
when not empty). A RuleSet with matchPatterns rules also has "file_patterns": [{"action", "alert",
"owner_only", "pattern", "read_only"}] and "process_patterns": [{"action", "alert", "owner_only",
"pattern"}] (each present only when not empty, so RuleSets without patterns keep their digests), and
"automata": the digest of the automata those patterns compile to (bpf.policy.glob.compile_automata), so
the measured RuleSet names the exact tables the kernel walks.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any, Final

from bpf.policy.glob import Automaton, Outcome, PatternEntry, Verdict, automata_digest, compile_automata, parse
from bpf.policy.limits import MAX_RULES_PER_SCOPE
from bpf.policy.model import CAPABILITIES, ENFORCED_PRESETS, PROTOCOLS, Action, PathKind, normalise_path

FORMAT: Final = "coco-warden/ruleset/v1"


class Posture(enum.StrEnum):
    """What happens to an operation no rule matches, in a category that has Allow rules."""

    AUDIT = "audit"
    BLOCK = "block"


@dataclass(frozen=True)
class RuleAlert:
    """Alert metadata of the rule that won (see bpf.policy.compiler for the conflict rule): the policy
    name and its AlertFields. The kernel knows it by id (bpf.kernel.maps.alert_id)."""

    policy: str
    severity: int | None
    tags: tuple[str, ...]
    message: str | None


@dataclass(frozen=True)
class FileRule:
    path: str  # normalised; ends with "/" for the directory kinds
    kind: PathKind
    read_only: bool
    owner_only: bool
    source: str | None  # the fromSource program, None for any program
    action: Action
    alert: RuleAlert


@dataclass(frozen=True)
class ProcessRule:
    path: str
    kind: PathKind
    owner_only: bool
    source: str | None
    action: Action
    alert: RuleAlert


@dataclass(frozen=True)
class PatternRule:
    """A matchPatterns rule (file or process; read_only is False for process rules)."""

    pattern: str  # an AppArmor glob, as written (bpf.policy.glob)
    read_only: bool
    owner_only: bool
    action: Action
    alert: RuleAlert


_ACTION_OUTCOME: Final = {Action.ALLOW: 1, Action.AUDIT: 2, Action.BLOCK: 3}


def pattern_verdict(rule: PatternRule, number: int) -> Verdict:
    """What a path matching `rule` alone gets, per operation (write | owner << 1), as bpf/progs decide()
    treats a matched rule: an Allow passes when its readOnly/ownerOnly hold, else the posture decides; a
    Block or Audit with readOnly/ownerOnly passes what those flags exempt. `number` is the rule's 1-based
    position, standing for its alert (the kernel encoder turns it into the alert id)."""
    outcomes = []
    for op in range(4):
        write, owner = bool(op & 1), bool(op & 2)
        ok = (not rule.read_only or not write) and (not rule.owner_only or owner)
        if rule.action is Action.ALLOW:
            outcomes.append(Outcome(1, number) if ok else Outcome(0, 0))
        elif (rule.read_only or rule.owner_only) and ok:
            outcomes.append(Outcome(1, number))
        else:
            outcomes.append(Outcome(_ACTION_OUTCOME[rule.action], number))
    return Verdict((outcomes[0], outcomes[1], outcomes[2], outcomes[3]), rule.owner_only)


def pattern_automata(rules: tuple[PatternRule, ...]) -> tuple[Automaton, ...]:
    """The automata for one category's pattern rules (raises glob.AutomatonLimitError past the limits).
    Rules are in canonical order, so equal outcomes resolve to the same rule whatever the input order."""
    return compile_automata([PatternEntry(parse(r.pattern), pattern_verdict(r, i + 1))
                             for i, r in enumerate(rules)])


@dataclass(frozen=True)
class NetworkRule:
    protocol: str  # lowercase, bpf.policy.model.PROTOCOLS
    source: str | None
    action: Action
    alert: RuleAlert


@dataclass(frozen=True)
class CapabilityRule:
    capability: str  # lowercase bare name, bpf.policy.model.CAPABILITIES
    source: str | None
    action: Action
    alert: RuleAlert


@dataclass(frozen=True)
class PresetRule:
    name: str  # one of bpf.policy.reader.ENFORCED_PRESETS
    action: Action  # Block or Audit
    alert: RuleAlert


@dataclass(frozen=True)
class CategoryPostures:
    """Default posture per category: None when the scope has no Allow rule in that category."""

    file: Posture | None = None
    process: Posture | None = None
    network: Posture | None = None
    capabilities: Posture | None = None


class RuleSetFormatError(ValueError):
    """RuleSet JSON that this version cannot load (wrong format, shape or values)."""


class RuleSetOrderError(ValueError):
    """A RuleSet was built with rules out of canonical order or with two rules for one key."""


@dataclass(frozen=True)
class RuleSet:
    file: tuple[FileRule, ...] = ()
    process: tuple[ProcessRule, ...] = ()
    network: tuple[NetworkRule, ...] = ()
    capabilities: tuple[CapabilityRule, ...] = ()
    postures: CategoryPostures = CategoryPostures()
    file_patterns: tuple[PatternRule, ...] = ()
    process_patterns: tuple[PatternRule, ...] = ()
    warnings: tuple[str, ...] = ()  # sorted, unique: one line per policy with accepted-not-enforced fields
    presets: tuple[PresetRule, ...] = ()

    def __post_init__(self) -> None:
        # Canonical means one rule per conflict key, in key order. compile() builds it that way; checking
        # here keeps the invariant for every RuleSet, however it was made.
        for category, keys in (("file", [file_rule_key(r) for r in self.file]),
                               ("process", [process_rule_key(r) for r in self.process]),
                               ("network", [network_rule_key(r) for r in self.network]),
                               ("capabilities", [capability_rule_key(r) for r in self.capabilities]),
                               ("file_patterns", [pattern_rule_key(r) for r in self.file_patterns]),
                               ("process_patterns", [pattern_rule_key(r) for r in self.process_patterns]),
                               ("presets", [preset_rule_key(r) for r in self.presets])):
            if not _strictly_increasing(keys):
                raise RuleSetOrderError(f"{category}: rules not in canonical order, or two rules with one key")
        if not _strictly_increasing(list(self.warnings)):
            raise RuleSetOrderError("warnings: not sorted, or one given twice")

    @property
    def rule_count(self) -> int:
        return (len(self.file) + len(self.process) + len(self.network) + len(self.capabilities)
                + len(self.file_patterns) + len(self.process_patterns) + len(self.presets))

    @functools.cached_property
    def file_automata(self) -> tuple[Automaton, ...]:
        return pattern_automata(self.file_patterns)

    @functools.cached_property
    def process_automata(self) -> tuple[Automaton, ...]:
        return pattern_automata(self.process_patterns)

    @functools.cached_property
    def automata_digest(self) -> str | None:
        """sha256 over the file automata, then the process automata; None without patterns."""
        if not self.file_patterns and not self.process_patterns:
            return None
        return automata_digest((*self.file_automata, *self.process_automata))

    def to_json(self) -> str:
        return _canonical_json(self)

    @functools.cached_property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_json().encode("ascii")).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> RuleSet:
        """Load a RuleSet written by to_json(); refuses anything to_json() would not have written."""
        try:
            data = json.loads(text)
            ruleset = _ruleset_from_data(data)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            if isinstance(exc, RuleSetFormatError):
                raise
            raise RuleSetFormatError(f"not a {FORMAT} document: {type(exc).__name__}: {exc}") from None
        if ruleset.to_json() != text:
            # Order, duplicates, whitespace or normalisation differ: a canonical document round-trips.
            raise RuleSetFormatError("not in canonical form (as written by RuleSet.to_json)")
        return ruleset


# --------------------------------------------------------------------------------------------------------
# Canonical order and serialisation


def _source_key(source: str | None) -> tuple[bool, str]:
    return (source is not None, source or "")


def file_rule_key(rule: FileRule) -> tuple[str, str, tuple[bool, str]]:
    return (rule.path, rule.kind.value, _source_key(rule.source))


def process_rule_key(rule: ProcessRule) -> tuple[str, str, tuple[bool, str]]:
    return (rule.path, rule.kind.value, _source_key(rule.source))


def pattern_rule_key(rule: PatternRule) -> tuple[str]:
    return (rule.pattern,)


def network_rule_key(rule: NetworkRule) -> tuple[str, tuple[bool, str]]:
    return (rule.protocol, _source_key(rule.source))


def capability_rule_key(rule: CapabilityRule) -> tuple[str, tuple[bool, str]]:
    return (rule.capability, _source_key(rule.source))


def preset_rule_key(rule: PresetRule) -> tuple[str]:
    return (rule.name,)


def _alert_data(alert: RuleAlert) -> dict[str, Any]:
    return {"policy": alert.policy, "severity": alert.severity, "tags": list(alert.tags),
            "message": alert.message}


def _canonical_json(ruleset: RuleSet) -> str:
    data: dict[str, Any] = {
        "format": FORMAT,
        "file": [{"path": r.path, "kind": r.kind.value, "read_only": r.read_only, "owner_only": r.owner_only,
                  "source": r.source, "action": r.action.value, "alert": _alert_data(r.alert)}
                 for r in ruleset.file],
        "process": [{"path": r.path, "kind": r.kind.value, "owner_only": r.owner_only, "source": r.source,
                     "action": r.action.value, "alert": _alert_data(r.alert)} for r in ruleset.process],
        "network": [{"protocol": r.protocol, "source": r.source, "action": r.action.value,
                     "alert": _alert_data(r.alert)} for r in ruleset.network],
        "capabilities": [{"capability": r.capability, "source": r.source, "action": r.action.value,
                          "alert": _alert_data(r.alert)} for r in ruleset.capabilities],
        "postures": {name: getattr(ruleset.postures, name) and getattr(ruleset.postures, name).value
                     for name in ("file", "process", "network", "capabilities")},
    }
    if ruleset.warnings:
        data["warnings"] = list(ruleset.warnings)
    if ruleset.file_patterns:
        data["file_patterns"] = [{"pattern": r.pattern, "read_only": r.read_only, "owner_only": r.owner_only,
                                  "action": r.action.value, "alert": _alert_data(r.alert)}
                                 for r in ruleset.file_patterns]
    if ruleset.process_patterns:
        data["process_patterns"] = [{"pattern": r.pattern, "owner_only": r.owner_only, "action": r.action.value,
                                     "alert": _alert_data(r.alert)} for r in ruleset.process_patterns]
    if ruleset.automata_digest is not None:
        data["automata"] = ruleset.automata_digest
    if ruleset.presets:
        data["presets"] = [{"name": r.name, "action": r.action.value, "alert": _alert_data(r.alert)}
                           for r in ruleset.presets]
    # ensure_ascii: the bytes are plain ASCII whatever the paths and messages hold, so there is exactly one
    # encoding of any RuleSet.
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


# --------------------------------------------------------------------------------------------------------
# Loading


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise RuleSetFormatError(message)


def _keys(data: Any, keys: set[str], where: str) -> dict[str, Any]:
    _expect(isinstance(data, dict) and set(data) == keys,
            f"{where}: expected exactly the keys {sorted(keys)}")
    result: dict[str, Any] = data
    return result


def _text(value: Any, where: str) -> str:
    _expect(isinstance(value, str), f"{where}: expected a string")
    text: str = value
    return text


def _bool(value: Any, where: str) -> bool:
    _expect(isinstance(value, bool), f"{where}: expected true or false")
    return bool(value)


def _path(value: Any, kind: PathKind, where: str) -> str:
    raw = _text(value, where)
    normalised, error = normalise_path(raw, directory=kind is not PathKind.EXACT)
    _expect(error is None and normalised == raw, f"{where}: {error or 'not normalised'}")
    return raw


def _source(value: Any, where: str) -> str | None:
    return None if value is None else _path(value, PathKind.EXACT, where)


def _alert(value: Any, where: str) -> RuleAlert:
    data = _keys(value, {"policy", "severity", "tags", "message"}, where)
    severity = data["severity"]
    _expect(severity is None or (type(severity) is int and 1 <= severity <= 10), f"{where}.severity: 1..10")
    tags = data["tags"]
    _expect(isinstance(tags, list) and all(isinstance(t, str) for t in tags), f"{where}.tags: strings")
    message = data["message"]
    return RuleAlert(_text(data["policy"], f"{where}.policy"), severity, tuple(tags),
                     None if message is None else _text(message, f"{where}.message"))


def _strictly_increasing(keys: list[Any]) -> bool:
    return all(a < b for a, b in itertools.pairwise(keys))


def _ruleset_from_data(data: Any) -> RuleSet:
    optional = ({"warnings", "file_patterns", "process_patterns", "automata", "presets"} & set(data)
                if isinstance(data, dict) else set())
    top = _keys(data, {"format", "file", "process", "network", "capabilities", "postures"} | optional, "ruleset")
    _expect(top["format"] == FORMAT, f"format: expected {FORMAT!r}")
    for category in ("file", "process", "network", "capabilities"):
        _expect(isinstance(top[category], list), f"{category}: expected a list")
    files = []
    for i, item in enumerate(top["file"]):
        where = f"file[{i}]"
        r = _keys(item, {"path", "kind", "read_only", "owner_only", "source", "action", "alert"}, where)
        kind = PathKind(r["kind"])
        files.append(FileRule(_path(r["path"], kind, where), kind, _bool(r["read_only"], where),
                              _bool(r["owner_only"], where), _source(r["source"], where), Action(r["action"]),
                              _alert(r["alert"], f"{where}.alert")))
    processes = []
    for i, item in enumerate(top["process"]):
        where = f"process[{i}]"
        r = _keys(item, {"path", "kind", "owner_only", "source", "action", "alert"}, where)
        kind = PathKind(r["kind"])
        processes.append(ProcessRule(_path(r["path"], kind, where), kind, _bool(r["owner_only"], where),
                                     _source(r["source"], where), Action(r["action"]),
                                     _alert(r["alert"], f"{where}.alert")))
    networks = []
    for i, item in enumerate(top["network"]):
        where = f"network[{i}]"
        r = _keys(item, {"protocol", "source", "action", "alert"}, where)
        _expect(r["protocol"] in PROTOCOLS, f"{where}.protocol: unknown")
        networks.append(NetworkRule(r["protocol"], _source(r["source"], where), Action(r["action"]),
                                    _alert(r["alert"], f"{where}.alert")))
    capabilities = []
    for i, item in enumerate(top["capabilities"]):
        where = f"capabilities[{i}]"
        r = _keys(item, {"capability", "source", "action", "alert"}, where)
        _expect(r["capability"] in CAPABILITIES, f"{where}.capability: unknown")
        capabilities.append(CapabilityRule(r["capability"], _source(r["source"], where), Action(r["action"]),
                                           _alert(r["alert"], f"{where}.alert")))
    patterns: dict[str, list[PatternRule]] = {"file_patterns": [], "process_patterns": []}
    for category, fields in (("file_patterns", {"pattern", "read_only", "owner_only", "action", "alert"}),
                             ("process_patterns", {"pattern", "owner_only", "action", "alert"})):
        items = top.get(category, [])
        _expect(isinstance(items, list), f"{category}: expected a list")
        for i, item in enumerate(items):
            where = f"{category}[{i}]"
            r = _keys(item, fields, where)
            pattern = _text(r["pattern"], f"{where}.pattern")
            try:
                parse(pattern)
            except ValueError as exc:
                raise RuleSetFormatError(f"{where}.pattern: {exc}") from None
            patterns[category].append(PatternRule(
                pattern, _bool(r["read_only"], where) if "read_only" in r else False,
                _bool(r["owner_only"], where), Action(r["action"]), _alert(r["alert"], f"{where}.alert")))
    presets = []
    items = top.get("presets", [])
    _expect(isinstance(items, list), "presets: expected a list")
    for i, item in enumerate(items):
        where = f"presets[{i}]"
        r = _keys(item, {"name", "action", "alert"}, where)
        _expect(r["name"] in ENFORCED_PRESETS, f"{where}.name: not an enforced preset")
        _expect(r["action"] in (Action.BLOCK.value, Action.AUDIT.value), f"{where}.action: Block or Audit")
        presets.append(PresetRule(r["name"], Action(r["action"]), _alert(r["alert"], f"{where}.alert")))
    p = _keys(top["postures"], {"file", "process", "network", "capabilities"}, "postures")
    postures = CategoryPostures(**{k: None if v is None else Posture(v) for k, v in p.items()})
    warnings = top.get("warnings", [])
    _expect(isinstance(warnings, list) and all(isinstance(w, str) for w in warnings), "warnings: strings")
    try:
        ruleset = RuleSet(tuple(files), tuple(processes), tuple(networks), tuple(capabilities), postures,
                          tuple(patterns["file_patterns"]), tuple(patterns["process_patterns"]),
                          warnings=tuple(warnings), presets=tuple(presets))
    except RuleSetOrderError as exc:
        raise RuleSetFormatError(str(exc)) from None
    _expect(ruleset.rule_count <= MAX_RULES_PER_SCOPE, f"more than {MAX_RULES_PER_SCOPE} rules")
    return ruleset
