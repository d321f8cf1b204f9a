"""Typed access to composed YAML nodes, reporting every problem with its line.

`NodeReader` is what the KubeArmor document reader (bpf.policy.reader) is built on: each accessor returns
the value, or None after recording a `Problem` (FILE:LINE: field: message) saying what was expected and
what was found, so one pass reports every problem of a document. Only plain YAML is accepted: strings,
integers and booleans by their resolved tags (an unquoted `yes` is a boolean, not a string, and is
reported as such), mappings and lists by theirs (no `!!set`, `!!omap` or application tags).

Duplicate mapping keys: YAML forbids them, yet go-yaml and `kubectl apply` keep the last value, so KubeArmor
reads such a policy as its last occurrence says. Warden reads a duplicate whose value is identical (same
tags and values, recursively; only the position differs) as the one entry it means, and refuses one whose
value differs, with both lines: which of two different values the author meant is exactly what a security
policy must not guess, and refusing is the safer reading of the same text.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TypeVar

from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bpf.policy.model import Problem

_E = TypeVar("_E", bound=enum.StrEnum)

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_CONSTRUCTOR = SafeConstructor()


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


def same_node(a: Node, b: Node) -> bool:
    """Whether two nodes say the same thing: same kind, tag and value, recursively (positions and scalar
    style ignored: 'a' and a are the same string)."""
    if type(a) is not type(b) or a.tag != b.tag:
        return False
    if isinstance(a, ScalarNode):
        return bool(a.value == b.value)
    if len(a.value) != len(b.value):
        return False
    if isinstance(a, MappingNode):
        return all(same_node(ka, kb) and same_node(va, vb)
                   for (ka, va), (kb, vb) in zip(a.value, b.value, strict=True))
    return all(same_node(x, y) for x, y in zip(a.value, b.value, strict=True))


def _duplicate_message(first: Node, again: Node) -> str | None:
    """None when a repeated key's value is the same as the first one's (the entry is read once), else why
    the duplicate is refused."""
    if same_node(first, again):
        return None
    return (f"duplicate key with a different value (first given at line {line_of(first)}); KubeArmor would "
            f"keep the last value, warden refuses to guess which one was meant")


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
    if node.tag != _STR and not node.style:  # plain: None from PyYAML, "" from libyaml events
        # YAML 1.1 reads yes/no/on/off, 1.0, 2024-01-01 as non-strings; quoting is the usual fix.
        described += f" ({node.value!r} unquoted; quote it for a string)"
    return described


class NodeReader:
    """Reads nodes of one YAML text (`origin`), appending every problem it finds to `problems`."""

    # Fields refused with a reason rather than as unknown: valid elsewhere, not accepted here.
    unsupported: Mapping[str, str] = {}

    def __init__(self, origin: str, problems: list[Problem]) -> None:
        self.origin = origin
        self.problems = problems

    def problem(self, node: Node | None, where: str, message: str) -> None:
        # The document itself has no dotted path; name it so that every problem line has a field.
        self.problems.append(Problem(self.origin, line_of(node) if node is not None else 0, where or "document",
                                     message))

    def mapping(self, node: Node, where: str, allowed: frozenset[str], required: Sequence[str] = (),
                hint: Mapping[str, str] | None = None) -> dict[str, Node] | None:
        """The mapping's entries (null values dropped, as Kubernetes treats them as unset), after refusing
        non-string keys, duplicate keys and unknown fields."""
        if not isinstance(node, MappingNode) or not _is_mapping(node):
            self.problem(node, where, f"must be a mapping, not {_describe(node)}")
            return None
        entries: dict[str, Node] = {}
        seen: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag != _STR:
                self.problem(key_node, where, f"keys must be strings, not {_describe(key_node)}")
                continue
            key = key_node.value
            child = f"{where}.{key}" if where else key
            if key in seen:
                why = _duplicate_message(seen[key], value_node)
                if why is not None:
                    self.problem(key_node, child, why)
                continue
            seen[key] = value_node
            if key not in allowed:
                why = self.unsupported.get(key)
                extra = (hint or {}).get(key)
                if why is not None:
                    self.problem(key_node, child, f"not supported: {why}")
                else:
                    self.problem(key_node, child, f"unknown field {key!r}" + (f" ({extra})" if extra else ""))
                continue
            if not is_null(value_node):
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
        values: dict[str, Node] = {}
        ok = True
        for key_node, value_node in node.value:
            key = self.string(key_node, where)
            if key is None:
                ok = False
                continue
            if key in values:
                why = _duplicate_message(values[key], value_node)
                if why is not None:
                    self.problem(key_node, f"{where}.{key}", why)
                    ok = False
                continue
            values[key] = value_node
            value = self.string(value_node, f"{where}.{key}")
            if value is None:
                ok = False
                continue
            result[key] = (key_node, value)
        return result if ok else None

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
