"""The BPF-LSM enforcement engine: load, pin, adopt, sync, upgrade and tear down warden's objects.

Lifecycle (Tetragon's sensor steps, with pins that always outlive the process):
- load: open the CO-RE objects (file_guard, exec_guard, net_guard, cap_guard); the first creates the
  shared maps, the others reuse them; fill the maps; only then attach the programs and pin their links.
- adopt: when the pinned links run the programs of the shipped objects (object digest in the link pin
  directory, program tags equal to those recorded at load), nothing is detached or reloaded; only the map
  contents are synced to the new RuleSets, additions before removals, so no rule is ever missing.
- upgrade: LSM (tracing) links cannot be updated in place, so new links are attached and pinned first
  and the old ones unpinned afterwards (make-before-break): both run for a moment, never neither.
- teardown: the only thing that unpins.

Pins (bpffs): /sys/fs/bpf/warden/{maps/<map>, events, links/<object>-<digest12>/<program>}.
State: /run/warden/engine.json (0600, written atomically): object digests and program tags, the RuleSet
and table digests per scope, the container registry, alert id -> policy metadata. The kernel state says
what is loaded too: warden_meta holds each object digest and each scope's RuleSet digest.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bpf.kernel import maps
from bpf.kernel.events import Alert, EventContext, ScopeInfo, decode_event
from bpf.kernel.libbpf import BpfError, BpfObject, Libbpf, Link, MapHandle, RingBuffer
from bpf.kernel.objects import ObjectNotFound, object_digest, object_path
from bpf.policy.compiler import AnyContainerScope, ContainerScope, HostScope, Postures, compile
from bpf.policy.model import Policy, PolicyError
from bpf.policy.ruleset import RuleAlert, RuleSet

OBJECTS: Final = ("file_guard", "exec_guard", "net_guard", "cap_guard")
SHARED_MAPS: Final = ("warden_rules", "warden_sources", "warden_scopes", "warden_ctrs", "warden_config",
                      "warden_meta", "warden_drops")
EVENTS_MAP: Final = "warden_events"
MANIFEST_FORMAT: Final = "coco-warden/engine/v1"
DEFAULT_PIN_DIR: Final = Path("/sys/fs/bpf/warden")
DEFAULT_STATE_DIR: Final = Path("/run/warden")
DEFAULT_POSTURES: Final = Postures()
BPF_FS_MAGIC: Final = 0xCAFE4A11


class EngineError(Exception):
    """The engine could not do what was asked; the message is one line."""


class BpffsError(EngineError):
    """bpffs is not mounted and could not be mounted."""


class EngineStateError(EngineError):
    """Pinned state or the manifest is missing or inconsistent."""


class EngineLoadError(EngineError):
    """A BPF object failed to load or attach."""


class EngineRuleError(EngineError):
    """Policies could not be compiled or encoded into the maps."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --------------------------------------------------------------------------------------------------------
# bpffs


def _is_bpffs(path: Path) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)

    class StatFs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120)]

    buf = StatFs()
    if libc.statfs(str(path).encode(), ctypes.byref(buf)) != 0:
        return False
    return bool((buf.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC)


def ensure_bpffs(root: Path = Path("/sys/fs/bpf")) -> None:
    """Mount bpffs at `root` unless it is already there (systemd mounts it; a bare guest may not)."""
    if _is_bpffs(root):
        return
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "bpf", "bpf", str(root)], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not _is_bpffs(root):
        raise BpffsError(f"{root}: bpffs not mounted and mount failed: {done.stderr.strip() or done.returncode}")


# --------------------------------------------------------------------------------------------------------
# Reports


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
class EngineReport:
    adopted: tuple[str, ...]  # objects whose pinned links were kept
    loaded: tuple[str, ...]  # objects loaded and attached now (fresh or upgrade)
    link_ids: Mapping[str, int]  # "<object>/<program>" -> link id
    ruleset_digests: Mapping[str, str]  # scope name -> RuleSet digest
    object_digests: Mapping[str, str]
    rule_counts: Mapping[str, int]
    timings_s: Mapping[str, float]
    added: int  # map entries written (new or changed)
    removed: int

    @property
    def mode(self) -> str:
        if not self.loaded:
            return "adopted"
        return "loaded" if not self.adopted else "mixed"

    def to_json(self) -> str:
        return json.dumps({"mode": self.mode, "adopted": list(self.adopted), "loaded": list(self.loaded),
                           "link_ids": dict(self.link_ids), "ruleset_digests": dict(self.ruleset_digests),
                           "object_digests": dict(self.object_digests), "rule_counts": dict(self.rule_counts),
                           "timings_s": dict(self.timings_s), "added": self.added, "removed": self.removed},
                          indent=2, sort_keys=True)


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


