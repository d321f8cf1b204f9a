"""Policy text -> policies: bounded YAML loading, one DocumentReader per document, unique names.

The text is untrusted. It is scanned and parsed by libyaml (PyYAML's C binding, `yaml._yaml.CParser`, the
parser `yaml.CSafeLoader` uses), the same C code go-yaml was ported from, so text KubeArmor's apiserver reads
(e.g. a tab before a comment, which pure-Python PyYAML refuses) reads here too. The nodes are composed in
Python from libyaml's events (`yaml.composer.Composer` with the safe resolver) so that the limits hold and
every node keeps its line: anchors and aliases are refused outright (no alias bombs), nesting depth and node
count are bounded, and a text over `MAX_TEXT_BYTES` (1 MiB) is refused before it is parsed. A PyYAML built
without libyaml is refused with one clear problem (`make setup` checks for it), never replaced silently by
the pure-Python scanner, which reads some valid documents differently. Duplicate mapping keys: see
bpf.policy.nodes.
`parse_policy_text` raises `PolicyError` listing every problem as `FILE:LINE: field: message`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, cast

import yaml
import yaml.reader
from yaml.composer import Composer, ComposerError
from yaml.error import Mark
from yaml.events import AliasEvent, CollectionStartEvent, Event, ScalarEvent
from yaml.nodes import Node
from yaml.resolver import Resolver

from bpf.policy.model import Policy, PolicyError, PolicyKind, Problem
from bpf.policy.nodes import is_null
from bpf.policy.reader import DocumentReader

# Refusal limits for untrusted YAML. 1 MiB is far more than any real bundle; the node and depth bounds keep
# parsing linear and the (recursive) composer far from Python's recursion limit.
MAX_TEXT_BYTES: Final = 1 << 20
MAX_YAML_NODES: Final = 100_000
MAX_YAML_DEPTH: Final = 64

# libyaml is part of PyYAML's binary wheels and of Debian's python3-yaml. Without it the loader class below
# has no parser and parse_text refuses every text with LIBYAML_MISSING.
HAVE_LIBYAML: Final = bool(getattr(yaml, "__with_libyaml__", False))
if HAVE_LIBYAML:
    from yaml._yaml import CParser
else:  # pragma: no cover - a broken installation; tests/test_policy_compat.py checks the refusal
    CParser = object  # type: ignore[misc,assignment]

LIBYAML_MISSING: Final = ("PyYAML has no libyaml (yaml.__with_libyaml__ is False); warden reads policies "
                          "with libyaml only (run `make setup`, or install a PyYAML wheel built with it)")


def parse_policy_text(text: str, *, origin: str) -> tuple[Policy, ...]:
    """Parse every YAML document in `text` (empty documents are skipped). `origin` names it in problems."""
    problems: list[Problem] = []
    policies = parse_text(text, origin, problems)
    problems.extend(duplicate_problems(policies))
    if problems:
        raise PolicyError(problems)
    return policies


def too_large_message() -> str:
    return f"larger than {MAX_TEXT_BYTES} bytes (1 MiB), the limit for one policy text; refused unparsed"


def duplicate_problems(policies: Sequence[Policy]) -> list[Problem]:
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


class BoundedCSafeLoader(Composer, Resolver, CParser):
    """libyaml events, composed into nodes in Python (for line numbers and limits) with the safe resolver
    (the tags yaml.CSafeLoader gives); refuses aliases and anchors, bounds size and depth. Composer comes
    first in the MRO so that its compose_node (bounded below), not CParser's C composer, builds the nodes."""

    def __init__(self, stream: str) -> None:
        CParser.__init__(self, stream)
        Composer.__init__(self)
        Resolver.__init__(self)
        self._node_count = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = cast(Event, self.peek_event())
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


def parse_text(text: str, origin: str, problems: list[Problem]) -> tuple[Policy, ...]:
    found: list[Problem] = []
    policies = _parse_text_unsorted(text, origin, found)
    problems.extend(sorted(found, key=lambda p: p.line))  # stable: same-line problems keep their order
    return policies


def _parse_text_unsorted(text: str, origin: str, problems: list[Problem]) -> tuple[Policy, ...]:
    # Cheap checks first: len(text) is a lower bound on the UTF-8 size.
    if len(text) > MAX_TEXT_BYTES:
        problems.append(Problem(origin, 0, "file", too_large_message()))
        return ()
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        problems.append(Problem(origin, 0, "file", f"not valid Unicode (character offset {exc.start})"))
        return ()
    if size > MAX_TEXT_BYTES:
        problems.append(Problem(origin, 0, "file", too_large_message()))
        return ()

    if not HAVE_LIBYAML:
        problems.append(Problem(origin, 0, "yaml", LIBYAML_MISSING))
        return ()
    policies: list[Policy] = []
    try:
        loader = BoundedCSafeLoader(text)
    except yaml.reader.ReaderError as exc:
        problems.append(_reader_problem(origin, text, exc))
        return ()
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None or is_null(node):
                continue  # an empty document, e.g. after a trailing '---'
            policy = DocumentReader(origin, problems).read(node)
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
    # ReaderError is not a MarkedYAMLError: it has a position, not a line. libyaml's position is a byte
    # offset into the UTF-8 text (the text was checked to encode above).
    line = text.encode("utf-8")[:max(error.position, 0)].count(b"\n") + 1
    character = error.character if isinstance(error.character, int) else 0
    return Problem(origin, line, "yaml", f"unacceptable character U+{character:04X}: {error.reason}")
