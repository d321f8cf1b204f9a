"""Loading warden's BPF objects into the kernel (not attaching them): the slow part of a start.

The verifier is most of warden's start (tens of seconds under TCG): it runs in the loading thread,
with the GIL released, so the objects load in parallel, one thread per CPU, against one set of maps
that a maps-only load of the first object creates. `Preload` starts that work, and self_guard's
load, before the supervisor has imported the rest of itself or run its gate, so the kernel verifies
while Python starts; self-protection and the engine take the loaded objects only if they are the
shipped ones (and the engine only when it loads afresh), and the engine attaches nothing before the
gate has decided (bpf.kernel.self_protect, bpf.kernel.engine). This module imports only libbpf's
binding and the object paths, so that it can run first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bpf.kernel.errors import EngineLoadError, one_line
from bpf.kernel.libbpf import BpfError, BpfObject, Libbpf, MapHandle
from bpf.kernel.objects import object_path
from bpf.kernel.pins import EVENTS_MAP, SHARED_MAPS

# Largest first: the parallel load finishes soonest when the longest verification starts first.
OBJECTS: Final = ("file_guard", "exec_guard", "net_guard", "cap_guard", "scope_guard")
# Self-protection's object (bpf.kernel.self_protect): its own maps, its own lifecycle.
SELF_GUARD: Final = "self_guard"

log = logging.getLogger("warden.engine")


def load_workers() -> int:
    """Threads that run the verifier at once: one per CPU this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def verifier_reason(libbpf_log: str) -> str:
    """The verifier's own complaint (the lines before "processed N insns"), if the log has one."""
    lines = [line.strip() for line in libbpf_log.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("processed ") and "insns" in line:
            return " (verifier: " + "; ".join(lines[max(0, i - 2) : i]) + ")"
    return ""


def load_object(lib: Libbpf, name: str, path: Path, maps: Mapping[str, MapHandle] | None, *,
                maps_only: bool = False) -> BpfObject:
    """Object `name` loaded, its shared maps being `maps` (none: its own, new ones)."""
    obj = BpfObject(lib, path)
    try:
        for map_name, handle in (maps or {}).items():
            obj.reuse_map(map_name, handle.fd)
        obj.load(maps_only=maps_only)
    except BpfError as exc:
        obj.close()
        raise EngineLoadError(f"{name}: load failed: {one_line(exc)}{verifier_reason(exc.libbpf_log)}") from None
    return obj


def load_in_parallel(lib: Libbpf, paths: Mapping[str, Path], maps: Mapping[str, MapHandle]) -> dict[str, BpfObject]:
    """Every object of `paths` loaded against `maps`, one thread per CPU. All or nothing: on a failure
    the others are closed (once all have finished) and the first failure is raised."""
    loaded: dict[str, BpfObject] = {}
    failures: list[Exception] = []
    with ThreadPoolExecutor(max_workers=load_workers(), thread_name_prefix="warden-load") as pool:
        futures = {name: pool.submit(load_object, lib, name, path, maps) for name, path in paths.items()}
        for name, future in futures.items():
            try:
                loaded[name] = future.result()
            except Exception as exc:  # re-raised below, once all have finished
                failures.append(exc)
    if failures:
        for obj in loaded.values():
            obj.close()
        raise failures[0]
    return loaded


def check_loaded(objects: Mapping[str, BpfObject], digests: Mapping[str, str],
                 maps_owner: BpfObject | None = None) -> None:
    """Each object was loaded from the bytes whose digest `digests` names (the maps' creator, from those
    of the first object): raises EngineLoadError for one changed in between."""
    owners = [(OBJECTS[0], maps_owner)] if maps_owner is not None else []
    for name, obj in (*objects.items(), *owners):
        if obj.digest != digests.get(name):
            raise EngineLoadError(f"{name}: {obj.path} changed while it was loaded "
                                  f"({obj.digest}, expected {digests.get(name)})")


class LoadedObjects:
    """The shipped objects loaded against maps of their own, not pinned, nothing attached: `maps_owner`
    holds the maps (to pin them), `objects` the programs. Closing releases all of it."""

    def __init__(self, maps_owner: BpfObject, objects: Mapping[str, BpfObject], seconds: float) -> None:
        self.maps_owner = maps_owner
        self.objects = dict(objects)
        self.seconds = seconds  # how long the load took

    @property
    def digests(self) -> dict[str, str]:
        """Each object's digest: that of the bytes it was loaded from."""
        return {name: obj.digest for name, obj in self.objects.items()}

    @classmethod
    def load(cls, lib: Libbpf) -> LoadedObjects:
        started = time.monotonic()
        paths = {name: object_path(name) for name in OBJECTS}
        maps_owner = load_object(lib, OBJECTS[0], paths[OBJECTS[0]], None, maps_only=True)
        try:
            maps = {name: maps_owner.map(name) for name in (*SHARED_MAPS, EVENTS_MAP)}
            objects = load_in_parallel(lib, paths, maps)
        except BaseException:
            maps_owner.close()
            raise
        loaded = cls(maps_owner, objects, time.monotonic() - started)
        try:
            # The maps were created from the first object's bytes, read apart from its programs' load.
            check_loaded({}, loaded.digests, maps_owner)
        except EngineLoadError:
            loaded.close()
            raise
        return loaded

    def close(self) -> None:
        for obj in (*self.objects.values(), self.maps_owner):
            obj.close()


@dataclass
class _Loaded:
    """What one background job loaded (the engine's objects, or self_guard), or why it did not."""

    objects: LoadedObjects | None = None
    self_guard: BpfObject | None = None
    seconds: float = 0.0
    error: str | None = None


class Preload:
    """The shipped objects loaded in background threads, started before anything else: the kernel
    verifies while the supervisor imports itself and runs its gate. Two jobs, started in the order the
    supervisor needs them: self_guard (armed first, whatever the gate decides; loaded whenever it is
    shipped: a restart needs it too, to compare its program tags with the pinned ones), then the
    engine objects, only where the engine will load afresh (no maps pinned under `pin_dir`); a
    restart adopts the engine's pins instead."""

    def __init__(self, pin_dir: Path) -> None:
        self._self_guard = _Loaded()
        self._engine = _Loaded()
        self._threads: dict[str, threading.Thread] = {}
        self._start("self_guard", self._load_self_guard)
        if all((pin_dir / "maps" / name).exists() for name in SHARED_MAPS):
            self._engine.error = "maps already pinned: the engine adopts or upgrades them"
        else:
            self._start("engine", self._load_engine)

    def _start(self, job: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"warden-preload-{job}", daemon=True)
        self._threads[job] = thread
        thread.start()

    def _load_self_guard(self) -> None:
        try:
            started = time.monotonic()
            obj = load_object(Libbpf(), SELF_GUARD, object_path(SELF_GUARD), None)
            self._self_guard.self_guard = obj
            self._self_guard.seconds = time.monotonic() - started
        except Exception as exc:  # whatever it is, self-protection's own load meets it again and reports it
            self._self_guard.error = f"{type(exc).__name__}: {one_line(exc)}"

    def _load_engine(self) -> None:
        try:
            self._engine.objects = LoadedObjects.load(Libbpf())
        except Exception as exc:  # whatever it is, the engine's own load meets it again and reports it
            self._engine.error = f"{type(exc).__name__}: {one_line(exc)}"

    def _wait(self, job: str) -> None:
        thread = self._threads.pop(job, None)
        if thread is not None:
            thread.join()

    def take(self, digests: Mapping[str, str]) -> LoadedObjects | None:
        """Wait for the engine's job; its objects if they are those of `digests` (each shipped object's
        digest now), else None (and everything it loaded is closed)."""
        self._wait("engine")
        result, self._engine.objects = self._engine.objects, None
        if result is None:
            log.info("preload not used: %s", self._engine.error or "taken already")
            return None
        if result.digests != dict(digests):
            log.warning("preload not used: the shipped objects changed while it loaded")
            result.close()
            return None
        log.info("engine objects taken from the preload (loaded in %.2fs while the supervisor started)",
                 result.seconds)
        return result

    def take_self_guard(self, digest: str) -> BpfObject | None:
        """Wait for self_guard's job; the loaded object (own maps, nothing attached) if it is the one
        whose digest is `digest` now, else None (and it is closed). The caller closes what it takes."""
        self._wait("self_guard")
        obj, self._self_guard.self_guard = self._self_guard.self_guard, None
        if obj is None:
            log.info("self_guard preload not used: %s", self._self_guard.error or "taken already")
            return None
        if obj.digest != digest:
            log.warning("self_guard preload not used: the shipped object changed while it loaded")
            obj.close()
            return None
        log.info("self_guard taken from the preload (loaded in %.2fs while the supervisor started)",
                 self._self_guard.seconds)
        return obj

    def close(self) -> None:
        """Release what was loaded and not taken (waits for the loads to finish)."""
        for job in list(self._threads):
            self._wait(job)
        if self._engine.objects is not None:
            self._engine.objects.close()
            self._engine.objects = None
        if self._self_guard.self_guard is not None:
            self._self_guard.self_guard.close()
            self._self_guard.self_guard = None
