"""What the engine's pins and maps hold, read back: status (links, maps, scopes, drops) and health.

Nothing here changes the kernel: these are the engine's inspections, kept apart from its verbs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpf.kernel import maps, patterns
from bpf.kernel.libbpf import BpfError, Libbpf, Link, MapHandle
from bpf.kernel.manifest import Manifest
from bpf.kernel.pins import EnginePins


@dataclass(frozen=True)
class LinkStatus:
    object: str
    program: str
    hook: str
    pin: str
    link_id: int
    prog_id: int
    tag: str
    attached: bool


@dataclass(frozen=True)
class EngineStatus:
    links: tuple[LinkStatus, ...]
    maps: Mapping[str, Mapping[str, int]]
    scopes: Mapping[str, Mapping[str, Any]]
    object_digests: Mapping[str, str]
    event_drops: int
    loaded: bool

    def to_json(self) -> str:
        return json.dumps({"loaded": self.loaded, "links": [vars(link) for link in self.links],
                           "maps": {k: dict(v) for k, v in self.maps.items()},
                           "scopes": {k: dict(v) for k, v in self.scopes.items()},
                           "object_digests": dict(self.object_digests), "event_drops": self.event_drops},
                          indent=2, sort_keys=True)


def drops(handle: MapHandle) -> int:
    """Events the kernel could not put in the ring buffer (warden_drops); 0 when it cannot be read."""
    try:
        return handle.counter(bytes(4))
    except BpfError:
        return 0


def link_statuses(lib: Libbpf, pins: EnginePins, manifest: Manifest | None) -> list[LinkStatus]:
    out: list[LinkStatus] = []
    for link_dir in pins.link_dirs():
        obj_name = pins.object_of(link_dir)
        recorded = (manifest.objects.get(obj_name, {}) if manifest else {}).get("programs", {})
        for pin in sorted(link_dir.iterdir()):
            hook = recorded.get(pin.name, {}).get("hook", "")
            try:
                with Link.open_pinned(lib, pin) as link:
                    info = link.info()
                    prog = lib.prog_info_by_id(info.prog_id)
                out.append(LinkStatus(obj_name, pin.name, hook, str(pin), info.id, info.prog_id, prog.tag, True))
            except BpfError:
                out.append(LinkStatus(obj_name, pin.name, hook, str(pin), 0, 0, "", False))
    return out


def read_status(lib: Libbpf, pins: EnginePins, manifest: Manifest | None) -> EngineStatus:
    if not pins.maps_pinned():
        return EngineStatus((), {}, {}, {}, 0, loaded=False)
    with pins.open_maps(lib) as handles:
        map_info = {name: {"id": h.info.id, "type": h.info.type, "max_entries": h.info.max_entries,
                           "key_size": h.info.key_size, "value_size": h.info.value_size}
                    for name, h in handles.items()}
        counts: dict[int, int] = {}
        for key in handles["warden_rules"].keys():  # noqa: SIM118 (MapHandle, not a dict)
            scope = maps.RULE_KEY.unpack(key)[2]
            counts[scope] = counts.get(scope, 0) + 1
        for name in ("warden_rules", "warden_sources", "warden_ctrs", "warden_scopes"):
            map_info[name] = {**map_info[name], "entries": sum(1 for _ in handles[name].keys())}  # noqa: SIM118
        scopes = {}
        for sc in (manifest.scopes.values() if manifest else []):
            scopes[sc.name] = {"id": sc.id, "kind": sc.kind, "labels": sc.labels, "pid_ns": sc.pid_ns,
                               "mnt_ns": sc.mnt_ns, "ruleset_digest": sc.ruleset_digest,
                               "rule_count": sc.rule_count, "map_nodes": counts.get(sc.id, 0)}
        event_drops = drops(handles["warden_drops"])
    return EngineStatus(tuple(link_statuses(lib, pins, manifest)), map_info, scopes,
                        {k: v["digest"] for k, v in (manifest.objects.items() if manifest else [])},
                        event_drops, loaded=True)


def health_problems(lib: Libbpf, pins: EnginePins, manifest: Manifest) -> list[str]:
    """Problems, one line each; empty when every recorded link is pinned and attached with the recorded
    program tag and the maps hold exactly the recorded tables of every scope. The maps must be pinned."""
    problems: list[str] = []
    statuses = {(s.object, s.program): s for s in link_statuses(lib, pins, manifest)}
    for name, obj in manifest.objects.items():
        for prog, info in obj["programs"].items():
            st = statuses.get((name, prog))
            if st is None or st.pin != str(Path(obj["dir"]) / prog):
                problems.append(f"{name}/{prog}: link not pinned")
            elif not st.attached:
                problems.append(f"{name}/{prog}: link not attached")
            elif st.tag != info["tag"]:
                problems.append(f"{name}/{prog}: program tag {st.tag} != recorded {info['tag']}")
    with pins.open_maps(lib) as handles:
        nodes = handles["warden_rules"].contents()
        cfgs = handles["warden_scopes"].contents()
        meta = handles["warden_meta"].contents()
        pattern_digests = {sc.id: patterns.kernel_digest(handles, sc.id) for sc in manifest.scopes.values()}
    for sc in manifest.scopes.values():
        tables = maps.ScopeTables(sc.id, cfg=cfgs.get(maps.SCOPE_ID.pack(sc.id), b""))
        tables.nodes = {k: v for k, v in nodes.items() if maps.RULE_KEY.unpack(k)[2] == sc.id}
        tables.patterns_digest = pattern_digests[sc.id]
        if tables.digest() != sc.table_digest:
            problems.append(f"scope {sc.name}: map contents differ from RuleSet {sc.ruleset_digest}")
        if meta.get(maps.meta_key(f"rs/{sc.id}")) != maps.digest_bytes(sc.ruleset_digest):
            problems.append(f"scope {sc.name}: warden_meta RuleSet digest differs from the manifest")
    return problems
