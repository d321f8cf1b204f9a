"""KubeArmor compatibility of the policy reader (issue 17): what KubeArmor accepts reads here too, or is
refused or warned about with its reason; nothing is silently ignored or changed in meaning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bpf.policy import yaml_loader
from bpf.policy.compiler import AnyContainerScope, ContainerScope, HostScope, compile
from bpf.policy.files import load_policy_paths
from bpf.policy.glob import Verdict, combine
from bpf.policy.model import CONTAINER_NAME_LABEL, Action, Policy, PolicyError, Problem, Selector, container_name_list
from bpf.policy.ruleset import RuleSet, RuleSetFormatError, RuleSetOrderError
from bpf.policy.yaml_loader import parse_policy_text
from initdata.errors import ConfigError
from supervisor.cli import main as cli_main
from supervisor.config import parse_config
from supervisor.enforcement import policy_warnings

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


# --------------------------------------------------------------------------------------------------------
# kubearmor.io/container.name: KubeArmor's bracketed list and "" (every container of the pod)

COMPAT = Path(__file__).parent / "data" / "policies" / "compat"


def compat(name: str) -> Policy:
    (policy,) = load_policy_paths([COMPAT / f"{name}.yaml"])
    return policy


@pytest.mark.parametrize(("value", "names"), [
    ("[web-1, web-2]", ("web-1", "web-2")), ("[web-1,,]", ("web-1",)), ("[nginx]", ("nginx",)), ("[]", ()),
    ("", ()), ("[ , ]", ()), ("web", None), ("web-[0-9]+", None), ("[", None),
])
def test_container_name_list(value: str, names: tuple[str, ...] | None) -> None:
    assert container_name_list(value) == names


def test_bracketed_list_selects_exactly_its_containers() -> None:
    policy = compat("container-list")
    for name, selected in (("web-1", True), ("web-2", True), ("web-3", False), ("w", False), ("web-12", False)):
        rules = compile([policy], ContainerScope(name, {"app": "web"}))
        assert (rules.rule_count == 1) is selected, name
    assert compile([policy], ContainerScope("web-1", {"app": "db"})).rule_count == 0


def test_nginx_in_brackets_is_a_name_not_a_character_class() -> None:
    selector = Selector(((CONTAINER_NAME_LABEL, "[nginx]"),))
    assert selector.matches_container("nginx", {})
    assert not selector.matches_container("n", {})


@pytest.mark.parametrize("name", ["container-list-empty", "container-name-empty"])
def test_empty_container_list_selects_every_container_of_the_pod(name: str) -> None:
    policy = compat(name)
    labels = {"app": "web"}
    for container in ("web-1", "sidecar", "x"):
        assert compile([policy], ContainerScope(container, labels)).rule_count == 1
    # Only container.name: every container, including one nobody registered.
    assert policy.selector.selects_every_container() is (name == "container-name-empty")
    # A container nobody registered gets every container policy either way (fail closed, issue 14).
    assert compile([policy], AnyContainerScope()).rule_count == 1


def test_malformed_list_read_as_kubearmor_reads_it() -> None:
    policy = compat("container-list-malformed")
    assert compile([policy], ContainerScope("web-1", {"app": "web"})).rule_count == 1
    assert compile([policy], ContainerScope("web-2", {"app": "web"})).rule_count == 0


# --------------------------------------------------------------------------------------------------------
# metadata.namespace, nodeSelector against the node's labels


def test_namespace_kept_in_the_model() -> None:
    assert compat("namespace").namespace == "payments"
    assert compat("container-list").namespace is None


def test_node_selector_matched_against_known_node_labels() -> None:
    policy = compat("host-node-selector")
    assert compile([policy], HostScope()).rule_count == 1  # unknown labels: the VM is the only node
    assert compile([policy], HostScope({"kubernetes.io/hostname": "pod-vm", "zone": "a"})).rule_count == 1
    assert compile([policy], HostScope({"kubernetes.io/hostname": "other"})).rule_count == 0
    assert compile([policy], HostScope({})).rule_count == 0


def test_node_labels_config_key() -> None:
    assert parse_config({}, origin="c").node_labels is None
    config = parse_config({"node_labels": {"kubernetes.io/hostname": "pod-vm"}}, origin="c")
    assert config.node_labels == {"kubernetes.io/hostname": "pod-vm"}
    with pytest.raises(ConfigError, match=r"node_labels\.zone"):
        parse_config({"node_labels": {"zone": 1}}, origin="c")


# --------------------------------------------------------------------------------------------------------
# Nothing silently ignored: warnings in the policy, the RuleSet (and its digest), the CLI


def test_warning_fields_named_once_per_policy() -> None:
    (policy,) = parse_policy_text(HEAD + (
        "  file:\n    matchPaths:\n    - path: /etc/shadow\n      pts: true\n"
        "  process:\n    matchPaths:\n    - path: /usr/bin/python3\n      allowedArgs: [-V]\n"
        "  syscalls:\n    matchSyscalls:\n    - syscall: [unlink]\n  action: Block\n"), origin="t.yaml")
    assert [w.split(" (")[0] for w in policy.warnings] == [
        "spec.syscalls", "spec.process.matchPaths[0].allowedArgs", "spec.file.matchPaths[0].pts"]
    line = policy.warning_line()
    assert line is not None and line.startswith("t.yaml:1: warning: KubeArmorPolicy p: accepted, not enforced")
    assert "\n" not in line
    # pts and allowedArgs on a Block: the rules are kept, covering more.
    assert [m.path for m in policy.file] == ["/etc/shadow"] and [m.path for m in policy.process] == ["/usr/bin/python3"]


def test_warnings_are_in_the_ruleset_and_its_digest() -> None:
    warned, plain = compat("pts-block"), compat("tab-before-comment")
    scope = ContainerScope("web-1", {"app": "web"})
    ruleset = compile([warned, plain], scope)
    assert ruleset.warnings == (warned.warning_summary(),)
    assert RuleSet.from_json(ruleset.to_json()) == ruleset
    same_rules = compile([plain, compat("pts-false")], scope)
    assert "warnings" not in json.loads(same_rules.to_json())  # no warning: the digest is as before
    # The same rule table with and without the warning: different digests.
    without = RuleSet(ruleset.file, ruleset.process, ruleset.network, ruleset.capabilities, ruleset.postures)
    assert without.digest != ruleset.digest
    assert json.loads(ruleset.to_json())["warnings"] == list(ruleset.warnings)


def test_ruleset_json_with_empty_warnings_list_is_not_canonical() -> None:
    text = RuleSet().to_json()
    with pytest.raises(RuleSetFormatError, match="canonical"):
        RuleSet.from_json(text[:-1] + ',"warnings":[]}')


def test_warnings_not_sorted_refused() -> None:
    with pytest.raises(RuleSetOrderError):
        RuleSet(warnings=("b", "a"))


def test_policy_check_prints_namespace_and_one_warning_line_per_policy(
        capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(COMPAT / f"{n}.yaml") for n in ("namespace", "syscalls-audit", "allowedargs-block")]
    assert cli_main(["policy", "check", *paths]) == 0
    out, err = capsys.readouterr()
    assert f"{paths[0]}:2: KubeArmorPolicy namespace (namespace payments): 1 rule" in out.splitlines()
    assert out.splitlines()[-1] == "ok: 3 policies"
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{paths[1]}:2: warning: KubeArmorPolicy syscalls-audit: accepted, not enforced")
    assert "allowedArgs" in lines[1]


def test_policy_compile_shows_the_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(COMPAT / "presets-audit.yaml")
    assert cli_main(["policy", "compile", path, "--scope", "container:web", "--label", "app=web"]) == 0
    out = capsys.readouterr().out
    assert "warning: KubeArmorPolicy presets-audit: accepted, not enforced as written: spec.presets[0]" in out


def test_supervisor_summary_carries_the_warnings() -> None:
    policies = [compat("dns-audit"), compat("namespace")]
    assert policy_warnings(policies) == (policies[0].warning_summary(),)


# --------------------------------------------------------------------------------------------------------
# Refused with the reason: what ignoring would weaken


@pytest.mark.parametrize("name", ["pts-allow", "allowedargs-allow", "presets-block", "dns-block", "apparmor",
                                  "execname-fromsource", "process-path-and-execname"])
def test_refused_with_the_reason(name: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_paths([COMPAT / f"{name}.yaml"])
    (problem,) = info.value.problems
    assert problem.line > 1


def test_execname_must_be_a_name() -> None:
    problems = problems_of(HEAD + "  process:\n    matchPaths:\n    - execname: /bin/sh\n")
    assert "not an executable name" in problems[0].message


def _process_verdict(ruleset: RuleSet, path: bytes) -> Verdict | None:
    verdicts = [v for v in (a.run(path) for a in ruleset.process_automata) if v is not None]
    return combine(verdicts) if verdicts else None


def test_execname_is_the_name_at_any_path() -> None:
    # KubeArmor compares the executed file's name (d_name): /NAME at any depth, the whole last component.
    ruleset = compile([compat("execname-block")], ContainerScope("web", {"app": "web"}))
    assert sorted(r.pattern for r in ruleset.process_patterns) == ["/**/apt", "/apt"]
    assert all(r.action is Action.BLOCK for r in ruleset.process_patterns)
    for path in (b"/usr/bin/apt", b"/apt", b"/opt/x/y/apt"):
        verdict = _process_verdict(ruleset, path)
        assert verdict is not None and all(o.action == 3 for o in verdict.outcomes), path  # Block, every operation
    for path in (b"/usr/bin/aptitude", b"/usr/bin/xapt", b"/usr/bin/apt/x", b"/usr/bin/apt-get"):
        assert _process_verdict(ruleset, path) is None, path


def test_policy_check_counts_pattern_rules(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(COMPAT / f"{n}.yaml") for n in ("match-patterns", "execname-block")]
    assert cli_main(["policy", "check", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("KubeArmorPolicy match-patterns (no namespace): 1 rule")
    assert lines[1].endswith("KubeArmorPolicy execname-block (no namespace): 2 rules")  # /apt and /**/apt


def test_execname_glob_characters_are_literal() -> None:
    (policy,) = parse_policy_text(HEAD + "  process:\n    matchPaths:\n    - execname: 'a*[b]'\n      ownerOnly: true\n"
                                  "  action: Audit\n", origin="t.yaml")
    assert [(p.pattern, p.owner_only, p.action) for p in policy.process_patterns] == [
        ("/a\\*\\[b\\]", True, Action.AUDIT), ("/**/a\\*\\[b\\]", True, Action.AUDIT)]
    ruleset = compile([policy], ContainerScope("web", {"app": "web"}))
    assert _process_verdict(ruleset, b"/usr/bin/a*[b]") is not None
    assert _process_verdict(ruleset, b"/usr/bin/axb") is None and _process_verdict(ruleset, b"/a*b") is None


def test_execname_with_from_source_is_refused() -> None:
    (problem,) = problems_of(HEAD + "  process:\n    matchPaths:\n    - execname: apt\n      fromSource:\n"
                                    "      - path: /bin/bash\n")
    assert (problem.line, problem.field) == (13, "spec.process.matchPaths[0].fromSource")
    assert "patterns have no fromSource" in problem.message


def test_null_spec_is_an_empty_policy() -> None:
    policy = compat("null-spec")
    assert policy.rule_count == 0 and policy.warnings
    for scope in (HostScope(), AnyContainerScope(), ContainerScope("web", {})):
        assert compile([policy], scope).rule_count == 0


def test_a_spec_with_nothing_at_all_is_still_refused() -> None:
    (problem,) = problems_of(HEAD + "  action: Block\n")
    assert problem.field == "spec" and "no rules" in problem.message


# --------------------------------------------------------------------------------------------------------
# libyaml and pure-Python PyYAML agree wherever PyYAML reads the text at all

_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=20)


def _shape(node: Node) -> object:
    """A node tree with tags, values, styles-that-matter and lines: what the reader sees."""
    line = node.start_mark.line
    if isinstance(node, ScalarNode):
        return (node.tag, node.value, line)
    if isinstance(node, SequenceNode):
        return (node.tag, [_shape(n) for n in node.value], line)
    assert isinstance(node, MappingNode)
    return (node.tag, [(_shape(k), _shape(v)) for k, v in node.value], line)


@settings(deadline=None, max_examples=150)
@given(document=st.dictionaries(_TEXT, _VALUES, max_size=5), flow=st.sampled_from([False, True, None]))
def test_libyaml_composes_the_nodes_pure_python_composes(document: dict[str, object], flow: bool | None) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True, sort_keys=False)
    pure = yaml.SafeLoader(text)
    c = yaml_loader.BoundedCSafeLoader(text)
    try:
        while pure.check_node():
            assert c.check_node()
            expected, got = pure.get_node(), c.get_node()
            assert expected is not None and got is not None
            assert _shape(got) == _shape(expected)
        assert not c.check_node()
    finally:
        pure.dispose()
        c.dispose()
