"""Parsing and validation of KubeArmor policies (bpf.policy: model, yaml_loader, reader, files)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpf.policy.files import load_policy_paths
from bpf.policy.limits import MAX_PATH_BYTES, MAX_PATH_DEPTH
from bpf.policy.model import (
    Action,
    AlertFields,
    CapabilityMatch,
    LabelExpression,
    LabelOperator,
    PathKind,
    PathMatch,
    Policy,
    PolicyError,
    PolicyKind,
    Problem,
    ProtocolMatch,
    Selector,
    normalise_path,
)
from bpf.policy.yaml_loader import MAX_TEXT_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, parse_policy_text

SEED = Path(__file__).parent / "data" / "policies" / "seed"
NO_ALERT = AlertFields(None, (), None)
EVERY_CONTAINER = Selector((("kubearmor.io/container.name", ".*"),))


def policy_yaml(spec: dict[str, Any], *, kind: str = "KubeArmorPolicy", name: str = "p") -> str:
    if kind == "KubeArmorPolicy":
        spec = {"selector": {"matchLabels": {"kubearmor.io/container.name": ".*"}}, **spec}
    else:
        spec = {"nodeSelector": {"matchLabels": {}}, **spec}
    doc = {"apiVersion": "security.kubearmor.com/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    return yaml.safe_dump(doc, sort_keys=False)


def one(text: str) -> Policy:
    (policy,) = parse_policy_text(text, origin="t.yaml")
    return policy


def problems_of(text: str) -> tuple[Problem, ...]:
    with pytest.raises(PolicyError) as info:
        parse_policy_text(text, origin="t.yaml")
    assert info.value.problems, "a PolicyError must carry at least one problem"
    return info.value.problems


# --------------------------------------------------------------------------------------------------------
# The seed's three policies


def test_seed_net_raw_block() -> None:
    (policy,) = load_policy_paths([SEED / "net-raw-block.yaml"])
    expected = Policy(
        kind=PolicyKind.CONTAINER, name="net-raw-block", namespace=None, selector=EVERY_CONTAINER,
        process=(), file=(), network=(ProtocolMatch("raw", (), Action.BLOCK, NO_ALERT),), capabilities=())
    assert policy == expected


def test_seed_file_integrity_monitoring() -> None:
    (policy,) = load_policy_paths([SEED / "file-integrity-monitoring.yaml"])
    assert policy.name == "file-integrity-monitoring"
    assert policy.selector == EVERY_CONTAINER
    assert policy.file == (
        PathMatch("/bin/", PathKind.DIR, True, False, (), Action.BLOCK, NO_ALERT),
        PathMatch("/sbin/", PathKind.DIR, True, False, (), Action.BLOCK, NO_ALERT),
    )
    assert (policy.process, policy.network, policy.capabilities) == ((), (), ())


def test_seed_block_mysql_data_access() -> None:
    (policy,) = load_policy_paths([SEED / "block-mysql-data-access.yaml"])
    assert policy.selector == Selector((("app", "mysql"),))
    assert policy.file == (PathMatch("/var/lib/mysql/", PathKind.DIR_RECURSIVE, False, False, (), Action.BLOCK,
                                     NO_ALERT),)


def test_seed_directory_loads_sorted_with_origins() -> None:
    policies = load_policy_paths([SEED])
    assert [p.name for p in policies] == ["block-mysql-data-access", "file-integrity-monitoring",
                                          "net-raw-block"]
    assert all(Path(p.origin).parent == SEED for p in policies)
    assert all(p.line == 3 for p in policies)  # after the two comment lines


# --------------------------------------------------------------------------------------------------------
# Accepted forms


def test_multi_document_text_and_empty_documents() -> None:
    text = "---\n" + policy_yaml({"network": {"matchProtocols": [{"protocol": "TCP"}]}}, name="a") + \
        "---\n" + policy_yaml({"capabilities": {"matchCapabilities": [{"capability": "NET_ADMIN"}]}}, name="b") + \
        "---\n"
    a, b = parse_policy_text(text, origin="multi.yaml")
    assert a.network == (ProtocolMatch("tcp", (), Action.BLOCK, NO_ALERT),)
    assert b.capabilities == (CapabilityMatch("net_admin", (), Action.BLOCK, NO_ALERT),)
    assert (a.origin, b.origin) == ("multi.yaml", "multi.yaml")


@pytest.mark.parametrize("raw", ["tcp", "TCP", "Tcp", "icmpv6", "SEQPACKET", "all", "packet", "dccp"])
def test_protocols_any_case_canonical_lowercase(raw: str) -> None:
    policy = one(policy_yaml({"network": {"matchProtocols": [{"protocol": raw}]}}))
    assert policy.network[0].protocol == raw.lower()


@pytest.mark.parametrize(("raw", "canonical"), [("net_raw", "net_raw"), ("SYS_ADMIN", "sys_admin"),
                                                ("CAP_CHOWN", "chown"), ("cap_mac_admin", "mac_admin")])
def test_capabilities_canonical(raw: str, canonical: str) -> None:
    policy = one(policy_yaml({"capabilities": {"matchCapabilities": [{"capability": raw}]}}))
    assert policy.capabilities[0].capability == canonical


def test_innermost_action_and_alert_fields_win() -> None:
    policy = one(policy_yaml({
        "severity": 2, "tags": ["spec-tag"], "message": "spec message", "action": "Audit",
        "file": {
            "severity": 5, "action": "Allow",
            "matchPaths": [
                {"path": "/etc/shadow"},
                {"path": "/etc/passwd", "action": "Block", "severity": 9, "tags": ["rule"], "message": "m"},
            ],
        },
        "process": {"matchPaths": [{"path": "/bin/sh"}]},
    }))
    inherit_section, own = policy.file
    assert (inherit_section.action, inherit_section.alert) == (Action.ALLOW,
                                                               AlertFields(5, ("spec-tag",), "spec message"))
    assert (own.action, own.alert) == (Action.BLOCK, AlertFields(9, ("rule",), "m"))
    assert (policy.process[0].action, policy.process[0].alert) == (Action.AUDIT,
                                                                   AlertFields(2, ("spec-tag",), "spec message"))


def test_action_defaults_to_block() -> None:
    policy = one(policy_yaml({"process": {"matchDirectories": [{"dir": "/tmp/"}]}}))
    assert policy.process[0].action is Action.BLOCK


def test_paths_are_normalised_and_sources_expanded() -> None:
    policy = one(policy_yaml({"file": {"matchPaths": [
        {"path": "//etc//ssl///private/key.pem", "ownerOnly": True, "readOnly": True,
         "fromSource": [{"path": "/usr/bin/openssl"}, {"path": "//usr//bin/curl"}, {"path": "/usr/bin/openssl"}]},
    ], "matchDirectories": [{"dir": "//var//log/", "recursive": True}, {"dir": "/"}]}}))
    exact, recursive, root = policy.file
    assert exact == PathMatch("/etc/ssl/private/key.pem", PathKind.EXACT, True, True,
                              ("/usr/bin/openssl", "/usr/bin/curl"), Action.BLOCK, NO_ALERT)
    assert (recursive.path, recursive.kind) == ("/var/log/", PathKind.DIR_RECURSIVE)
    assert (root.path, root.kind) == ("/", PathKind.DIR)


def test_selector_match_expressions() -> None:
    policy = one(policy_yaml({"selector": {"matchExpressions": [
        {"key": "label", "operator": "In", "values": ["app=web", "app=api"]},
        {"key": "label", "operator": "NotIn", "values": ["tier=debug"]},
    ]}, "process": {"matchPaths": [{"path": "/bin/sh"}]}}))
    assert policy.selector == Selector((), (LabelExpression(LabelOperator.IN, ("app=web", "app=api")),
                                           LabelExpression(LabelOperator.NOT_IN, ("tier=debug",))))


def test_host_policy_with_from_source() -> None:
    policy = one(policy_yaml({
        "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "vm"}},
        "network": {"matchProtocols": [{"protocol": "raw", "fromSource": [{"path": "/usr/bin/ping"}]}]},
        "capabilities": {"matchCapabilities": [{"capability": "net_raw", "fromSource": [{"path": "/usr/bin/ping"}],
                                                "action": "Allow"}]},
    }, kind="KubeArmorHostPolicy"))
    assert policy.kind is PolicyKind.HOST
    assert policy.selector == Selector((("kubernetes.io/hostname", "vm"),))
    assert policy.network == (ProtocolMatch("raw", ("/usr/bin/ping",), Action.BLOCK, NO_ALERT),)
    assert policy.capabilities == (CapabilityMatch("net_raw", ("/usr/bin/ping",), Action.ALLOW, NO_ALERT),)


def test_null_values_mean_unset() -> None:
    policy = one(policy_yaml({"action": None, "file": {"matchPaths": [{"path": "/etc/hosts", "ownerOnly": None}]}}))
    assert policy.file[0] == PathMatch("/etc/hosts", PathKind.EXACT, False, False, (), Action.BLOCK, NO_ALERT)


def test_paths_at_the_engine_limits_are_accepted() -> None:
    longest = "/" + "a" * (MAX_PATH_BYTES - 1)
    deepest = "/x" * MAX_PATH_DEPTH
    longest_dir = "/" + "d" * (MAX_PATH_BYTES - 2) + "/"
    policy = one(policy_yaml({"file": {"matchPaths": [{"path": longest}, {"path": deepest}],
                                       "matchDirectories": [{"dir": longest_dir}]}}))
    assert [m.path for m in policy.file] == [longest, deepest, longest_dir]


# --------------------------------------------------------------------------------------------------------
# Refused documents: (spec or raw text, field, words the message must contain)

R = "spec.file.matchPaths[0]"
INVALID_SPECS: list[tuple[str, dict[str, Any], str, str]] = [
    ("relative path", {"file": {"matchPaths": [{"path": "etc/passwd"}]}}, f"{R}.path", "not absolute"),
    ("dotdot", {"file": {"matchPaths": [{"path": "/etc/../shadow"}]}}, f"{R}.path", "'..'"),
    ("dot", {"file": {"matchPaths": [{"path": "/etc/./shadow"}]}}, f"{R}.path", "'.'"),
    ("nul", {"file": {"matchPaths": [{"path": "/etc/pass\x00wd"}]}}, f"{R}.path", "NUL"),
    ("newline", {"file": {"matchPaths": [{"path": "/etc/a\nb"}]}}, f"{R}.path", "line break"),
    ("path ends in slash", {"file": {"matchPaths": [{"path": "/etc/"}]}}, f"{R}.path", "matchDirectories"),
    ("dir without slash", {"file": {"matchDirectories": [{"dir": "/etc"}]}},
     "spec.file.matchDirectories[0].dir", "must end with '/'"),
    ("too long", {"file": {"matchPaths": [{"path": "/" + "a" * MAX_PATH_BYTES}]}}, f"{R}.path",
     f"limit is {MAX_PATH_BYTES} bytes"),
    ("too long multibyte", {"file": {"matchPaths": [{"path": "/" + "é" * 128}]}}, f"{R}.path", "257 bytes"),
    ("dir too long with slash", {"file": {"matchDirectories": [{"dir": "/" + "d" * (MAX_PATH_BYTES - 1) + "/"}]}},
     "spec.file.matchDirectories[0].dir", "MAX_PATH_BYTES"),
    ("too deep", {"file": {"matchPaths": [{"path": "/x" * (MAX_PATH_DEPTH + 1)}]}}, f"{R}.path",
     f"limit is {MAX_PATH_DEPTH}"),
    ("bad source", {"file": {"matchPaths": [{"path": "/a", "fromSource": [{"path": "bash"}]}]}},
     f"{R}.fromSource[0].path", "not absolute"),
    ("source dir form", {"file": {"matchPaths": [{"path": "/a", "fromSource": [{"dir": "/bin/"}]}]}},
     f"{R}.fromSource[0].dir", "unknown field"),
    ("severity high", {"severity": 11, "file": {"matchPaths": [{"path": "/a"}]}}, "spec.severity", "1 to 10"),
    ("severity zero", {"file": {"matchPaths": [{"path": "/a", "severity": 0}]}}, f"{R}.severity", "1 to 10"),
    ("severity string", {"severity": "high", "file": {"matchPaths": [{"path": "/a"}]}}, "spec.severity",
     "integer"),
    ("action enum", {"action": "Deny", "file": {"matchPaths": [{"path": "/a"}]}}, "spec.action",
     "Allow, Audit, Block"),
    ("action lowercase", {"file": {"matchPaths": [{"path": "/a", "action": "block"}]}}, f"{R}.action",
     "'block'"),
    ("readOnly not bool", {"file": {"matchPaths": [{"path": "/a", "readOnly": "yes please"}]}}, f"{R}.readOnly",
     "true or false"),
    ("readOnly on process", {"process": {"matchPaths": [{"path": "/bin/sh", "readOnly": True}]}},
     "spec.process.matchPaths[0].readOnly", "unknown field"),
    ("recursive on path", {"file": {"matchPaths": [{"path": "/a", "recursive": True}]}}, f"{R}.recursive",
     "unknown field"),
    ("unknown spec field", {"fille": {"matchPaths": [{"path": "/a"}]}}, "spec.fille", "unknown field 'fille'"),
    ("unknown rule field", {"file": {"matchPaths": [{"path": "/a", "owneronly": True}]}}, f"{R}.owneronly",
     "unknown field"),
    ("protocol", {"network": {"matchProtocols": [{"protocol": "http"}]}}, "spec.network.matchProtocols[0].protocol",
     "unknown protocol 'http'"),
    ("capability", {"capabilities": {"matchCapabilities": [{"capability": "bpf_everything"}]}},
     "spec.capabilities.matchCapabilities[0].capability", "unknown capability"),
    ("missing path", {"file": {"matchPaths": [{"readOnly": True}]}}, f"{R}.path", "is required"),
    ("relative pattern", {"file": {"matchPatterns": [{"pattern": "etc/*.conf"}]}}, "spec.file.matchPatterns[0].pattern",
     "is not absolute"),
    ("regex pattern", {"file": {"matchPatterns": [{"pattern": "^/proc/\\*/mem$"}]}},
     "spec.file.matchPatterns[0].pattern", "looks like a regular expression"),
    ("regex escape in a pattern", {"file": {"matchPatterns": [{"pattern": "/[a-z]+\\Wssh/"}]}},
     "spec.file.matchPatterns[0].pattern", "'\\W' is not a glob escape"),
    ("pattern with other problems", {"file": {"matchPatterns": [{"pattern": "/a*", "severity": 99}]}},
     "spec.file.matchPatterns[0].severity", "must be 1 to 10"),
    ("process pattern unclosed", {"process": {"matchPatterns": [{"pattern": "/**/{sh,bash", "ownerOnly": True}]}},
     "spec.process.matchPatterns[0].pattern", "'{' is never closed"),
    ("process pattern readOnly", {"process": {"matchPatterns": [{"pattern": "/**/sh", "readOnly": True}]}},
     "spec.process.matchPatterns[0].readOnly", "unknown field"),
    ("syscall name", {"syscalls": {"matchSyscalls": [{"syscall": ["unlinkk"]}]}},
     "spec.syscalls.matchSyscalls[0].syscall[0]", "unknown syscall 'unlinkk'"),
    ("execname fromSource", {"process": {"matchPaths": [{"execname": "sh", "fromSource": [{"path": "/bin/x"}]}]}},
     "spec.process.matchPaths[0].fromSource", "patterns have no fromSource"),
    ("execname too long", {"process": {"matchPaths": [{"execname": "x" * 252}]}},
     "spec.process.matchPaths[0].execname", "the engine's limit is 255"),
    ("dns", {"network": {"matchDNSQueries": [{"domain": "x.io"}]}}, "spec.network.matchDNSQueries[0].domain",
     "ignoring a Block rule for 'x.io' would let through what it stops"),
    ("no rules", {"action": "Block"}, "spec", "no rules"),
    ("empty selector", {"selector": {}, "file": {"matchPaths": [{"path": "/a"}]}}, "spec.selector",
     "matchLabels or matchExpressions"),
    ("bad regex", {"selector": {"matchLabels": {"kubearmor.io/container.name": "(["}},
                   "file": {"matchPaths": [{"path": "/a"}]}}, "spec.selector.matchLabels.kubearmor.io/container.name",
     "regular expression"),
    ("regex in a container list", {"selector": {"matchLabels": {"kubearmor.io/container.name": "[web, d.*]"}},
                                   "file": {"matchPaths": [{"path": "/a"}]}},
     "spec.selector.matchLabels.kubearmor.io/container.name", "'d.*' in the container list"),
    ("label not string", {"selector": {"matchLabels": {"version": 2}}, "file": {"matchPaths": [{"path": "/a"}]}},
     "spec.selector.matchLabels.version", "must be a string"),
    ("expression key", {"selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a=b"]}]},
                        "file": {"matchPaths": [{"path": "/a"}]}}, "spec.selector.matchExpressions[0].key",
     "must be 'label'"),
    ("expression operator", {"selector": {"matchExpressions": [{"key": "label", "operator": "Exists",
                                                                 "values": ["a=b"]}]},
                             "file": {"matchPaths": [{"path": "/a"}]}},
     "spec.selector.matchExpressions[0].operator", "In, NotIn"),
    ("expression value", {"selector": {"matchExpressions": [{"key": "label", "operator": "In", "values": ["ab"]}]},
                          "file": {"matchPaths": [{"path": "/a"}]}},
     "spec.selector.matchExpressions[0].values[0]", "key=value"),
    ("nodeSelector in container policy", {"nodeSelector": {}, "file": {"matchPaths": [{"path": "/a"}]}},
     "spec.nodeSelector", "KubeArmorPolicy uses selector"),
    ("tags not list", {"tags": "a,b", "file": {"matchPaths": [{"path": "/a"}]}}, "spec.tags", "list of strings"),
    ("section not mapping", {"file": ["/a"]}, "spec.file", "must be a mapping"),
    ("rules not list", {"file": {"matchPaths": {"path": "/a"}}}, "spec.file.matchPaths", "must be a list"),
]


@pytest.mark.parametrize(("spec", "where", "words"), [c[1:] for c in INVALID_SPECS],
                         ids=[c[0] for c in INVALID_SPECS])
def test_invalid_container_policies(spec: dict[str, Any], where: str, words: str) -> None:
    problems = problems_of(policy_yaml(spec))
    assert any(p.field == where and words in p.message for p in problems), problems


INVALID_HOST_SPECS: list[tuple[str, dict[str, Any], str, str]] = [
    ("network needs fromSource", {"network": {"matchProtocols": [{"protocol": "raw"}]}},
     "spec.network.matchProtocols[0].fromSource", "is required"),
    ("capability needs fromSource", {"capabilities": {"matchCapabilities": [{"capability": "net_raw"}]}},
     "spec.capabilities.matchCapabilities[0].fromSource", "is required"),
    ("empty fromSource", {"network": {"matchProtocols": [{"protocol": "raw", "fromSource": []}]}},
     "spec.network.matchProtocols[0].fromSource", "at least one"),
    ("selector in host policy", {"selector": {"matchLabels": {"a": "b"}}, "file": {"matchPaths": [{"path": "/a"}]}},
     "spec.selector", "KubeArmorHostPolicy uses nodeSelector"),
    ("device", {"device": {"matchDevice": [{"class": "USB"}]}}, "spec.device", "not supported"),
]


@pytest.mark.parametrize(("spec", "where", "words"), [c[1:] for c in INVALID_HOST_SPECS],
                         ids=[c[0] for c in INVALID_HOST_SPECS])
def test_invalid_host_policies(spec: dict[str, Any], where: str, words: str) -> None:
    problems = problems_of(policy_yaml(spec, kind="KubeArmorHostPolicy"))
    assert any(p.field == where and words in p.message for p in problems), problems


def test_host_policy_requires_node_selector() -> None:
    text = policy_yaml({"file": {"matchPaths": [{"path": "/a"}]}}, kind="KubeArmorHostPolicy")
    text = text.replace("  nodeSelector:\n    matchLabels: {}\n", "")
    problems = problems_of(text)
    assert [(p.field, p.message) for p in problems] == [("spec.nodeSelector", "is required")]


@pytest.mark.parametrize(("text", "where", "words"), [
    ("apiVersion: v1\nkind: KubeArmorPolicy\nmetadata: {name: a}\nspec: {}\n", "apiVersion",
     "security.kubearmor.com/v1"),
    ("apiVersion: security.kubearmor.com/v1\nkind: Pod\nmetadata: {name: a}\nspec: {}\n", "kind", "'Pod'"),
    ("apiVersion: security.kubearmor.com/v1\nkind: KubeArmorPolicy\nspec: {}\n", "metadata", "is required"),
    ("apiVersion: security.kubearmor.com/v1\nkind: KubeArmorPolicy\nmetadata: {name: Bad_Name}\nspec: {}\n",
     "metadata.name", "not a valid name"),
    ("apiVersion: security.kubearmor.com/v1\nkind: KubeArmorPolicy\nmetadata: {name: a, uid: x}\nspec: {}\n",
     "metadata.uid", "unknown field"),
    ("- just\n- a list\n", "document", "must be a mapping"),
    ("key: [unclosed\n", "yaml", ""),
    ("a: 1\na: 2\n", "a", "duplicate key"),
    ("? [a, b]\n: c\n", "document", "keys must be strings"),
    ("<<: {apiVersion: security.kubearmor.com/v1}\n", "document", "keys must be strings"),
    ("apiVersion: !!python/object:os.system x\n", "apiVersion", "tagged"),
])
def test_invalid_documents(text: str, where: str, words: str) -> None:
    problems = problems_of(text)
    assert any(p.field == where and words in p.message for p in problems), problems


def test_tagged_collections_refused() -> None:
    text = policy_yaml({"file": {"matchPaths": [{"path": "/a"}]}}).replace("spec:\n", "spec: !!set\n", 1)
    assert problems_of(text)[0].message.startswith("must be a mapping, not a collection tagged tag:yaml.org,2002:set")
    text = policy_yaml({"file": {"matchPaths": [{"path": "/a"}]}}).replace("matchPaths:", "matchPaths: !!omap", 1)
    assert any(p.field == "spec.file.matchPaths" and "must be a list" in p.message for p in problems_of(text))


def test_unquoted_yaml_1_1_booleans_get_a_hint() -> None:
    text = policy_yaml({"selector": {"matchLabels": {"debug": "yes"}}, "file": {"matchPaths": [{"path": "/a"}]}})
    text = text.replace("debug: 'yes'", "debug: yes")
    (problem,) = problems_of(text)
    assert problem.field == "spec.selector.matchLabels.debug"
    assert problem.message == "must be a string, not a boolean ('yes' unquoted; quote it for a string)"


def test_problems_point_at_the_offending_line() -> None:
    text = (
        "apiVersion: security.kubearmor.com/v1\n"   # 1
        "kind: KubeArmorPolicy\n"                   # 2
        "metadata:\n"                               # 3
        "  name: lines\n"                           # 4
        "spec:\n"                                   # 5
        "  selector:\n"                             # 6
        "    matchLabels: {app: x}\n"               # 7
        "  file:\n"                                 # 8
        "    matchPaths:\n"                         # 9
        "      - path: /etc/../shadow\n"            # 10
        "      - path: /ok\n"                       # 11
        "        readOnly: maybe\n"                 # 12
        "  network:\n"                              # 13
        "    matchProtocols:\n"                     # 14
        "      - protocol: smoke-signals\n"         # 15
    )
    problems = problems_of(text)
    assert [(p.file, p.line, p.field) for p in problems] == [
        ("t.yaml", 10, "spec.file.matchPaths[0].path"),
        ("t.yaml", 12, "spec.file.matchPaths[1].readOnly"),
        ("t.yaml", 15, "spec.network.matchProtocols[0].protocol"),
    ]
    assert str(problems[0]).startswith("t.yaml:10: spec.file.matchPaths[0].path: ")


def test_policy_error_str_is_one_problem_per_line() -> None:
    error = PolicyError([Problem("a.yaml", 3, "spec", "bad"), Problem("b\nc.yaml", 0, "path", "evil\x1b[2J")])
    assert str(error).splitlines() == ["a.yaml:3: spec: bad", "b\\nc.yaml:0: path: evil\\x1b[2J"]


def test_duplicate_policy_names_refused() -> None:
    text = policy_yaml({"file": {"matchPaths": [{"path": "/a"}]}}, name="same") + "---\n" + \
        policy_yaml({"file": {"matchPaths": [{"path": "/b"}]}}, name="same")
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].field == "metadata.name" and "first defined at t.yaml:1" in problems[0].message


def test_same_name_different_kinds_allowed() -> None:
    text = policy_yaml({"file": {"matchPaths": [{"path": "/a"}]}}, name="same") + "---\n" + \
        policy_yaml({"file": {"matchPaths": [{"path": "/b"}]}}, name="same", kind="KubeArmorHostPolicy")
    kinds = [p.kind for p in parse_policy_text(text, origin="t.yaml")]
    assert kinds == [PolicyKind.CONTAINER, PolicyKind.HOST]


def test_every_document_is_checked() -> None:
    bad = policy_yaml({"file": {"matchPaths": [{"path": "rel"}]}}, name="a")
    text = bad + "---\n" + bad.replace("name: a", "name: b")
    rel_lines = [n for n, line in enumerate(text.splitlines(), 1) if line.endswith("path: rel")]
    assert len(rel_lines) == 2
    assert [p.line for p in problems_of(text)] == rel_lines


# --------------------------------------------------------------------------------------------------------
# Hostile YAML


def test_alias_bomb_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 30)]
    start = time.monotonic()
    problems = problems_of("\n".join(lines) + "\n")
    assert time.monotonic() - start < 2.0  # refused at the first anchor; expansion would take forever
    assert [(p.line, p.field) for p in problems] == [(1, "yaml")]
    assert "anchors and aliases are not allowed" in problems[0].message


def test_a_single_alias_is_refused_too() -> None:
    text = policy_yaml({"file": {"matchPaths": [{"path": "/a"}]}}).replace("spec:\n", "spec: &s\n")
    assert "anchors and aliases" in problems_of(text)[0].message


def test_oversized_text_refused_before_parsing() -> None:
    text = "a: " + "x" * MAX_TEXT_BYTES + "\n"
    start = time.monotonic()
    problems = problems_of(text)
    assert time.monotonic() - start < 2.0  # a length check, no parsing
    assert [(p.line, p.field) for p in problems] == [(0, "file")]
    assert "1 MiB" in problems[0].message


def test_oversized_by_utf8_bytes_not_characters() -> None:
    text = "# " + "é" * (MAX_TEXT_BYTES // 2) + "\n"  # fewer characters than the limit, more bytes
    assert len(text) < MAX_TEXT_BYTES
    assert "1 MiB" in problems_of(text)[0].message


def test_deep_nesting_refused_without_recursion_error() -> None:
    # Past MAX_YAML_DEPTH the composer refuses; far past it libyaml's own nesting limit refuses first.
    problems = problems_of("a: " + "[" * (MAX_YAML_DEPTH + 5) + "]" * (MAX_YAML_DEPTH + 5) + "\n")
    assert f"nested deeper than {MAX_YAML_DEPTH}" in problems[0].message
    (problem,) = problems_of("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert (problem.line, problem.field) == (1, "yaml")
    assert "nesting depth" in problem.message


def test_node_count_bounded() -> None:
    # Parsing 100k nodes takes about a second of pure Python: bounded, but too load-sensitive to time here.
    problems = problems_of("a: [" + ",".join(["1"] * (MAX_YAML_NODES + 10)) + "]\n")
    assert f"more than {MAX_YAML_NODES} YAML nodes" in problems[0].message


def test_non_printable_and_surrogates_refused() -> None:
    assert problems_of("a: \x07\n")[0].field == "yaml"
    assert "Unicode" in problems_of("a: b\ud800\n")[0].message


# --------------------------------------------------------------------------------------------------------
# Files and directories


def test_load_paths_recursive_sorted_and_deduplicated(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "one.yml").write_text(policy_yaml({"file": {"matchPaths": [{"path": "/1"}]}}, name="one"))
    (tmp_path / "a" / "two.yaml").write_text(policy_yaml({"file": {"matchPaths": [{"path": "/2"}]}}, name="two"))
    (tmp_path / "a" / "notes.txt").write_text("not a policy")
    explicit = tmp_path / "explicit.policy"
    explicit.write_text(policy_yaml({"file": {"matchPaths": [{"path": "/3"}]}}, name="three"))
    policies = load_policy_paths([tmp_path, explicit, tmp_path / "a" / "two.yaml"])
    assert [p.name for p in policies] == ["two", "one", "three"]


def test_load_paths_reports_every_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(policy_yaml({"file": {"matchPaths": [{"path": "rel"}]}}))
    (tmp_path / "binary.yaml").write_bytes(b"a: \xff\xfe\n")
    (tmp_path / "big.yaml").write_bytes(b"#" * (MAX_TEXT_BYTES + 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyError) as info:
        load_policy_paths([tmp_path, tmp_path / "missing.yaml", tmp_path / "empty"])
    got = [(Path(p.file).name, p.field, p.message.split(";")[0]) for p in info.value.problems]
    assert got == [
        ("bad.yaml", "spec.file.matchPaths[0].path", "'rel' is not absolute (must start with '/')"),
        ("big.yaml", "file", "larger than 1048576 bytes (1 MiB), the limit for one policy text"),
        ("binary.yaml", "file", "not valid UTF-8 (byte offset 3)"),
        ("missing.yaml", "path", "no such file or directory"),
        ("empty", "path", "directory holds no *.yaml or *.yml files"),
    ]


def test_unusable_paths_are_problems_not_exceptions(tmp_path: Path) -> None:
    long_name = tmp_path / ("n" * 5000)
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(PolicyError) as info:
        load_policy_paths([long_name, loop, fifo, tmp_path / "dangling"])
    assert [(p.field, p.message) for p in info.value.problems] == [
        ("path", "cannot access: File name too long"),
        ("path", "cannot access: Too many levels of symbolic links"),
        ("path", "not a regular file or directory"),
        ("path", "no such file or directory"),
    ]


def test_unreadable_entries_in_directories_are_reported(tmp_path: Path) -> None:
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "gone")
    os.mkfifo(tmp_path / "fifo.yml")
    (tmp_path / "ignored.txt").symlink_to(tmp_path / "gone")
    (tmp_path / "ok.yaml").write_text(policy_yaml({"file": {"matchPaths": [{"path": "/a"}]}}))
    with pytest.raises(PolicyError) as info:
        load_policy_paths([tmp_path])
    assert [(Path(p.file).name, p.message) for p in info.value.problems] == [
        ("dangling.yaml", "cannot access: No such file or directory"),
        ("fifo.yml", "not a regular file"),
    ]


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    for name in ("x.yaml", "y.yaml"):
        (tmp_path / name).write_text(policy_yaml({"file": {"matchPaths": [{"path": "/a"}]}}, name="dup"))
    with pytest.raises(PolicyError) as info:
        load_policy_paths([tmp_path])
    (problem,) = info.value.problems
    assert problem.file.endswith("y.yaml") and "x.yaml:1" in problem.message


def test_unreadable_directories_are_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Running as root, permissions cannot make a directory unreadable; simulate what os.walk reports.
    (tmp_path / "ok.yaml").write_text(policy_yaml({"file": {"matchPaths": [{"path": "/a"}]}}))
    real_walk = os.walk

    def walk(top: Any, onerror: Any = None, followlinks: bool = False) -> Any:
        onerror(PermissionError(13, "Permission denied", str(tmp_path / "locked")))
        return real_walk(top, onerror=onerror, followlinks=followlinks)

    monkeypatch.setattr(os, "walk", walk)
    with pytest.raises(PolicyError) as info:
        load_policy_paths([tmp_path])
    assert [str(p) for p in info.value.problems] == [f"{tmp_path / 'locked'}:0: path: cannot read directory: "
                                                     "Permission denied"]


def test_symlinked_directories_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "p.yaml").write_text(policy_yaml({"file": {"matchPaths": [{"path": "/a"}]}}))
    top = tmp_path / "top"
    top.mkdir()
    (top / "q.yaml").write_text(policy_yaml({"file": {"matchPaths": [{"path": "/b"}]}}, name="q"))
    (top / "loop").symlink_to(top)
    (top / "other").symlink_to(real)
    assert [p.name for p in load_policy_paths([top])] == ["q"]


@pytest.mark.parametrize(("raw", "directory", "expected"), [
    ("/", True, "/"), ("///", True, "/"), ("//a//b/", True, "/a/b/"), ("/a//b", False, "/a/b"),
    ("/a/.hidden", False, "/a/.hidden"), ("/a/..b", False, "/a/..b"), ("/a b/c", False, "/a b/c"),
])
def test_normalise_path_accepts(raw: str, directory: bool, expected: str) -> None:
    assert normalise_path(raw, directory=directory) == (expected, None)
