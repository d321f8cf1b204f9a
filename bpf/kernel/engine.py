"""The BPF-LSM enforcement engine's verbs: load, adopt, sync, attach (upgrade) and tear down warden's objects.

Lifecycle (Tetragon's sensor steps, with pins that always outlive the process):
- load: create and pin the shared maps (the first object's maps alone), then load the CO-RE objects (file_guard,
  exec_guard, net_guard, cap_guard, scope_guard) in parallel, each reusing them; fill the maps; only then attach
  the programs and pin their links.
- adopt: when the pinned links run the programs of the shipped objects (object digest in the link pin
  directory, program tags equal to those recorded at load), nothing is detached or reloaded; only the map
  contents are synced to the new RuleSets, additions before removals, so no rule is ever missing.
- attach, as an upgrade: LSM (tracing) links cannot be updated in place, so new links are attached and
  pinned first and the old ones unpinned afterwards (make-before-break): both run for a moment, never
  neither.
- teardown: the only thing that unpins.

Where things are pinned, and pin removal: bpf.kernel.pins. What was loaded: bpf.kernel.manifest (and
warden_meta in the kernel). How map contents change without a gap: bpf.kernel.sync.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

from bpf.kernel import maps, patterns
from bpf.kernel.errors import EngineLoadError, EngineRuleError, EngineStateError, one_line
from bpf.kernel.events import Alert, EventContext, ScopeInfo, decode_event
from bpf.kernel.libbpf import BpfError, BpfObject, Libbpf, Link, MapHandle, MapSet, RingBuffer
from bpf.kernel.loading import OBJECTS, Preload, check_loaded, load_in_parallel, load_object
from bpf.kernel.manifest import DEFAULT_STATE_DIR, Manifest, ManifestFile, ScopeRecord
from bpf.kernel.objects import ObjectNotFound, object_digest, object_path
from bpf.kernel.pins import DEFAULT_PIN_DIR, EnginePins, ensure_bpffs
from bpf.kernel.status import EngineStatus, drops, health_problems, read_status
from bpf.kernel.sync import new_generation, prune_sources, sync_scopes, write_meta
from bpf.policy.compiler import AnyContainerScope, ContainerScope, HostScope, PodUnionScope, Postures, compile
from bpf.policy.model import Policy, PolicyError
from bpf.policy.ruleset import RuleSet

_T = TypeVar("_T")

DEFAULT_POSTURES: Final = Postures()
# Registered-container scope kinds (ScopeRecord.kind); trust.identity decides which one a container gets.
CONTAINER_UNION: Final = "container-union"  # name not in the signed pod: every policy its labels could meet
CONTAINER_UNION_ALL: Final = "container-union-all"  # no signed pod: every container policy
CONTAINER_KINDS: Final = frozenset({"container", CONTAINER_UNION, CONTAINER_UNION_ALL})


# --------------------------------------------------------------------------------------------------------
# Reports


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


# --------------------------------------------------------------------------------------------------------
# Steps' values


@dataclass(frozen=True)
class ContainerIdentity:
    """What alerts call a registered container (ContainerID, PodName, NamespaceName): informational only."""

    container_id: str = ""
    pod: str = ""
    namespace: str = ""


class _Compiled(NamedTuple):
    scope: ScopeRecord
    ruleset: RuleSet
    tables: maps.ScopeTables


class _Shipped(NamedTuple):
    path: Path
    digest: str


class _Stopwatch:
    def __init__(self) -> None:
        self.start = self._last = time.monotonic()

    def lap(self) -> float:
        """Seconds since the last lap (or the start)."""
        now = time.monotonic()
        seconds, self._last = now - self._last, now
        return seconds

    def total(self) -> float:
        return time.monotonic() - self.start


# --------------------------------------------------------------------------------------------------------
# The engine


class Engine:
    """warden's enforcement, pinned under `pin_dir`, recorded in `state_dir`."""

    def __init__(self, pin_dir: Path = DEFAULT_PIN_DIR, state_dir: Path = DEFAULT_STATE_DIR,
                 lib: Libbpf | None = None, preload: Preload | None = None) -> None:
        """`preload`: the shipped objects, being loaded since the process started; the first fresh load
        takes them (any other load releases them)."""
        self.pin_dir = pin_dir
        self.state_dir = state_dir
        self.pins = EnginePins(pin_dir)
        self.manifest_file = ManifestFile(state_dir)
        self._lib = lib
        self._policies: tuple[Policy, ...] = ()
        self._postures = Postures()
        self._host_postures = Postures()
        self._node_labels: Mapping[str, str] | None = None
        self._have_policies = False
        self._preload = preload

    @property
    def lib(self) -> Libbpf:
        if self._lib is None:
            self._lib = Libbpf()
        return self._lib

    @property
    def events_pin(self) -> Path:
        return self.pins.events

    def _open_maps(self) -> MapSet:
        return self.pins.open_maps(self.lib)

    def map_ids(self) -> tuple[int, ...]:
        """Kernel ids of every map the engine's programs use, for self-protection's write guard: the pinned
        ones and each object's own (file_guard's memo of allowed files, warden_held.h, which a write could
        turn into an allow); () when none are pinned."""
        if not self.pins.maps_pinned():
            return ()
        with self._open_maps() as handles:
            ids = {handle.info.id for handle in handles.values()}
        for link_dir in self.pins.link_dirs():
            for pin in link_dir.iterdir():
                try:
                    with Link.open_pinned(self.lib, pin) as link:
                        ids.update(self.lib.prog_map_ids(link.info().prog_id))
                except BpfError:
                    continue  # a pin no longer a link (health() reports it): no program to reach maps by
        return tuple(sorted(ids))

    # -- compile -------------------------------------------------------------------------------

    def _compile(self, manifest: Manifest) -> dict[int, _Compiled]:
        """Each scope's RuleSet and map tables; records their digests in the scope's record."""
        out = {}
        for sc in manifest.scopes.values():
            scope: HostScope | ContainerScope | AnyContainerScope | PodUnionScope
            if sc.kind == "host":
                scope = HostScope(self._node_labels)
            elif sc.kind == "any-container":
                scope = AnyContainerScope()
            elif sc.kind == CONTAINER_UNION:
                scope = PodUnionScope(sc.labels)
            elif sc.kind == CONTAINER_UNION_ALL:
                scope = PodUnionScope(None)
            else:
                scope = ContainerScope(sc.name, sc.labels)
            try:
                postures = self._host_postures if sc.kind == "host" else self._postures
                ruleset = compile(self._policies, scope, postures=postures)
                tables = maps.encode_scope(sc.id, ruleset, maps.resolve_in_root("/"))
            except (PolicyError, maps.EncodingError, ValueError) as exc:
                raise EngineRuleError(f"scope {scope}: {one_line(exc)}") from None
            sc.ruleset_digest = ruleset.digest
            sc.table_digest = tables.digest()
            sc.rule_count = ruleset.rule_count
            out[sc.id] = _Compiled(sc, ruleset, tables)
        return out

    # -- load / adopt --------------------------------------------------------------------------

    def load_or_adopt(self, policies: Sequence[Policy], postures: Postures = DEFAULT_POSTURES,
                      host_postures: Postures | None = None,
                      node_labels: Mapping[str, str] | None = None) -> EngineReport:
        """Enforce `policies`: adopt the pinned programs when they are the shipped ones, else load (or
        upgrade make-before-break); sync every scope's rules (host, any-container, registered containers).
        `postures` apply to container scopes, `host_postures` (default: the same) to the host scope.
        `node_labels`: this VM's node labels, when known, for host policies' nodeSelector (HostScope)."""
        self._node_labels = node_labels
        with self.manifest_file.locked():
            return self._load_or_adopt(policies, postures, host_postures or postures)

    def _load_or_adopt(self, policies: Sequence[Policy], postures: Postures, host_postures: Postures) -> EngineReport:
        clock = _Stopwatch()
        timings: dict[str, float] = {}
        self._policies = tuple(policies)
        self._postures = postures
        self._host_postures = host_postures
        self._have_policies = True
        ensure_bpffs(self.pin_dir.parent)
        previous = self.manifest_file.read()
        manifest = self._next_manifest(previous, postures, host_postures)
        compiled = self._compile(manifest)
        timings["compile"] = clock.lap()

        shipped = self._shipped_objects()
        maps_pinned = self.pins.maps_pinned()
        adopted = [name for name in OBJECTS
                   if maps_pinned and previous is not None
                   and self._pinned_links_match(shipped[name].digest, previous.objects.get(name))]
        to_load = [name for name in OBJECTS if name not in adopted]
        timings["inspect"] = clock.lap()

        with contextlib.ExitStack() as open_now:
            handles, loaded = self._load(to_load, shipped, fresh=not maps_pinned, stack=open_now, timings=timings)
            timings["load"] = clock.lap()
            # Rules before links: a program never runs against half-written maps.
            added, removed = self._sync(handles, manifest, previous, compiled)
            timings["sync"] = clock.lap()
            self._attach(to_load, shipped, loaded, manifest)
            timings["attach"] = clock.lap()
            self._record(handles, manifest, compiled)
        timings["total"] = clock.total()
        return EngineReport(
            adopted=tuple(adopted), loaded=tuple(to_load),
            link_ids={f"{name}/{prog}": info["link_id"] for name in OBJECTS
                      for prog, info in manifest.objects[name]["programs"].items()},
            ruleset_digests={c.scope.name: c.scope.ruleset_digest for c in compiled.values()},
            object_digests={name: s.digest for name, s in shipped.items()},
            rule_counts={c.scope.name: c.scope.rule_count for c in compiled.values()},
            timings_s={k: round(v, 4) for k, v in timings.items()},
            added=added, removed=removed,
        )

    def _next_manifest(self, previous: Manifest | None, postures: Postures, host_postures: Postures) -> Manifest:
        """The manifest to enforce: the previous one's objects and scopes, the standing scopes, postures."""
        manifest = previous or Manifest()
        manifest.postures = {"file": postures.file.value, "network": postures.network.value,
                             "capabilities": postures.capabilities.value,
                             "host_file": host_postures.file.value, "host_network": host_postures.network.value,
                             "host_capabilities": host_postures.capabilities.value}
        manifest.scopes.setdefault(maps.SCOPE_HOST, ScopeRecord(maps.SCOPE_HOST, "host", "host"))
        manifest.scopes.setdefault(maps.SCOPE_ANY_CONTAINER,
                                   ScopeRecord(maps.SCOPE_ANY_CONTAINER, "any-container", "any-container"))
        manifest.host_mnt_ns = os.stat("/proc/1/ns/mnt").st_ino
        return manifest

    def _shipped_objects(self) -> dict[str, _Shipped]:
        try:
            paths = {name: object_path(name) for name in OBJECTS}
        except ObjectNotFound as exc:
            raise EngineLoadError(one_line(exc)) from None
        return {name: _Shipped(path, object_digest(path)) for name, path in paths.items()}

    def _pinned_links_match(self, digest: str, recorded: Mapping[str, Any] | None) -> bool:
        """Whether every program of the object recorded (at this digest) has a pinned link running the
        program whose tag was recorded when it was loaded."""
        if recorded is None or recorded.get("digest") != digest or "dir" not in recorded:
            return False
        link_dir = Path(recorded["dir"])
        programs: Mapping[str, Any] = recorded.get("programs", {})
        if not programs:
            return False
        for prog, info in programs.items():
            try:
                with Link.open_pinned(self.lib, link_dir / prog) as link:
                    tag = link.program_info().tag
            except BpfError:
                return False
            if tag != info.get("tag"):
                return False
        return True

    def _load(self, to_load: Sequence[str], shipped: Mapping[str, _Shipped], *, fresh: bool,
              stack: contextlib.ExitStack, timings: dict[str, float]) -> tuple[MapSet, dict[str, BpfObject]]:
        """Load the objects `to_load` into the kernel (bpf.kernel.loading), reusing the pinned maps; when
        `fresh`, the maps are created first and pinned, or taken with the objects from a preload of the
        shipped objects (`timings["preloaded"]`: how long that took, in the background; "load" is then
        only the wait for it). Everything opened here is closed by `stack`."""
        preload, self._preload = self._preload, None
        taken = preload.take({name: s.digest for name, s in shipped.items()}) if preload and fresh else None
        if preload is not None:
            preload.close()  # whatever it loaded and was not taken
        if taken is not None:
            stack.callback(taken.close)
            timings["preloaded"] = taken.seconds
        if fresh:
            maps_owner = taken.maps_owner if taken is not None else stack.enter_context(
                load_object(self.lib, OBJECTS[0], shipped[OBJECTS[0]].path, None, maps_only=True))
            try:
                self.pins.pin_maps(maps_owner)
            except BpfError as exc:
                raise EngineLoadError(f"pin maps: {one_line(exc)}") from None
        handles = stack.enter_context(self._open_maps())
        if taken is not None:
            return handles, taken.objects
        loaded = load_in_parallel(self.lib, {name: shipped[name].path for name in to_load}, handles)
        for obj in loaded.values():
            stack.callback(obj.close)
        # What was loaded is what was hashed (the manifest records these digests), maps' creator included.
        check_loaded(loaded, {name: s.digest for name, s in shipped.items()}, maps_owner if fresh else None)
        return handles, loaded

    # -- sync ----------------------------------------------------------------------------------

    def _sync(self, handles: MapSet, manifest: Manifest, previous: Manifest | None,
              compiled: Mapping[int, _Compiled]) -> tuple[int, int]:
        """Every scope's maps to its new tables; the alert metadata of the old and the new rules both,
        until the switch is over (events of either may be in flight)."""
        handles["warden_config"].update(maps.SCOPE_ID.pack(0), manifest.host_mnt_ns.to_bytes(8, "little"))
        tables = [c.tables for c in compiled.values()]
        pattern_tables = [t.patterns for t in tables if t.patterns is not None]
        try:
            added = patterns.write_patterns(handles, pattern_tables)  # before any scope's flag says they exist
        except patterns.PatternPoolError as exc:
            raise EngineRuleError(one_line(exc)) from None
        written, removed = sync_scopes(handles, tables, compiled)
        added += written
        removed += patterns.prune_patterns(handles, pattern_tables, compiled)
        new_generation(handles)
        removed += prune_sources(handles, tables)
        manifest.alerts = {**(previous.alerts if previous else {}),
                           **{k: v for t in tables for k, v in t.alerts.items()}}
        return added, removed

    # -- attach --------------------------------------------------------------------------------

    def _attach(self, to_load: Sequence[str], shipped: Mapping[str, _Shipped], loaded: Mapping[str, BpfObject],
                manifest: Manifest) -> None:
        for name in to_load:
            manifest.objects[name] = self._attach_and_pin(name, shipped[name].digest, loaded[name])
        # make-before-break: only now drop links of other (older) object versions
        for name in to_load:
            self.pins.unpin_other_links(name, Path(manifest.objects[name]["dir"]))

    def _attach_and_pin(self, name: str, digest: str, obj: BpfObject) -> dict[str, Any]:
        link_dir = self.pins.new_link_dir(name, digest)
        programs: dict[str, Any] = {}
        for prog in obj.programs():
            try:
                link = prog.attach()
            except BpfError as exc:
                raise EngineLoadError(f"{name}/{prog.name}: attach failed: {one_line(exc)}") from None
            with link:  # released at the end: pinned, it stays attached
                link.pin(link_dir / prog.name)
                info = link.info()
                programs[prog.name] = {"tag": prog.info().tag, "prog_id": info.prog_id, "link_id": info.id,
                                       "hook": prog.section}
        return {"digest": digest, "dir": str(link_dir), "programs": programs}

    def _record(self, handles: MapSet, manifest: Manifest, compiled: Mapping[int, _Compiled]) -> None:
        """What is loaded, in the kernel (warden_meta) and in the manifest."""
        write_meta(handles, {name: o["digest"] for name, o in manifest.objects.items()},
                   {sc.id: sc.ruleset_digest for sc in manifest.scopes.values()})
        self.manifest_file.write(manifest)
        # keep only the alert ids in use now (the previous set was kept through the switch)
        manifest.alerts = {k: v for c in compiled.values() for k, v in c.tables.alerts.items()}
        self.manifest_file.write(manifest)

    # -- containers ----------------------------------------------------------------------------

    def _require_manifest(self) -> Manifest:
        manifest = self.manifest_file.read()
        if manifest is None or not self.pins.maps_pinned():
            raise EngineStateError(f"no engine loaded (no {self.manifest_file.path} or pins under {self.pin_dir}); "
                                   "run load_or_adopt first")
        return manifest

    def register_container(self, name: str, labels: Mapping[str, str], pid_ns: int, mnt_ns: int,
                           pid: int | None = None, *, kind: str = "container",
                           identity: ContainerIdentity | None = None) -> str:
        """Compile and write the container's scope, then map its namespaces to it (never half-configured),
        then record the scope on the container's first process `pid` (if given), so that it and every
        child it forks keep the container's rules whatever namespaces they enter later.
        Uses the policies of the last load_or_adopt in this process. Returns the scope's RuleSet digest.
        `kind`: CONTAINER_KINDS; "container" selects by name and labels, CONTAINER_UNION every policy that
        could select some container with these labels, CONTAINER_UNION_ALL every container policy.
        `identity` is what alerts name the container by; it never changes which rules apply."""
        if kind not in CONTAINER_KINDS:
            raise ValueError(f"register_container: unknown scope kind {kind!r}")
        with self.manifest_file.locked():
            return self._register_container(name, labels, pid_ns, mnt_ns, pid, kind,
                                            identity or ContainerIdentity())

    def _register_container(self, name: str, labels: Mapping[str, str], pid_ns: int, mnt_ns: int,
                            pid: int | None, kind: str, identity: ContainerIdentity) -> str:
        manifest = self._require_manifest()
        if not self._have_policies:
            raise EngineStateError("register_container: call load_or_adopt(policies) on this Engine first "
                                   "(the container's rules are compiled from those policies)")
        existing = self._container_scope(manifest, pid_ns, mnt_ns)
        used = set(manifest.scopes)
        scope_id = existing.id if existing else next(i for i in range(maps.SCOPE_FIRST_CONTAINER, 1 << 31)
                                                     if i not in used)
        sc = ScopeRecord(scope_id, name, kind, dict(labels), pid_ns, mnt_ns, identity.container_id,
                         identity.pod, identity.namespace)
        tables = self._compile(Manifest(scopes={scope_id: sc}))[scope_id].tables
        with self._open_maps() as handles, contextlib.ExitStack() as held:
            task = None if pid is None else held.enter_context(
                _ContainerTask(handles["warden_task_scope"], pid, pid_ns, mnt_ns))
            if task is not None:
                task.refuse_rescoping(scope_id)  # before anything is written
            held.callback(new_generation, handles)  # last, whatever was written before a failure
            pattern_tables = [tables.patterns] if tables.patterns is not None else []
            patterns.write_patterns(handles, pattern_tables)
            sync_scopes(handles, [tables], [scope_id])
            patterns.prune_patterns(handles, pattern_tables, [scope_id])
            manifest.scopes[scope_id] = sc
            manifest.alerts.update(tables.alerts)
            handles["warden_meta"].update(maps.meta_key(f"rs/{scope_id}"), maps.digest_bytes(sc.ruleset_digest))
            self.manifest_file.write(manifest)
            handles["warden_ctrs"].update(maps.ns_key(pid_ns, mnt_ns), maps.SCOPE_ID.pack(scope_id))
            if task is not None:
                task.record(scope_id)
        return sc.ruleset_digest

    def unregister_container(self, pid_ns: int, mnt_ns: int) -> None:
        with self.manifest_file.locked():
            self._unregister_container(pid_ns, mnt_ns)

    def _unregister_container(self, pid_ns: int, mnt_ns: int) -> None:
        manifest = self._require_manifest()
        sc = self._container_scope(manifest, pid_ns, mnt_ns)
        with self._open_maps() as handles, contextlib.ExitStack() as after:
            after.callback(new_generation, handles)  # last, whatever was written before a failure
            handles["warden_ctrs"].delete(maps.ns_key(pid_ns, mnt_ns))  # unmap first, then clear
            if sc is None:
                return
            sync_scopes(handles, [], [sc.id])
            handles["warden_scopes"].delete(maps.SCOPE_ID.pack(sc.id))
            patterns.prune_patterns(handles, [], [sc.id])
            handles["warden_meta"].delete(maps.meta_key(f"rs/{sc.id}"))
            del manifest.scopes[sc.id]
            self.manifest_file.write(manifest)

    @staticmethod
    def _container_scope(manifest: Manifest, pid_ns: int, mnt_ns: int) -> ScopeRecord | None:
        return next((s for s in manifest.scopes.values() if s.kind in CONTAINER_KINDS
                     and (s.pid_ns, s.mnt_ns) == (pid_ns, mnt_ns)), None)

    # -- status / health (bpf.kernel.status) ----------------------------------------------------

    def event_drops(self) -> int:
        """Events the kernel could not put in the ring buffer (it was full), since the maps were created."""
        with MapHandle.open_pinned(self.lib, self.pins.map_pin("warden_drops")) as handle:
            return drops(handle)

    def status(self) -> EngineStatus:
        return read_status(self.lib, self.pins, self.manifest_file.read())

    def health(self) -> list[str]:
        """Problems, one line each; empty when every pinned link is attached with the recorded program tag
        and the maps hold exactly the recorded tables of every scope."""
        manifest = self.manifest_file.read()
        if manifest is None:
            return [f"{self.manifest_file.path}: missing"]
        if not self.pins.maps_pinned():
            return [f"{self.pin_dir}: maps not pinned"]
        return health_problems(self.lib, self.pins, manifest)

    # -- events --------------------------------------------------------------------------------

    def event_context(self) -> EventContext:
        manifest = self.manifest_file.read() or Manifest()
        return EventContext(scopes={sc.id: ScopeInfo(sc.name, sc.labels, sc.container_id, sc.pod, sc.namespace)
                                    for sc in manifest.scopes.values()},
                            alerts=dict(manifest.alerts))

    def read_alerts(self, timeout_ms: int = 200) -> list[Alert]:
        """Consume the pinned ring buffer until it stays empty for `timeout_ms`; decode each event.
        (The agent owns the long-running reader; this is for tools and tests.)"""
        context = self.event_context()
        alerts: list[Alert] = []
        with MapHandle.open_pinned(self.lib, self.pins.events) as handle:
            ring = RingBuffer(self.lib, handle.fd, lambda raw: alerts.append(decode_event(raw, context)))
            try:
                while ring.poll(timeout_ms) > 0:
                    pass
            finally:
                ring.free()
        return alerts

    # -- teardown ------------------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """Unpin every link (detaching the programs) and every map; remove the manifest. Returns what
        was removed, for the log. Self-protection's pins are its own (bpf.kernel.self_protect)."""
        with self.manifest_file.locked():
            removed = self.pins.unpin_all()
            if self.manifest_file.remove():
                removed.append(str(self.manifest_file.path))
            return removed


