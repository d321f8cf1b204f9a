"""Property tests: compile is deterministic and order-independent; bad input only ever gives PolicyError."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf.policy.compiler import AnyContainerScope, ContainerScope, HostScope, Postures, Scope, compile
from bpf.policy.files import load_policy_paths
from bpf.policy.limits import MAX_PATH_BYTES, MAX_PATH_DEPTH
from bpf.policy.model import PolicyError, normalise_path
from bpf.policy.ruleset import Posture, RuleSet
from bpf.policy.yaml_loader import parse_policy_text


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)


# Generating whole policies is slow on a loaded CI machine; that is not a failure of the code under test.
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------------------
# Valid policies, from small pools so that rules collide across policies

PATHS = ["/etc/passwd", "/etc/shadow", "//usr/bin/curl", "/bin/sh", "/opt/é"]
DIRS = ["/", "/etc/", "/usr/bin/", "/var/lib/mysql/", "//tmp//"]
SOURCES = ["/bin/bash", "/usr/bin/python3", "/usr/sbin/nginx"]
ACTIONS = ["Allow", "Audit", "Block"]

maybe_action = st.one_of(st.none(), st.sampled_from(ACTIONS))
alert_fields = st.fixed_dictionaries({}, optional={
    "severity": st.integers(1, 10), "tags": st.lists(st.sampled_from(["NIST", "PCI", "x"]), max_size=2),
    "message": st.sampled_from(["blocked", "audit me", "✓ ok"]), "action": st.sampled_from(ACTIONS)})
sources = st.lists(st.fixed_dictionaries({"path": st.sampled_from(SOURCES)}), min_size=1, max_size=2)


def with_alert(base: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda b, a: {**b, **a}, base, alert_fields)


def path_rule(file: bool) -> st.SearchStrategy[dict[str, Any]]:
    optional: dict[str, st.SearchStrategy[Any]] = {"ownerOnly": st.booleans(), "fromSource": sources}
    if file:
        optional["readOnly"] = st.booleans()
    return with_alert(st.fixed_dictionaries({"path": st.sampled_from(PATHS)}, optional=optional))


def dir_rule(file: bool) -> st.SearchStrategy[dict[str, Any]]:
    optional: dict[str, st.SearchStrategy[Any]] = {"ownerOnly": st.booleans(), "fromSource": sources,
                                                   "recursive": st.booleans()}
    if file:
        optional["readOnly"] = st.booleans()
    return with_alert(st.fixed_dictionaries({"dir": st.sampled_from(DIRS)}, optional=optional))


def path_section(file: bool) -> st.SearchStrategy[dict[str, Any]]:
    return with_alert(st.fixed_dictionaries({}, optional={
        "matchPaths": st.lists(path_rule(file), min_size=1, max_size=3),
        "matchDirectories": st.lists(dir_rule(file), min_size=1, max_size=3)}).filter(bool))


def spec_strategy(host: bool) -> st.SearchStrategy[dict[str, Any]]:
    protocol = st.sampled_from(["tcp", "UDP", "raw", "icmp", "all"])
    capability = st.sampled_from(["net_raw", "SYS_ADMIN", "cap_chown"])
    net_rule = st.fixed_dictionaries({"protocol": protocol},
                                     optional={} if host else {"fromSource": sources})
    cap_rule = st.fixed_dictionaries({"capability": capability},
                                     optional={} if host else {"fromSource": sources})
    if host:  # host network/capability rules must name their sources
        net_rule = st.builds(lambda r, s: {**r, "fromSource": s}, net_rule, sources)
        cap_rule = st.builds(lambda r, s: {**r, "fromSource": s}, cap_rule, sources)
    if host:
        selector: st.SearchStrategy[dict[str, Any]] = st.just({"nodeSelector": {"matchLabels": {}}})
    else:
        selector = st.sampled_from([
            {"selector": {"matchLabels": {"kubearmor.io/container.name": ".*"}}},
            {"selector": {"matchLabels": {"kubearmor.io/container.name": "db|web"}}},
            {"selector": {"matchLabels": {"app": "mysql"}}},
            {"selector": {"matchExpressions": [{"key": "label", "operator": "NotIn", "values": ["app=web"]}]}},
        ])
    sections = st.fixed_dictionaries({}, optional={
        "process": path_section(False), "file": path_section(True),
        "network": with_alert(st.fixed_dictionaries({"matchProtocols": st.lists(with_alert(net_rule), min_size=1,
                                                                                 max_size=3)})),
        "capabilities": with_alert(st.fixed_dictionaries({
            "matchCapabilities": st.lists(with_alert(cap_rule), min_size=1, max_size=3)})),
    }).filter(bool)
    return st.builds(lambda sel, sec, al: {**sel, **sec, **al}, selector, sections, alert_fields)


@st.composite
def policy_docs(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "eps"]), min_size=1, max_size=5,
                          unique=True))
    docs = []
    for name in names:
        host = draw(st.booleans())
        docs.append({"apiVersion": "security.kubearmor.com/v1",
                     "kind": "KubeArmorHostPolicy" if host else "KubeArmorPolicy",
                     "metadata": {"name": name}, "spec": draw(spec_strategy(host))})
    return docs


SCOPES: list[Scope] = [AnyContainerScope(), HostScope(), ContainerScope("db", {"app": "mysql"}),
                       ContainerScope("web", {"app": "web"}), ContainerScope("other")]


@settings(FUZZ, max_examples=75)
@given(docs=policy_docs(), seed=st.randoms(use_true_random=False),
       postures=st.builds(Postures, st.sampled_from(Posture), st.sampled_from(Posture), st.sampled_from(Posture)))
def test_compile_is_deterministic_and_order_independent(docs: list[dict[str, Any]], seed: random.Random,
                                                        postures: Postures) -> None:
    text = "---\n".join(dump(d) for d in docs)
    shuffled = list(docs)
    seed.shuffle(shuffled)
    shuffled_text = "---\n".join(dump(d) for d in shuffled)
    policies = parse_policy_text(text, origin="a.yaml")
    reordered = parse_policy_text(shuffled_text, origin="b.yaml")
    for scope in SCOPES:
        ruleset = compile(policies, scope, postures=postures)
        again = compile(policies, scope, postures=postures)
        permuted = compile(reordered, scope, postures=postures)
        reversed_ = compile(tuple(reversed(policies)), scope, postures=postures)
        assert ruleset.to_json() == again.to_json() == permuted.to_json() == reversed_.to_json()
        assert ruleset.digest == permuted.digest and hash(ruleset) == hash(permuted)
        assert RuleSet.from_json(ruleset.to_json()) == ruleset
        # One rule per conflict key, in canonical order.
        keys = [(r.path, r.kind.value, r.source or "") for r in ruleset.file]
        assert keys == sorted(set(keys), key=lambda k: (k[0], k[1], k[2] != "", k[2]))


@settings(FUZZ, max_examples=25)
@given(docs=policy_docs(), seed=st.randoms(use_true_random=False))
def test_file_order_does_not_change_the_digest(docs: list[dict[str, Any]], seed: random.Random) -> None:
    digests = set()
    for _ in range(2):
        directory = Path(tempfile.mkdtemp(prefix="warden-policy-order-"))
        order = list(docs)
        seed.shuffle(order)
        for i, doc in enumerate(order):
            (directory / f"{i:02d}.yaml").write_text(dump(doc), encoding="utf-8")
        try:
            policies = load_policy_paths([directory])
        finally:
            shutil.rmtree(directory)
        digests.add(tuple(compile(policies, scope).digest for scope in SCOPES))
    assert len(digests) == 1


# --------------------------------------------------------------------------------------------------------
# Invalid input: PolicyError and nothing else

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                      st.text(max_size=20), st.sampled_from(["/", "..", "/a/../b", "Block", "tcp", "net_raw", "*"]))
json_tree = st.recursive(json_leaf, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)), max_leaves=20)
FIELD_NAMES = ["apiVersion", "kind", "metadata", "name", "spec", "selector", "nodeSelector", "matchLabels",
               "matchExpressions", "process", "file", "network", "capabilities", "matchPaths", "matchDirectories",
               "matchPatterns", "matchProtocols", "matchCapabilities", "path", "dir", "recursive", "readOnly",
               "ownerOnly", "fromSource", "action", "severity", "tags", "message", "protocol", "capability"]


def assert_clean(text: str) -> None:
    try:
        parse_policy_text(text, origin="fuzz.yaml")
    except PolicyError as error:
        assert error.problems
        assert len(str(error).splitlines()) == len(error.problems)
        for problem in error.problems:
            assert problem.file == "fuzz.yaml" and problem.line >= 0 and problem.message


@st.composite
def mutated_docs(draw: st.DrawFn) -> Any:
    """A valid document with one subtree replaced, one field renamed, or one field deleted."""
    doc: Any = draw(policy_docs())[0]
    paths: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, [*path, key])
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, [*path, i])

    walk(doc, [])
    target = draw(st.sampled_from(paths))
    operation = draw(st.sampled_from(["replace", "rename", "delete"]))
    if not target:
        return draw(json_tree)
    parent = doc
    for step in target[:-1]:
        parent = parent[step]
    last = target[-1]
    if operation == "replace" or isinstance(parent, list):
        parent[last] = draw(json_tree)
    elif operation == "rename":
        parent[draw(st.sampled_from(FIELD_NAMES))] = parent.pop(last)
    else:
        del parent[last]
    return doc


@settings(FUZZ, max_examples=120)
@given(doc=mutated_docs())
def test_mutated_documents_give_policy_error_or_policies(doc: Any) -> None:
    assert_clean(dump(doc))


@settings(FUZZ, max_examples=100)
@given(spec=st.dictionaries(st.sampled_from(FIELD_NAMES), json_tree, max_size=5))
def test_random_specs_give_policy_error_or_policies(spec: dict[str, Any]) -> None:
    for kind in ("KubeArmorPolicy", "KubeArmorHostPolicy"):
        assert_clean(dump({"apiVersion": "security.kubearmor.com/v1", "kind": kind, "metadata": {"name": "f"},
                           "spec": spec}))


@settings(FUZZ, max_examples=300)
@given(text=st.text(max_size=300))
def test_random_text_gives_policy_error_or_policies(text: str) -> None:
    assert_clean(text)


YAML_PIECES = ["---\n", "a: ", "- ", "&x ", "*x", "!!str ", "!!binary ", "!custom ", "{", "}", "[", "]", ", ",
               ": ", "? ", "|\n  ", ">\n  ", "'", '"', "\\u0000", "\t", "\n", "  ", "<<: ", "~", "1e9", "0x1F",
               "spec", "apiVersion: security.kubearmor.com/v1\n", "kind: KubeArmorPolicy\n", "%YAML 1.1\n", "#"]


@settings(FUZZ, max_examples=400)
@given(pieces=st.lists(st.sampled_from(YAML_PIECES), max_size=30))
def test_yaml_shaped_noise_gives_policy_error_or_policies(pieces: list[str]) -> None:
    assert_clean("".join(pieces))


@settings(FUZZ, max_examples=500)
@given(raw=st.text(alphabet=st.sampled_from(["/", ".", "a", "é", "\x00", "\n", " "]), max_size=40),
       directory=st.booleans())
def test_normalised_paths_are_canonical_and_idempotent(raw: str, directory: bool) -> None:
    normalised, error = normalise_path(raw, directory=directory)
    assert (normalised is None) != (error is None)
    if normalised is None:
        return
    components = normalised.strip("/").split("/")
    assert normalised.startswith("/") and "//" not in normalised and "\x00" not in normalised
    assert normalised == "/" or not {".", ".."} & set(components)
    assert normalised.endswith("/") == directory
    assert normalise_path(normalised, directory=directory) == (normalised, None)
    assert len(normalised.encode()) <= MAX_PATH_BYTES and len([c for c in components if c]) <= MAX_PATH_DEPTH


def test_seed_compiles_the_same_across_runs() -> None:
    # Guards the canonical form itself: a change here changes every measured digest.
    seed = load_policy_paths([Path(__file__).parent / "data" / "policies" / "seed"])
    ruleset = compile(seed, ContainerScope("web"))  # file-integrity-monitoring and net-raw-block
    assert json.loads(ruleset.to_json())["format"] == "coco-warden/ruleset/v1"
    assert ruleset.digest == "sha256:c4cff5929b473fa08797667180e4f115d65b85db1456fc13a69931af2e8876d8"