# --------------------------------------------------------------------------------------------------------
# Manifest


@dataclass
class _Scope:
    id: int
    name: str
    kind: str  # host | any-container | container
    labels: dict[str, str] = field(default_factory=dict)
    pid_ns: int = 0
    mnt_ns: int = 0
    ruleset_digest: str = ""
    table_digest: str = ""
    rule_count: int = 0


@dataclass
class _Manifest:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {digest, dir, programs}
    scopes: dict[int, _Scope] = field(default_factory=dict)
    alerts: dict[int, RuleAlert] = field(default_factory=dict)
    host_mnt_ns: int = 0
    postures: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "format": MANIFEST_FORMAT,
            "objects": self.objects,
            "scopes": {str(k): vars(v) for k, v in sorted(self.scopes.items())},
            "alerts": {str(k): {"policy": a.policy, "severity": a.severity, "tags": list(a.tags),
                                "message": a.message} for k, a in sorted(self.alerts.items())},
            "host_mnt_ns": self.host_mnt_ns,
            "postures": self.postures,
        }, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> _Manifest:
        data = json.loads(text)
        if data.get("format") != MANIFEST_FORMAT:
            raise EngineStateError(f"manifest format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        return cls(
            objects=dict(data["objects"]),
            scopes={int(k): _Scope(**v) for k, v in data["scopes"].items()},
            alerts={int(k): RuleAlert(v["policy"], v["severity"], tuple(v["tags"]), v["message"])
                    for k, v in data["alerts"].items()},
            host_mnt_ns=int(data["host_mnt_ns"]),
            postures=dict(data.get("postures", {})),
        )


# --------------------------------------------------------------------------------------------------------
# The engine