class _ContainerTask:
    """A container's first process, held by one pidfd for the whole registration: its task storage entry
    (warden_task_scope, keyed by pidfd from user space) is read before anything is written and set
    last, on the same task whatever happens to its pid in between."""

    def __init__(self, handle: MapHandle, pid: int, pid_ns: int, mnt_ns: int) -> None:
        self._handle = handle
        self.pid = pid
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError as exc:
            raise EngineStateError(f"register: pid {pid}: {exc.strerror}") from None
        try:
            # After the pidfd is open: a pid reused before it was is refused here, never given the scope.
            found = tuple(os.stat(f"/proc/{pid}/ns/{kind}").st_ino for kind in ("pid", "mnt"))
            if found != (pid_ns, mnt_ns):
                raise EngineStateError(f"register: pid {pid} is in namespaces {found}, not ({pid_ns}, {mnt_ns})")
            held = self._call(self._handle.lookup, maps.PIDFD_KEY.pack(self._pidfd))
            self._scope = maps.TASK_SCOPE.unpack(held)[0] if held else 0
        except OSError as exc:
            self.close()
            raise EngineStateError(f"register: pid {pid}: {exc.strerror}") from None
        except EngineStateError:
            self.close()
            raise

    def __enter__(self) -> _ContainerTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def _call(self, fn: Callable[..., _T], *args: bytes) -> _T:
        try:
            return fn(*args)
        except BpfError as exc:
            raise EngineStateError(f"register: pid {self.pid}: task scope: {one_line(exc)}") from None

    def refuse_rescoping(self, scope_id: int) -> None:
        """A task that already holds a container's scope keeps it: a process of one container that made
        itself fresh namespaces is never handed another (weaker) container's rules by a registration."""
        if self._scope >= maps.SCOPE_FIRST_CONTAINER and self._scope != scope_id:
            raise EngineStateError(f"register: pid {self.pid} already belongs to container scope {self._scope}; "
                                   "a container's process is never given another container's scope")

    def record(self, scope_id: int) -> None:
        """Give the task `scope_id`, keeping its flags as they are now (it may have exec'd the container's
        code since the registration began); every child it forks from now on inherits it (task_alloc)."""
        key = maps.PIDFD_KEY.pack(self._pidfd)
        known = self._call(self._handle.lookup, key)
        flags = maps.TASK_SCOPE.unpack(known)[1] if known else 0
        self._call(self._handle.update, key, maps.TASK_SCOPE.pack(scope_id, flags))
