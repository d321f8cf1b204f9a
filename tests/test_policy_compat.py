"""KubeArmor compatibility of the policy reader (issue 17): what KubeArmor accepts reads here too, or is
refused or warned about with its reason; nothing is silently ignored or changed in meaning."""

from __future__ import annotations

import pytest

from bpf.policy import yaml_loader
from bpf.policy.model import PolicyError, Problem
from bpf.policy.yaml_loader import parse_policy_text

HEAD = ("apiVersion: security.kubearmor.com/v1\nkind: KubeArmorPolicy\nmetadata:\n  name: p\n"
        "spec:\n  selector:\n    matchLabels:\n      app: web\n")


def problems_of(text: str) -> tuple[Problem, ...]:
    with pytest.raises(PolicyError) as info:
        parse_policy_text(text, origin="t.yaml")
    assert info.value.problems
    return info.value.problems


# --------------------------------------------------------------------------------------------------------
# YAML: libyaml, as go-yaml reads it


def test_libyaml_is_what_reads_policies() -> None:
    assert yaml_loader.HAVE_LIBYAML
    assert issubclass(yaml_loader.BoundedCSafeLoader, yaml_loader.CParser)


def test_tab_before_a_comment_reads() -> None:
    # Legal YAML (a tab is white space before a comment) that pure-Python PyYAML's scanner refuses.
    text = HEAD + "  file:\n    matchPaths:\n    - path: /etc/shadow\t# the shadow file\n  action: Block\n"
    (policy,) = parse_policy_text(text, origin="t.yaml")
    assert policy.file[0].path == "/etc/shadow"


def test_line_numbers_survive_the_c_parser() -> None:
    text = HEAD + "  file:\n    matchPaths:\n    - path: relative\n"
    (problem,) = problems_of(text)
    assert (problem.line, problem.field) == (11, "spec.file.matchPaths[0].path")


def test_without_libyaml_every_text_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_loader, "HAVE_LIBYAML", False)
    (problem,) = problems_of(HEAD + "  file:\n    matchPaths:\n    - path: /a\n")
    assert (problem.line, problem.field) == (0, "yaml")
    assert "libyaml" in problem.message


def test_control_character_line_counted_in_bytes() -> None:
    # libyaml reports a byte offset; the line must still be right after multi-byte characters.
    (problem,) = problems_of("a: é\nb: ü\nc: \x07\n")
    assert (problem.line, problem.field) == (3, "yaml")
    assert "U+0007" in problem.message


# --------------------------------------------------------------------------------------------------------
# Duplicate mapping keys


def test_duplicate_key_with_identical_value_reads_once() -> None:
    text = HEAD + ("  file:\n    matchPaths:\n    - path: /etc/shadow\n      readOnly: true\n"
                   "      readOnly: true\n  action: Block\n  action: 'Block'\n")
    (policy,) = parse_policy_text(text, origin="t.yaml")
    assert len(policy.file) == 1 and policy.file[0].read_only


def test_duplicate_key_with_identical_collection_reads_once() -> None:
    rules = "    matchPaths:\n    - path: /a\n    - path: /b\n"
    text = HEAD + "  file:\n" + rules + rules
    (policy,) = parse_policy_text(text, origin="t.yaml")
    assert [m.path for m in policy.file] == ["/a", "/b"]


@pytest.mark.parametrize(("extra", "line", "field"), [
    ("  action: Block\n  action: Audit\n", 13, "spec.action"),
    ("  action: Block\n  action: Audit\n  action: Audit\n", 13, "spec.action"),
    ("    matchPaths:\n    - path: /c\n", 12, "spec.file.matchPaths"),
])
def test_duplicate_key_with_different_value_refused_with_both_lines(extra: str, line: int, field: str) -> None:
    text = HEAD + "  file:\n    matchPaths:\n    - path: /a\n" + extra
    problems = problems_of(text)
    assert problems[0].line == line and problems[0].field == field
    assert "different value (first given at line" in problems[0].message


def test_duplicate_label_with_different_value_refused() -> None:
    text = HEAD + "      app: db\n  file:\n    matchPaths:\n    - path: /a\n"
    (problem,) = problems_of(text)
    assert (problem.line, problem.field) == (9, "spec.selector.matchLabels.app")
    assert "first given at line 8" in problem.message
