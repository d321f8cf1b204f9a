"""Changing the engine's map contents without a gap: additions before removals, deepest nodes first.

A rule node is written only after every node its `below` and `skip` lead to holds its new value, so a
walk running meanwhile sees old or new nodes, never a jump into a missing one; scope configurations come
next; removals come last, deepest first (nothing new leads to them). So no rule is ever missing mid-update.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bpf.kernel import maps
from bpf.kernel.libbpf import MapHandle


def sync_scopes(handles: Mapping[str, MapHandle], tables: Iterable[maps.ScopeTables],
                scope_ids: Iterable[int]) -> tuple[int, int]:
    """Make the rules/sources/scopes maps hold exactly `tables` for `scope_ids` (other scopes are left
    alone; sources are global and kept if any scope still uses them). Returns (entries written, removed)."""
    ids = set(scope_ids)
    tables = list(tables)
    want_nodes: dict[bytes, bytes] = {}
    want_cfg: dict[bytes, bytes] = {}
    for t in tables:
        want_nodes.update(t.nodes)
        want_cfg[maps.SCOPE_ID.pack(t.scope)] = t.cfg
    rules, sources, scopes = handles["warden_rules"], handles["warden_sources"], handles["warden_scopes"]
    have_nodes = {k: v for k, v in rules.contents().items() if maps.RULE_KEY.unpack(k)[2] in ids}
    # sources: the union over every scope that stays (other scopes' tables are in the manifest
    # only as digests, so sources are only ever added here, and pruned at full syncs)
    want_sources: dict[bytes, bytes] = {}
    for t in tables:
        want_sources.update(t.sources)
    added = removed = 0
    for key, value in sorted(want_sources.items()):
        if sources.lookup(key) != value:
            sources.update(key, value)
            added += 1
    changed = [(k, v) for k, v in want_nodes.items() if have_nodes.get(k) != v]
    changed.sort(key=lambda kv: -maps.decode_node_len(kv[1]))
    for key, value in changed:
        rules.update(key, value)
    added += len(changed)
    for key, value in want_cfg.items():
        if scopes.lookup(key) != value:
            scopes.update(key, value)
    stale = [(k, v) for k, v in have_nodes.items() if k not in want_nodes]
    stale.sort(key=lambda kv: -maps.decode_node_len(kv[1]))
    for key, _ in stale:
        rules.delete(key)
    removed += len(stale)
    return added, removed


def prune_sources(handles: Mapping[str, MapHandle], tables: Iterable[maps.ScopeTables]) -> int:
    """Remove the fromSource paths no scope in `tables` (all of them: a full sync) uses any more."""
    keep: set[bytes] = set()
    for t in tables:
        keep.update(t.sources)
    removed = 0
    for key in list(handles["warden_sources"].keys()):
        if key not in keep:
            handles["warden_sources"].delete(key)
            removed += 1
    return removed


def write_meta(handles: Mapping[str, MapHandle], object_digests: Mapping[str, str],
               ruleset_digests: Mapping[int, str]) -> None:
    """warden_meta holds exactly the loaded objects' digests and each scope's RuleSet digest."""
    meta = handles["warden_meta"]
    want = {maps.meta_key(f"obj/{name}"): maps.digest_bytes(digest) for name, digest in object_digests.items()}
    want.update({maps.meta_key(f"rs/{scope}"): maps.digest_bytes(digest) for scope, digest in ruleset_digests.items()})
    for key, value in want.items():
        meta.update(key, value)
    for key in list(meta.keys()):
        if key not in want:
            meta.delete(key)


def new_generation(handles: Mapping[str, MapHandle]) -> None:
    """End every allow the kernel remembers (file_permission's, bpf/progs/warden_held.h): written after
    each change of the rules and of the container registry, so what was decided before is decided again."""
    handles["warden_config"].update(maps.SCOPE_ID.pack(maps.CONFIG_GENERATION), maps.generation_value())
