"""Compiling policies into a scope's RuleSet (bpf.policy.compiler, bpf.policy.ruleset)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import bpf.policy.compiler
from bpf.policy.compiler import (
    AnyContainerScope,
    ContainerScope,
    HostScope,
    Postures,
    RuleLimitError,
    Scope,
    compile,
    selects,
)
from bpf.policy.files import load_policy_paths
from bpf.policy.model import Action, PathKind, Policy, PolicyError
from bpf.policy.ruleset import (
    CapabilityRule,
    CategoryPostures,
    FileRule,
    NetworkRule,
    Posture,
    PresetRule,
    ProcessRule,
    RuleAlert,
    RuleSet,
    RuleSetFormatError,
    RuleSetOrderError,
)
from bpf.policy.yaml_loader import parse_policy_text

SEED = Path(__file__).parent / "data" / "policies" / "seed"
EVERY = {"kubearmor.io/container.name": ".*"}


def alert(policy: str, severity: int | None = None, tags: tuple[str, ...] = (),
          message: str | None = None) -> RuleAlert:
    return RuleAlert(policy, severity, tags, message)


def policies(*docs: tuple[str, dict[str, Any]], host: bool = False) -> tuple[Policy, ...]:
    """(name, spec) pairs; container policies select every container unless the spec has a selector."""
    texts = []
    for name, spec in docs:
        default_selector = {"nodeSelector": {"matchLabels": {}}} if host else {"selector": {"matchLabels": EVERY}}
        full = {**default_selector, **spec}
        kind = "KubeArmorHostPolicy" if host else "KubeArmorPolicy"
        texts.append(yaml.safe_dump({"apiVersion": "security.kubearmor.com/v1", "kind": kind,
                                     "metadata": {"name": name}, "spec": full}))
    return parse_policy_text("---\n".join(texts), origin="t.yaml")


# --------------------------------------------------------------------------------------------------------
# The seed's policies

FIM_BIN = FileRule("/bin/", PathKind.DIR, True, False, None, Action.BLOCK, alert("file-integrity-monitoring"))
FIM_SBIN = FileRule("/sbin/", PathKind.DIR, True, False, None, Action.BLOCK, alert("file-integrity-monitoring"))
MYSQL = FileRule("/var/lib/mysql/", PathKind.DIR_RECURSIVE, False, False, None, Action.BLOCK,
                 alert("block-mysql-data-access"))
RAW = NetworkRule("raw", None, Action.BLOCK, alert("net-raw-block"))


@pytest.fixture(scope="module")
def seed() -> tuple[Policy, ...]:
    return load_policy_paths([SEED])


def test_seed_any_container(seed: tuple[Policy, ...]) -> None:
    # an unregistered container could be any container: the union, mysql's rule included (fail closed)
    assert compile(seed, AnyContainerScope()) == RuleSet(file=(FIM_BIN, FIM_SBIN, MYSQL), network=(RAW,))
    assert compile(seed, ContainerScope("web")) == RuleSet(file=(FIM_BIN, FIM_SBIN), network=(RAW,))


def test_seed_mysql_container(seed: tuple[Policy, ...]) -> None:
    ruleset = compile(seed, ContainerScope("mysql", {"app": "mysql"}))
    assert ruleset == RuleSet(file=(FIM_BIN, FIM_SBIN, MYSQL), network=(RAW,))
    assert ruleset.rule_count == 4
    assert ruleset.postures == CategoryPostures(None, None, None, None)


def test_seed_other_container_and_host(seed: tuple[Policy, ...]) -> None:
    assert compile(seed, ContainerScope("web", {"app": "wordpress"})) == RuleSet(file=(FIM_BIN, FIM_SBIN),
                                                                                 network=(RAW,))
    assert compile(seed, HostScope()) == RuleSet()


def test_seed_file_integrity_canonical_json(seed: tuple[Policy, ...]) -> None:
    fim = [p for p in seed if p.name == "file-integrity-monitoring"]
    ruleset = compile(fim, AnyContainerScope())
    rule = ('{"action":"Block","alert":{"message":null,"policy":"file-integrity-monitoring","severity":null,'
            '"tags":[]},"kind":"dir","owner_only":false,"path":"%s","read_only":true,"source":null}')
    assert ruleset.to_json() == (
        '{"capabilities":[],"file":[' + rule % "/bin/" + "," + rule % "/sbin/" + '],'
        '"format":"coco-warden/ruleset/v1","network":[],'
        '"postures":{"capabilities":null,"file":null,"network":null,"process":null},"process":[]}')
    assert ruleset.digest.startswith("sha256:") and len(ruleset.digest) == 7 + 64


# --------------------------------------------------------------------------------------------------------
# Tricky cases


def test_recursive_and_non_recursive_directories_are_distinct_rules() -> None:
    ruleset = compile(policies(("a", {"file": {"matchDirectories": [
        {"dir": "/etc/", "recursive": True, "action": "Audit"}, {"dir": "/etc/"}]}})), AnyContainerScope())
    assert [(r.path, r.kind, r.action) for r in ruleset.file] == [
        ("/etc/", PathKind.DIR, Action.BLOCK), ("/etc/", PathKind.DIR_RECURSIVE, Action.AUDIT)]


def test_exact_path_and_directory_of_same_name_are_distinct() -> None:
    ruleset = compile(policies(("a", {"process": {"matchPaths": [{"path": "/opt/tool"}],
                                                  "matchDirectories": [{"dir": "/opt/tool/"}]}})),
                      AnyContainerScope())
    assert [(r.path, r.kind) for r in ruleset.process] == [("/opt/tool", PathKind.EXACT),
                                                           ("/opt/tool/", PathKind.DIR)]


@pytest.mark.parametrize(("action", "winner_read_only"), [("Block", False), ("Audit", False), ("Allow", True)])
def test_read_only_conflict_keeps_the_stricter_rule(action: str, winner_read_only: bool) -> None:
    docs = policies(("a", {"file": {"action": action, "matchPaths": [{"path": "/etc/hosts", "readOnly": True}]}}),
                    ("b", {"file": {"action": action, "matchPaths": [{"path": "/etc/hosts"}]}}))
    (rule,) = compile(docs, AnyContainerScope()).file
    assert rule.read_only is winner_read_only
    assert rule.alert.policy == ("a" if winner_read_only else "b")


@pytest.mark.parametrize(("action", "winner_owner_only"), [("Block", False), ("Allow", True)])
def test_owner_only_conflict_keeps_the_stricter_rule(action: str, winner_owner_only: bool) -> None:
    docs = policies(("a", {"process": {"action": action, "matchPaths": [{"path": "/bin/su", "ownerOnly": True}]}}),
                    ("b", {"process": {"action": action, "matchPaths": [{"path": "/bin/su"}]}}))
    (rule,) = compile(docs, AnyContainerScope()).process
    assert rule == ProcessRule("/bin/su", PathKind.EXACT, winner_owner_only, None, Action(action),
                               alert("a" if winner_owner_only else "b"))


def test_from_source_gives_one_rule_per_source() -> None:
    docs = policies(("a", {"file": {"matchPaths": [
        {"path": "/etc/shadow", "fromSource": [{"path": "/usr/bin/passwd"}, {"path": "/bin/login"}],
         "action": "Allow"},
        {"path": "/etc/shadow"}]}}))
    ruleset = compile(docs, AnyContainerScope())
    assert [(r.source, r.action) for r in ruleset.file] == [
        (None, Action.BLOCK), ("/bin/login", Action.ALLOW), ("/usr/bin/passwd", Action.ALLOW)]


def test_allow_rules_switch_on_the_configured_default_posture() -> None:
    docs = policies(("a", {"file": {"matchPaths": [{"path": "/app/config", "action": "Allow"}]},
                           "network": {"matchProtocols": [{"protocol": "tcp", "action": "Allow"}]},
                           "capabilities": {"matchCapabilities": [{"capability": "net_raw"}]}}))
    block = Postures(file=Posture.BLOCK, network=Posture.BLOCK, capabilities=Posture.BLOCK)
    assert compile(docs, AnyContainerScope(), postures=block).postures == CategoryPostures(
        file=Posture.BLOCK, process=None, network=Posture.BLOCK, capabilities=None)
    assert compile(docs, AnyContainerScope()).postures == CategoryPostures(
        file=Posture.AUDIT, process=None, network=Posture.AUDIT, capabilities=None)


def test_process_allow_rules_follow_the_file_posture() -> None:
    docs = policies(("a", {"process": {"matchDirectories": [{"dir": "/usr/bin/", "action": "Allow"}]}}))
    postures = Postures(file=Posture.BLOCK, network=Posture.AUDIT, capabilities=Posture.AUDIT)
    assert compile(docs, AnyContainerScope(), postures=postures).postures == CategoryPostures(
        file=None, process=Posture.BLOCK, network=None, capabilities=None)


def test_same_path_in_two_policies_block_wins_with_its_metadata() -> None:
    def passwd(action: str) -> dict[str, Any]:
        return {"matchPaths": [{"path": "/etc/passwd", "action": action}]}

    blocker: tuple[str, dict[str, Any]] = ("zz-block", {"severity": 7, "message": "no", "file": passwd("Block")})
    allower: tuple[str, dict[str, Any]] = ("aa-allow", {"file": passwd("Allow")})
    auditor: tuple[str, dict[str, Any]] = ("mm-audit", {"tags": ["t"], "file": passwd("Audit")})
    for order in ([blocker, allower, auditor], [auditor, allower, blocker], [allower, blocker, auditor]):
        (rule,) = compile(policies(*order), AnyContainerScope()).file
        assert rule == FileRule("/etc/passwd", PathKind.EXACT, False, False, None, Action.BLOCK,
                                alert("zz-block", 7, (), "no"))
    (rule,) = compile(policies(allower, auditor), AnyContainerScope()).file
    assert (rule.action, rule.alert) == (Action.AUDIT, alert("mm-audit", tags=("t",)))


def test_allow_overridden_by_block_still_enables_the_posture() -> None:
    docs = policies(("a", {"file": {"matchPaths": [{"path": "/etc/passwd", "action": "Allow"}]}}),
                    ("b", {"file": {"matchPaths": [{"path": "/etc/passwd"}]}}))
    ruleset = compile(docs, AnyContainerScope(), postures=Postures(file=Posture.BLOCK))
    assert [r.action for r in ruleset.file] == [Action.BLOCK]
    assert ruleset.postures.file is Posture.BLOCK


def test_equal_rules_tie_break_on_lowest_policy_name() -> None:
    first = ("beta", {"network": {"matchProtocols": [{"protocol": "udp", "message": "from beta"}]}})
    second = ("alpha", {"network": {"matchProtocols": [{"protocol": "UDP", "message": "from alpha"}]}})
    for order in ((first, second), (second, first)):
        (rule,) = compile(policies(*order), AnyContainerScope()).network
        assert rule == NetworkRule("udp", None, Action.BLOCK, alert("alpha", message="from alpha"))


def test_capability_rules() -> None:
    docs = policies(("caps", {"capabilities": {"matchCapabilities": [
        {"capability": "CAP_SYS_ADMIN"}, {"capability": "net_raw", "fromSource": [{"path": "/bin/ping"}],
                                          "action": "Allow"}]}}))
    assert compile(docs, AnyContainerScope()).capabilities == (
        CapabilityRule("net_raw", "/bin/ping", Action.ALLOW, alert("caps")),
        CapabilityRule("sys_admin", None, Action.BLOCK, alert("caps")),
    )


# --------------------------------------------------------------------------------------------------------
# Scopes

RULE = {"process": {"matchPaths": [{"path": "/bin/sh"}]}}


def selected(docs: tuple[Policy, ...], scope: Scope) -> list[str]:
    names = sorted(p.name for p in docs if selects(p, scope))
    # compile() agrees: every rule it emits comes from a selected policy (same-key rules collapse to one).
    assert {r.alert.policy for r in compile(docs, scope).process} <= set(names)
    return names


def test_container_name_regex_is_full_match() -> None:
    docs = policies(("web-only", {"selector": {"matchLabels": {"kubearmor.io/container.name": "web"}}, **RULE}),
                    ("web-prefix", {"selector": {"matchLabels": {"kubearmor.io/container.name": "web.*"}}, **RULE}),
                    ("plus", {"selector": {"matchLabels": {"kubearmor.io/container.name": ".+"}}, **RULE}))
    assert selected(docs, ContainerScope("web")) == ["plus", "web-only", "web-prefix"]
    assert selected(docs, ContainerScope("webserver")) == ["plus", "web-prefix"]
    assert selected(docs, ContainerScope("myweb")) == ["plus"]
    assert selected(docs, AnyContainerScope()) == ["plus", "web-only", "web-prefix"]  # the union


def test_labels_and_expressions() -> None:
    docs = policies(
        ("by-label", {"selector": {"matchLabels": {"app": "db"}}, **RULE}),
        ("name-and-label", {"selector": {"matchLabels": {"kubearmor.io/container.name": ".*", "app": "db"}},
                            **RULE}),
        ("in", {"selector": {"matchExpressions": [{"key": "label", "operator": "In",
                                                   "values": ["app=db", "app=cache"]}]}, **RULE}),
        ("not-in", {"selector": {"matchExpressions": [{"key": "label", "operator": "NotIn",
                                                       "values": ["tier=debug"]}]}, **RULE}),
        ("in-by-name", {"selector": {"matchExpressions": [
            {"key": "label", "operator": "In", "values": ["kubearmor.io/container.name=sidecar"]}]}, **RULE}),
    )
    assert selected(docs, ContainerScope("c", {"app": "db"})) == ["by-label", "in", "name-and-label", "not-in"]
    assert selected(docs, ContainerScope("c", {"app": "cache", "tier": "debug"})) == ["in"]
    assert selected(docs, ContainerScope("sidecar")) == ["in-by-name", "not-in"]
    # An unregistered container could be any of them: every container policy applies (fail closed).
    assert selected(docs, AnyContainerScope()) == ["by-label", "in", "in-by-name", "name-and-label", "not-in"]


def test_host_and_container_policies_do_not_mix() -> None:
    container = policies(("c", RULE))
    host = policies(("h", {"nodeSelector": {"matchLabels": {"role": "cvm"}}, **RULE}), host=True)
    both = container + host
    assert selected(both, AnyContainerScope()) == ["c"]
    assert selected(both, ContainerScope("x")) == ["c"]
    assert selected(both, HostScope()) == ["h"]  # the VM is the only node: any nodeSelector selects it
    assert selected(both, HostScope({"role": "cvm", "zone": "a"})) == ["h"]
    assert selected(both, HostScope({"role": "other"})) == []


def test_scopes_are_immutable_and_hashable() -> None:
    labels = {"app": "db"}
    scope = ContainerScope("db", labels)
    labels["app"] = "changed"
    assert scope.labels == {"app": "db"}
    assert hash(scope) == hash(ContainerScope("db", {"app": "db"}))
    assert {HostScope(), HostScope(), AnyContainerScope(), AnyContainerScope()} == {HostScope(), AnyContainerScope()}
    with pytest.raises(dataclasses.FrozenInstanceError):
        scope.name = "other"  # type: ignore[misc]
    assert (str(scope), str(HostScope()), str(AnyContainerScope())) == ("container:db", "host", "any-container")
    with pytest.raises(ValueError, match="must not be empty"):
        ContainerScope("")


# --------------------------------------------------------------------------------------------------------
# RuleSet


def test_ruleset_is_frozen_hashable_and_round_trips(seed: tuple[Policy, ...]) -> None:
    ruleset = compile(seed, ContainerScope("db", {"app": "mysql"}), postures=Postures())
    assert hash(ruleset) == hash(compile(seed, ContainerScope("db", {"app": "mysql"})))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ruleset.file = ()  # type: ignore[misc]
    text = ruleset.to_json()
    assert " " not in text and json.loads(text)["format"] == "coco-warden/ruleset/v1"
    loaded = RuleSet.from_json(text)
    assert loaded == ruleset and loaded.digest == ruleset.digest


def test_ruleset_refuses_non_canonical_rule_order() -> None:
    with pytest.raises(RuleSetOrderError, match="file: rules not in canonical order"):
        RuleSet(file=(FIM_SBIN, FIM_BIN))
    with pytest.raises(RuleSetOrderError, match="two rules with one key"):
        RuleSet(network=(RAW, dataclasses.replace(RAW, action=Action.AUDIT)))


def test_ruleset_json_is_ascii_for_any_text() -> None:
    docs = policies(("u", {"message": "blocked ✋\n", "file": {"matchPaths": [{"path": "/données/clé"}]}}))
    ruleset = compile(docs, AnyContainerScope())
    assert ruleset.to_json().isascii()
    assert RuleSet.from_json(ruleset.to_json()).file[0].path == "/données/clé"


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(format="v0"),
    lambda d: d["file"].reverse(),  # out of canonical order
    lambda d: d["file"][0].update(path="/bin"),  # directory without slash
    lambda d: d["file"][0].update(path="/x/../bin/"),
    lambda d: d["file"][0].update(kind="glob"),
    lambda d: d["file"][0].update(extra=1),
    lambda d: d["network"][0].update(protocol="http"),
    lambda d: d["network"][0]["alert"].update(severity=11),
    lambda d: d["postures"].update(file="allow"),
])
def test_ruleset_from_json_refuses_what_to_json_would_not_write(seed: tuple[Policy, ...], mutate: Any) -> None:
    data = json.loads(compile(seed, ContainerScope("db", {"app": "mysql"})).to_json())
    mutate(data)
    with pytest.raises(RuleSetFormatError):
        RuleSet.from_json(json.dumps(data, sort_keys=True, separators=(",", ":")))


@pytest.mark.parametrize("text", ["", "[]", "{", '{"format":"coco-warden/ruleset/v1"}', "null", "1e999"])
def test_ruleset_from_json_garbage(text: str) -> None:
    with pytest.raises(RuleSetFormatError):
        RuleSet.from_json(text)


def test_rule_limit(seed: tuple[Policy, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpf.policy.compiler, "MAX_RULES_PER_SCOPE", 3)
    assert compile(seed, ContainerScope("web")).rule_count == 3
    with pytest.raises(RuleLimitError) as info:
        compile(seed, ContainerScope("db", {"app": "mysql"}))
    assert str(info.value) == ("<scope container:db>:0: rules: 4 rules; the engine's limit is 3 per scope "
                               "(MAX_RULES_PER_SCOPE)")


# --------------------------------------------------------------------------------------------------------
# KubeArmor presets: filelessExec is enforced


def test_fileless_exec_preset_compiles_block_over_audit_and_round_trips() -> None:
    docs = policies(("fileless-audit", {"presets": [{"name": "filelessExec", "action": "Audit"}]}),
                    ("fileless-block", {"presets": [{"name": "filelessExec"}], "severity": 3}))
    assert [(m.name, m.action) for p in docs for m in p.presets] == [("filelessExec", Action.AUDIT),
                                                                     ("filelessExec", Action.BLOCK)]
    ruleset = compile(docs, ContainerScope("web"))
    assert ruleset.presets == (PresetRule("filelessExec", Action.BLOCK, alert("fileless-block", 3)),)
    assert json.loads(ruleset.to_json())["presets"] == [
        {"name": "filelessExec", "action": "Block",
         "alert": {"policy": "fileless-block", "severity": 3, "tags": [], "message": None}}]
    assert RuleSet.from_json(ruleset.to_json()) == ruleset
    assert "presets" not in json.loads(compile(policies(("x", {"file": {"matchPaths": [{"path": "/a"}]}})),
                                                       ContainerScope("web")).to_json())


@pytest.mark.parametrize(("preset", "why"), [
    ({"name": "filelessExec", "action": "Allow"}, "takes Block or Audit"),
    ({"name": "protectEnv", "action": "Block"}, "cannot be enforced"),
    ({"name": "exec"}, "cannot be enforced"),  # the spec's default action: Block
    ({"name": "noSuchPreset", "action": "Audit"}, "unknown preset"),
])
def test_other_presets_and_actions_are_refused(preset: dict[str, str], why: str) -> None:
    with pytest.raises(PolicyError, match=why):
        policies(("p", {"presets": [preset]}))


def test_ruleset_refuses_a_preset_it_does_not_enforce() -> None:
    ruleset = compile(policies(("f", {"presets": [{"name": "filelessExec"}]})), ContainerScope("web"))
    with pytest.raises(RuleSetFormatError, match="not an enforced preset"):
        RuleSet.from_json(ruleset.to_json().replace('"filelessExec"', '"protectEnv"'))
