"""The prefix walk with `skip` decides exactly what the walk over every prefix decides.

`walk` below is bpf/progs/warden_match.h's match_path, step for step, over the nodes bpf/kernel/maps.py
encodes; the reference is the same walk with every skip forced to 1 (every prefix looked up). The guest
suite proves the kernel side on concrete paths; this proves the jump itself on any rule set."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from bpf.kernel import maps
from bpf.policy.model import Action, PathKind
from bpf.policy.ruleset import FileRule, RuleAlert, RuleSet, file_rule_key

ALERT = RuleAlert(policy="p", severity=None, tags=(), message=None)
COMPONENTS = ("a", "b", "c")


@dataclass(frozen=True)
class Node:
    exact: tuple[int, ...]
    dir: tuple[int, ...]
    recursive: tuple[int, ...]
    below: int
    skip: int


def decode(tables: maps.ScopeTables) -> dict[str, Node]:
    out = {}
    for key, value in tables.nodes.items():
        if maps.RULE_KEY.unpack(key)[3] == maps.CAT_ANCESTOR:
            continue  # path_rename's nodes, never walked by match_path
        exact, dir_, rec, below, skip, length, _, path = maps.NODE.unpack(value)
        slots = [maps.SLOT.unpack(s)[:3] for s in (exact, dir_, rec)]
        out[path[:length].decode()] = Node(*slots, below=below, skip=skip)
    return out


def walk(nodes: dict[str, Node], components: list[str], use_skips: bool,
         lookups: list[str] | None = None) -> tuple[int, ...]:
    """match_path for a complete path: the most specific slot, (0, 0, 0) for none. `lookups`
    collects the strings looked up, in order."""
    looked = lookups if lookups is not None else []
    best: tuple[int, ...] = (0, 0, 0)
    n = len(components)
    last_below, next_k = -1, 0
    for k in range(n + 1):  # prefix k: "/" then "/c1/", ... and prefix n = the object itself + "/"
        if k < next_k:
            continue
        looked.append("/" + "".join(c + "/" for c in components[:k]))
        node = nodes.get(looked[-1])
        if node is None:
            break
        if node.recursive[1]:
            best = node.recursive
        if node.dir[1] and k + 1 >= n:
            best = node.dir
        if not node.below:
            break
        last_below = k
        next_k = k + (node.skip if use_skips else 1)
    if n and last_below + 1 >= n:
        looked.append("/" + "/".join(components))
        node = nodes.get(looked[-1])
        if node is not None and node.exact[1]:
            best = node.exact
    return best


def ruleset(rules: list[FileRule] | tuple[FileRule, ...]) -> RuleSet:
    """A RuleSet in canonical order, one rule per key (the compiler's invariant)."""
    by_key = {file_rule_key(r): r for r in rules}
    return RuleSet(file=tuple(by_key[k] for k in sorted(by_key)))


def rule(path: list[str], kind: PathKind, action: Action) -> FileRule:
    text = "/" + "/".join(path) + ("/" if kind is not PathKind.EXACT else "")
    return FileRule(path=text, kind=kind, read_only=False, owner_only=False, source=None, action=action,
                    alert=ALERT)


paths = st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=6)
rules = st.lists(st.builds(rule, paths, st.sampled_from(list(PathKind)),
                           st.sampled_from([Action.ALLOW, Action.AUDIT, Action.BLOCK])), max_size=8)


@settings(max_examples=400, deadline=None)
@given(rules, st.lists(paths, min_size=1, max_size=10))
def test_skipping_never_changes_a_decision(file_rules: list[FileRule], queries: list[list[str]]) -> None:
    nodes = decode(maps.encode_scope(maps.SCOPE_ANY_CONTAINER, ruleset(file_rules)))
    # the rules' own paths, what lies under them and beside them, and random paths
    for r in file_rules:
        own = r.path.strip("/").split("/")
        queries += [own, [*own, "a"], [*own[:-1], "c"], [*own, "b", "a"]]
    for query in queries:
        assert walk(nodes, query, use_skips=True) == walk(nodes, query, use_skips=False), query


def test_a_chain_without_rules_is_jumped() -> None:
    rules = (rule(["srv", "wb", "a"], PathKind.DIR_RECURSIVE, Action.BLOCK),
             rule(["srv", "wb", "a", "b", "c", "x0"], PathKind.EXACT, Action.BLOCK),
             rule(["srv", "wb", "a", "b", "c", "x1"], PathKind.EXACT, Action.BLOCK))
    nodes = decode(maps.encode_scope(maps.SCOPE_ANY_CONTAINER, ruleset(rules)))
    skips = {path: node.skip for path, node in nodes.items() if path.endswith("/")}
    # "/" -> "/srv/wb/a/" (the recursive rule) -> "/srv/wb/a/b/c/" (exact paths under it)
    assert skips == {"/": 3, "/srv/": 2, "/srv/wb/": 1, "/srv/wb/a/": 2, "/srv/wb/a/b/": 1,
                     "/srv/wb/a/b/c/": 1}
    lookups: list[str] = []
    assert walk(nodes, ["srv", "wb", "a", "b", "c", "x0"], True, lookups)[1] == maps.ACT_BLOCK
    # the object as a directory ("x0/": a directory rule covers the directory itself), then exactly
    assert lookups == ["/", "/srv/wb/a/", "/srv/wb/a/b/c/", "/srv/wb/a/b/c/x0/", "/srv/wb/a/b/c/x0"]


def test_a_prefix_with_an_exact_path_under_it_or_two_ways_down_is_visited() -> None:
    rules = (rule(["a", "x"], PathKind.EXACT, Action.BLOCK),
             rule(["a", "b", "c"], PathKind.DIR, Action.AUDIT),
             rule(["a", "b", "d", "e"], PathKind.EXACT, Action.BLOCK))
    nodes = decode(maps.encode_scope(maps.SCOPE_ANY_CONTAINER, ruleset(rules)))
    # "/a/" has an exact path under it; "/a/b/" has two child prefixes: neither is jumped
    assert nodes["/"].skip == 1 and nodes["/a/"].skip == 1 and nodes["/a/b/"].skip == 1
    assert walk(nodes, ["a", "x"], True)[1] == maps.ACT_BLOCK
    assert walk(nodes, ["a", "b", "c", "f"], True)[1] == maps.ACT_AUDIT
    assert walk(nodes, ["a", "b", "d", "e"], True)[1] == maps.ACT_BLOCK
    assert walk(nodes, ["a", "b", "d", "f"], True) == (0, 0, 0)