class Engine:
    def __init__(self, pin_dir: Path = DEFAULT_PIN_DIR, state_dir: Path = DEFAULT_STATE_DIR,
                 lib: Libbpf | None = None) -> None:
        self.pin_dir = pin_dir
        self.state_dir = state_dir
        self._lib = lib
        self._policies: tuple[Policy, ...] = ()
        self._postures = Postures()
        self._host_postures = Postures()
        self._have_policies = False

    # -- paths ---------------------------------------------------------------------------------

    @property
    def lib(self) -> Libbpf:
        if self._lib is None:
            self._lib = Libbpf()
        return self._lib

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "engine.json"

    @property
    def events_pin(self) -> Path:
        return self._map_pin(EVENTS_MAP)

    def _map_pin(self, name: str) -> Path:
        return self.pin_dir / "events" if name == EVENTS_MAP else self.pin_dir / "maps" / name

    def _new_link_dir(self, name: str, digest: str) -> Path:
        # A new directory per attach, never reused: make-before-break needs the old pins to stay
        # until the new links are pinned, even when the same object is attached again.
        return self.pin_dir / "links" / f"{name}-{digest.removeprefix('sha256:')[:12]}-{time.time_ns()}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (supervisor, CLI, image builder): map syncs must not interleave."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / "engine.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- manifest ------------------------------------------------------------------------------

    def _read_manifest(self) -> _Manifest | None:
        try:
            return _Manifest.from_json(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineStateError(f"{self.manifest_path}: unreadable manifest: {_one_line(exc)}") from None

    def _write_manifest(self, manifest: _Manifest) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.manifest_path.with_name(f".engine.json.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(manifest.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.manifest_path)

    # -- map access ----------------------------------------------------------------------------

    def _open_maps(self) -> dict[str, MapHandle]:
        handles: dict[str, MapHandle] = {}
        try:
            for name in (*SHARED_MAPS, EVENTS_MAP):
                handles[name] = MapHandle.open_pinned(self.lib, self._map_pin(name))
        except BpfError as exc:
            for handle in handles.values():
                handle.close()
            raise EngineStateError(f"pinned maps incomplete under {self.pin_dir}: {_one_line(exc)}") from None
        return handles

    def _maps_pinned(self) -> bool:
        return all(self._map_pin(name).exists() for name in (*SHARED_MAPS, EVENTS_MAP))

    def map_ids(self) -> tuple[int, ...]:
        """Kernel ids of the pinned maps (for self-protection's write guard); () when none are pinned.
        Opens the pins only: cheaper than status(), which also counts every rule and reads every link."""
        if not self._maps_pinned():
            return ()
        handles = self._open_maps()
        try:
            return tuple(handle.info.id for handle in handles.values())
        finally:
            for handle in handles.values():
                handle.close()

    @staticmethod
    def _read_all(handle: MapHandle) -> dict[bytes, bytes]:
        out = {}
        for key in list(handle.keys()):
            value = handle.lookup(key)
            if value is not None:
                out[key] = value
        return out

    # -- compile -------------------------------------------------------------------------------

    def _compile(self, manifest: _Manifest) -> dict[int, tuple[_Scope, RuleSet, maps.ScopeTables]]:
        out = {}
        for sc in manifest.scopes.values():
            scope: HostScope | ContainerScope | AnyContainerScope
            if sc.kind == "host":
                scope = HostScope()
            elif sc.kind == "any-container":
                scope = AnyContainerScope()
            else:
                scope = ContainerScope(sc.name, sc.labels)
            try:
                postures = self._host_postures if sc.kind == "host" else self._postures
                ruleset = compile(self._policies, scope, postures=postures)
                tables = maps.encode_scope(sc.id, ruleset, maps.resolve_in_root("/"))
            except (PolicyError, maps.EncodingError) as exc:
                raise EngineRuleError(f"scope {scope}: {_one_line(exc)}") from None
            sc.ruleset_digest = ruleset.digest
            sc.table_digest = tables.digest()
            sc.rule_count = ruleset.rule_count
            out[sc.id] = (sc, ruleset, tables)
        return out

    # -- sync ----------------------------------------------------------------------------------

    def _sync(self, handles: Mapping[str, MapHandle], tables: Iterable[maps.ScopeTables],
              scope_ids: Iterable[int]) -> tuple[int, int]:
        """Make the rules/sources/scopes maps hold exactly `tables` for `scope_ids` (other scopes are
        left alone; sources are global and kept if any scope still uses them). Additions first, deepest
        first: a node is written only after every node its `below` and `skip` lead to holds its new value,
        so a walk sees old or new nodes, never a jump into a missing one. Then scope configurations;
        removals last, deepest first (nothing new leads to them)."""
        ids = set(scope_ids)
        tables = list(tables)
        want_nodes: dict[bytes, bytes] = {}
        want_cfg: dict[bytes, bytes] = {}
        for t in tables:
            want_nodes.update(t.nodes)
            want_cfg[maps.SCOPE_ID.pack(t.scope)] = t.cfg
        rules, sources, scopes = handles["warden_rules"], handles["warden_sources"], handles["warden_scopes"]
        have_nodes = {k: v for k, v in self._read_all(rules).items()
                      if maps.RULE_KEY.unpack(k)[2] in ids}
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

    def _prune_sources(self, handles: Mapping[str, MapHandle], tables: Iterable[maps.ScopeTables]) -> int:
        keep: set[bytes] = set()
        for t in tables:
            keep.update(t.sources)
        removed = 0
        for key in list(handles["warden_sources"].keys()):
            if key not in keep:
                handles["warden_sources"].delete(key)
                removed += 1
        return removed

    def _write_meta(self, handles: Mapping[str, MapHandle], manifest: _Manifest) -> None:
        meta = handles["warden_meta"]
        want = {maps.meta_key(f"obj/{name}"): maps.digest_bytes(o["digest"]) for name, o in manifest.objects.items()}
        want.update({maps.meta_key(f"rs/{sc.id}"): maps.digest_bytes(sc.ruleset_digest)
                     for sc in manifest.scopes.values()})
        for key, value in want.items():
            meta.update(key, value)
        for key in list(meta.keys()):
            if key not in want:
                meta.delete(key)

    # -- load / adopt --------------------------------------------------------------------------

    def _pinned_links_match(self, name: str, digest: str, recorded: Mapping[str, Any] | None) -> bool:
        """Whether every program of object `name` (this digest) has a pinned link running the program
        whose tag was recorded when it was loaded."""
        if recorded is None or recorded.get("digest") != digest or "dir" not in recorded:
            return False
        link_dir = Path(recorded["dir"])
        programs: Mapping[str, Any] = recorded.get("programs", {})
        if not programs:
            return False
        for prog, info in programs.items():
            try:
                link = Link.open_pinned(self.lib, link_dir / prog)
            except BpfError:
                return False
            try:
                tag = self.lib.prog_info_by_id(link.info().prog_id).tag
            except BpfError:
                return False
            finally:
                link.release()
            if tag != info.get("tag"):
                return False
        return True

    def _load_object(self, name: str, path: Path, handles: Mapping[str, MapHandle] | None) -> BpfObject:
        obj = BpfObject(self.lib, path)
        try:
            if handles is not None:
                for map_name in (*SHARED_MAPS, EVENTS_MAP):
                    obj.reuse_map(map_name, handles[map_name].fd)
            obj.load()
        except BpfError as exc:
            obj.close()
            raise EngineLoadError(f"{name}: load failed: {_one_line(exc)}{_verifier_reason(exc.libbpf_log)}") from None
        return obj

    def _attach_and_pin(self, name: str, digest: str, obj: BpfObject) -> dict[str, Any]:
        link_dir = self._new_link_dir(name, digest)
        link_dir.mkdir(parents=True)
        programs: dict[str, Any] = {}
        for prog in obj.programs():
            try:
                link = prog.attach()
            except BpfError as exc:
                raise EngineLoadError(f"{name}/{prog.name}: attach failed: {_one_line(exc)}") from None
            try:
                link.pin(link_dir / prog.name)
                info = link.info()
                programs[prog.name] = {"tag": prog.info().tag, "prog_id": info.prog_id, "link_id": info.id,
                                       "hook": prog.section}
            finally:
                link.release()  # pinned: stays attached
        return {"digest": digest, "dir": str(link_dir), "programs": programs}

    def _unpin_other_link_dirs(self, name: str, keep: Path) -> list[str]:
        removed: list[str] = []
        links_root = self.pin_dir / "links"
        if not links_root.is_dir():
            return removed
        for d in sorted(links_root.iterdir()):
            if d == keep or d.name.split("-", 1)[0] != name:
                continue
            for pin in sorted(d.iterdir()):
                pin.unlink()
                removed.append(str(pin))
            d.rmdir()
        return removed

    def load_or_adopt(self, policies: Sequence[Policy], postures: Postures = DEFAULT_POSTURES,
                      host_postures: Postures | None = None) -> EngineReport:
        """Enforce `policies`: adopt the pinned programs when they are the shipped ones, else load (or
        upgrade make-before-break); sync every scope's rules (host, any-container, registered containers).
        `postures` apply to container scopes, `host_postures` (default: the same) to the host scope."""
        with self._locked():
            return self._load_or_adopt(policies, postures, host_postures or postures)

    def _load_or_adopt(self, policies: Sequence[Policy], postures: Postures, host_postures: Postures) -> EngineReport:
        timings: dict[str, float] = {}
        start = time.monotonic()
        self._policies = tuple(policies)
        self._postures = postures
        self._host_postures = host_postures
        self._have_policies = True
        ensure_bpffs(self.pin_dir.parent)
        (self.pin_dir / "maps").mkdir(parents=True, exist_ok=True)
        previous = self._read_manifest()
        manifest = previous or _Manifest()
        manifest.postures = {"file": postures.file.value, "network": postures.network.value,
                             "capabilities": postures.capabilities.value,
                             "host_file": host_postures.file.value, "host_network": host_postures.network.value,
                             "host_capabilities": host_postures.capabilities.value}
        manifest.scopes.setdefault(maps.SCOPE_HOST, _Scope(maps.SCOPE_HOST, "host", "host"))
        manifest.scopes.setdefault(maps.SCOPE_ANY_CONTAINER,
                                   _Scope(maps.SCOPE_ANY_CONTAINER, "any-container", "any-container"))
        manifest.host_mnt_ns = os.stat("/proc/1/ns/mnt").st_ino
        compiled = self._compile(manifest)
        timings["compile"] = time.monotonic() - start

        try:
            paths = {name: object_path(name) for name in OBJECTS}
        except ObjectNotFound as exc:
            raise EngineLoadError(_one_line(exc)) from None
        digests = {name: object_digest(p) for name, p in paths.items()}

        adopted: list[str] = []
        to_load: list[str] = []
        maps_exist = self._maps_pinned()
        for name in OBJECTS:
            recorded = manifest.objects.get(name) if previous else None
            if maps_exist and self._pinned_links_match(name, digests[name], recorded):
                adopted.append(name)
            else:
                to_load.append(name)
        timings["inspect"] = time.monotonic() - start - timings["compile"]

        t0 = time.monotonic()
        loaded_objs: dict[str, BpfObject] = {}
        handles: dict[str, MapHandle] = {}
        try:
            if maps_exist:
                handles = self._open_maps()
            else:
                # Fresh: the first object creates the maps; pin them before anything else.
                first = self._load_object(OBJECTS[0], paths[OBJECTS[0]], None)
                loaded_objs[OBJECTS[0]] = first
                for map_name in (*SHARED_MAPS, EVENTS_MAP):
                    try:
                        first.pin_map(map_name, self._map_pin(map_name))
                    except BpfError as exc:
                        raise EngineLoadError(f"pin {map_name}: {_one_line(exc)}") from None
                handles = self._open_maps()
            for name in to_load:
                if name not in loaded_objs:
                    loaded_objs[name] = self._load_object(name, paths[name], handles)
            timings["load"] = time.monotonic() - t0

            # Rules before links: a program never runs against half-written maps.
            t0 = time.monotonic()
            config = handles["warden_config"]
            config.update(maps.SCOPE_ID.pack(0), manifest.host_mnt_ns.to_bytes(8, "little"))
            added, removed = self._sync(handles, [c[2] for c in compiled.values()], compiled)
            removed += self._prune_sources(handles, [c[2] for c in compiled.values()])
            manifest.alerts = {**(previous.alerts if previous else {}),
                               **{k: v for c in compiled.values() for k, v in c[2].alerts.items()}}
            timings["sync"] = time.monotonic() - t0

            t0 = time.monotonic()
            for name in to_load:
                manifest.objects[name] = self._attach_and_pin(name, digests[name], loaded_objs[name])
            # make-before-break: only now drop links of other (older) object versions
            for name in to_load:
                self._unpin_other_link_dirs(name, Path(manifest.objects[name]["dir"]))
            timings["attach"] = time.monotonic() - t0
            self._write_meta(handles, manifest)
            self._write_manifest(manifest)
            # keep only the alert ids in use now (the previous set was kept through the switch)
            manifest.alerts = {k: v for c in compiled.values() for k, v in c[2].alerts.items()}
            self._write_manifest(manifest)
        finally:
            for obj in loaded_objs.values():
                obj.close()
            for handle in handles.values():
                handle.close()
        timings["total"] = time.monotonic() - start
        return EngineReport(
            adopted=tuple(adopted), loaded=tuple(to_load),
            link_ids={f"{name}/{prog}": info["link_id"] for name in OBJECTS
                      for prog, info in manifest.objects[name]["programs"].items()},
            ruleset_digests={sc.name: sc.ruleset_digest for sc, _, _ in compiled.values()},
            object_digests=digests,
            rule_counts={sc.name: sc.rule_count for sc, _, _ in compiled.values()},
            timings_s={k: round(v, 4) for k, v in timings.items()},
            added=added, removed=removed,
        )

    # -- containers ----------------------------------------------------------------------------

    def _require_manifest(self) -> _Manifest:
        manifest = self._read_manifest()
        if manifest is None or not self._maps_pinned():
            raise EngineStateError(f"no engine loaded (no {self.manifest_path} or pins under {self.pin_dir}); "
                                   "run load_or_adopt first")
        return manifest

    def register_container(self, name: str, labels: Mapping[str, str], pid_ns: int, mnt_ns: int) -> str:
        """Compile and write the container's scope, then map its namespaces to it (never half-configured).
        Uses the policies of the last load_or_adopt in this process. Returns the scope's RuleSet digest."""
        with self._locked():
            return self._register_container(name, labels, pid_ns, mnt_ns)

    def _register_container(self, name: str, labels: Mapping[str, str], pid_ns: int, mnt_ns: int) -> str:
        manifest = self._require_manifest()
        if not self._have_policies:
            raise EngineStateError("register_container: call load_or_adopt(policies) on this Engine first "
                                   "(the container's rules are compiled from those policies)")
        existing = next((s for s in manifest.scopes.values() if s.kind == "container"
                         and (s.pid_ns, s.mnt_ns) == (pid_ns, mnt_ns)), None)
        used = set(manifest.scopes)
        scope_id = existing.id if existing else next(i for i in range(maps.SCOPE_FIRST_CONTAINER, 1 << 31)
                                                     if i not in used)
        sc = _Scope(scope_id, name, "container", dict(labels), pid_ns, mnt_ns)
        compiled = self._compile(_Manifest(scopes={scope_id: sc}))
        handles = self._open_maps()
        try:
            self._sync(handles, [compiled[scope_id][2]], [scope_id])
            manifest.scopes[scope_id] = sc
            manifest.alerts.update(compiled[scope_id][2].alerts)
            handles["warden_meta"].update(maps.meta_key(f"rs/{scope_id}"), maps.digest_bytes(sc.ruleset_digest))
            self._write_manifest(manifest)
            handles["warden_ctrs"].update(maps.ns_key(pid_ns, mnt_ns), maps.SCOPE_ID.pack(scope_id))
        finally:
            for handle in handles.values():
                handle.close()
        return sc.ruleset_digest

    def unregister_container(self, pid_ns: int, mnt_ns: int) -> None:
        with self._locked():
            self._unregister_container(pid_ns, mnt_ns)

    def _unregister_container(self, pid_ns: int, mnt_ns: int) -> None:
        manifest = self._require_manifest()
        sc = next((s for s in manifest.scopes.values() if s.kind == "container"
                   and (s.pid_ns, s.mnt_ns) == (pid_ns, mnt_ns)), None)
        handles = self._open_maps()
        try:
            handles["warden_ctrs"].delete(maps.ns_key(pid_ns, mnt_ns))  # unmap first, then clear
            if sc is None:
                return
            self._sync(handles, [], [sc.id])
            handles["warden_scopes"].delete(maps.SCOPE_ID.pack(sc.id))
            handles["warden_meta"].delete(maps.meta_key(f"rs/{sc.id}"))
            del manifest.scopes[sc.id]
            self._write_manifest(manifest)
        finally:
            for handle in handles.values():
                handle.close()

    # -- status / health -----------------------------------------------------------------------

    def _drops(self, handle: MapHandle) -> int:
        ncpu = _possible_cpus()
        value = ctypes.create_string_buffer(8 * ncpu)
        key = ctypes.create_string_buffer(bytes(4), 4)
        try:
            self.lib.call_int("lookup(warden_drops)", self.lib.bpf_map_lookup_elem, handle.fd, key, value)
        except BpfError:
            return 0
        return sum(int.from_bytes(value.raw[i * 8 : i * 8 + 8], "little") for i in range(ncpu))

    def event_drops(self) -> int:
        """Events the kernel could not put in the ring buffer (it was full), since the maps were created."""
        handle = MapHandle.open_pinned(self.lib, self._map_pin("warden_drops"))
        try:
            return self._drops(handle)
        finally:
            handle.close()

    def _link_statuses(self, manifest: _Manifest | None) -> list[LinkStatus]:
        out: list[LinkStatus] = []
        links_root = self.pin_dir / "links"
        if not links_root.is_dir():
            return out
        for d in sorted(links_root.iterdir()):
            obj_name = d.name.split("-", 1)[0]
            recorded = (manifest.objects.get(obj_name, {}) if manifest else {}).get("programs", {})
            for pin in sorted(d.iterdir()):
                hook = recorded.get(pin.name, {}).get("hook", "")
                try:
                    link = Link.open_pinned(self.lib, pin)
                    try:
                        info = link.info()
                        prog = self.lib.prog_info_by_id(info.prog_id)
                        out.append(LinkStatus(obj_name, pin.name, hook, str(pin), info.id, info.prog_id,
                                              prog.tag, True))
                    finally:
                        link.release()
                except BpfError:
                    out.append(LinkStatus(obj_name, pin.name, hook, str(pin), 0, 0, "", False))
        return out

    def status(self) -> EngineStatus:
        manifest = self._read_manifest()
        if not self._maps_pinned():
            return EngineStatus((), {}, {}, {}, 0, loaded=False)
        handles = self._open_maps()
        try:
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
            drops = self._drops(handles["warden_drops"])
        finally:
            for handle in handles.values():
                handle.close()
        return EngineStatus(tuple(self._link_statuses(manifest)), map_info, scopes,
                            {k: v["digest"] for k, v in (manifest.objects.items() if manifest else [])},
                            drops, loaded=True)

    def health(self) -> list[str]:
        """Problems, one line each; empty when every pinned link is attached with the recorded program tag
        and the maps hold exactly the recorded tables of every scope."""
        problems: list[str] = []
        manifest = self._read_manifest()
        if manifest is None:
            return [f"{self.manifest_path}: missing"]
        if not self._maps_pinned():
            return [f"{self.pin_dir}: maps not pinned"]
        statuses = {(s.object, s.program): s for s in self._link_statuses(manifest)}
        for name, obj in manifest.objects.items():
            for prog, info in obj["programs"].items():
                st = statuses.get((name, prog))
                if st is None or st.pin != str(Path(obj["dir"]) / prog):
                    problems.append(f"{name}/{prog}: link not pinned")
                elif not st.attached:
                    problems.append(f"{name}/{prog}: link not attached")
                elif st.tag != info["tag"]:
                    problems.append(f"{name}/{prog}: program tag {st.tag} != recorded {info['tag']}")
        handles = self._open_maps()
        try:
            nodes = self._read_all(handles["warden_rules"])
            cfgs = self._read_all(handles["warden_scopes"])
            meta = self._read_all(handles["warden_meta"])
            for sc in manifest.scopes.values():
                tables = maps.ScopeTables(sc.id, cfg=cfgs.get(maps.SCOPE_ID.pack(sc.id), b""))
                tables.nodes = {k: v for k, v in nodes.items() if maps.RULE_KEY.unpack(k)[2] == sc.id}
                if tables.digest() != sc.table_digest:
                    problems.append(f"scope {sc.name}: map contents differ from RuleSet {sc.ruleset_digest}")
                if meta.get(maps.meta_key(f"rs/{sc.id}")) != maps.digest_bytes(sc.ruleset_digest):
                    problems.append(f"scope {sc.name}: warden_meta RuleSet digest differs from the manifest")
        finally:
            for handle in handles.values():
                handle.close()
        return problems

    def event_context(self) -> EventContext:
        manifest = self._read_manifest() or _Manifest()
        return EventContext(scopes={sc.id: ScopeInfo(sc.name, sc.labels) for sc in manifest.scopes.values()},
                            alerts=dict(manifest.alerts))

    def read_alerts(self, timeout_ms: int = 200) -> list[Alert]:
        """Consume the pinned ring buffer until it stays empty for `timeout_ms`; decode each event.
        (The agent owns the long-running reader; this is for tools and tests.)"""
        handle = MapHandle.open_pinned(self.lib, self._map_pin(EVENTS_MAP))
        context = self.event_context()
        alerts: list[Alert] = []
        ring = RingBuffer(self.lib, handle.fd, lambda raw: alerts.append(decode_event(raw, context)))
        try:
            while ring.poll(timeout_ms) > 0:
                pass
        finally:
            ring.free()
            handle.close()
        return alerts

    # -- teardown ------------------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """Unpin every link (detaching the programs) and every map; remove the manifest. Returns what
        was removed, for the log."""
        with self._locked():
            return self._teardown()

    def _teardown(self) -> list[str]:
        removed: list[str] = []
        links_root = self.pin_dir / "links"
        if links_root.is_dir():
            for d in sorted(links_root.iterdir()):
                for pin in sorted(d.iterdir()):
                    pin.unlink()
                    removed.append(str(pin))
                d.rmdir()
            links_root.rmdir()
        for name in (*SHARED_MAPS, EVENTS_MAP):
            pin = self._map_pin(name)
            with contextlib.suppress(FileNotFoundError):
                pin.unlink()
                removed.append(str(pin))
        for d in (self.pin_dir / "maps", self.pin_dir):
            with contextlib.suppress(FileNotFoundError, OSError):
                d.rmdir()
        with contextlib.suppress(FileNotFoundError):
            self.manifest_path.unlink()
            removed.append(str(self.manifest_path))
        return removed


def _verifier_reason(log: str) -> str:
    """The verifier's own complaint (the lines before "processed N insns"), if the log has one."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("processed ") and "insns" in line:
            return " (verifier: " + "; ".join(lines[max(0, i - 2) : i]) + ")"
    return ""


def _possible_cpus() -> int:
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    total = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        total += (int(hi) if hi else int(lo)) - int(lo) + 1
    return total


__all__ = [
    "BpffsError",
    "Engine",
    "EngineError",
    "EngineLoadError",
    "EngineReport",
    "EngineRuleError",
    "EngineStateError",
    "EngineStatus",
    "LinkStatus",
    "ensure_bpffs",
]
