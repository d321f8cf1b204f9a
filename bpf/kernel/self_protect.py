"""Self-protection: load, pin, adopt, arm and tear down the `self_guard` BPF-LSM object.

Lifecycle, as separate steps (Tetragon's sensor model):
  load      open self_guard.bpf.o, load it, attach every program, pin each link and map under
            <pin root>/self/ (links/<program>, maps by name);
  adopt     when the pins exist and every pinned program's tag equals the shipped object's, reuse
            them: nothing is detached or reloaded;
  arm       write the identity (the unit's cgroup names) and the protected inodes and map ids. Once
            armed, only warden's cgroup and PID 1 can change any of it, so arming comes last and a
            restarted supervisor (inside the warden cgroup) re-arms what it adopted;
  teardown  unpin everything under <pin root>/self/. Only `warden teardown` calls it, and once armed only
            from inside the warden cgroup does it succeed (self_guard refuses everyone else).
What to protect is the caller's to say (`SelfProtectionConfig.protected_paths`): this module knows the
kernel object, not the installation around it.

The layouts written and read here are struct self_config, struct inode_key and struct self_event in
bpf/progs/self_guard_types.h (tests/test_engine_maps.py checks them against the C header).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bpf.kernel.libbpf import BpfObject, Libbpf, Link, LinkInfo, MapHandle, MapSet
from bpf.kernel.loading import SELF_GUARD, Preload
from bpf.kernel.objects import object_digest, object_path
from bpf.kernel.pins import DEFAULT_PIN_DIR

SELF_MAPS: Final = ("self_config", "self_inodes", "self_map_ids", "self_events", "self_drops")

NAME_LEN: Final = 64  # SELF_NAME_LEN
SELF_CONFIG: Final = struct.Struct(f"<{NAME_LEN}s{NAME_LEN}s{NAME_LEN}s")  # struct self_config
INODE_KEY: Final = struct.Struct("<QII")  # struct inode_key
SELF_EVENT: Final = struct.Struct(f"<Q4IiIQ16s{NAME_LEN}s")  # struct self_event

# enum self_attack
ATTACKS: Final = {
    1: "signal",
    2: "ptrace",
    3: "bpf-command",
    4: "map-write",
    5: "pin-change",
    6: "bpffs-mount",
    7: "protected-write",
    8: "cgroup-join",
    9: "rlimit",
    10: "scheduling",
    11: "cgroup-control",
}


class SelfProtectionError(Exception):
    """Self-protection could not be loaded, adopted or armed."""


def kernel_dev(st_dev: int) -> int:
    """A stat() st_dev in the kernel's internal dev_t encoding (MAJOR << 20 | MINOR)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def inode_key(path: Path) -> bytes:
    """The self_inodes key of `path`."""
    st = path.stat()
    return INODE_KEY.pack(st.st_ino, kernel_dev(st.st_dev), 0)


@dataclass(frozen=True)
class SelfProtectionConfig:
    protected_paths: tuple[Path, ...]  # what an attacker must not change (and everything below it)
    unit_cgroup: str = "warden.service"
    parent_cgroup: str = "system.slice"
    protected_map_ids: tuple[int, ...] = ()

    def encoded(self, pin_dir_name: str) -> bytes:
        parts = []
        for what, value in (("unit_cgroup", self.unit_cgroup), ("parent_cgroup", self.parent_cgroup),
                            ("pin dir", pin_dir_name)):
            raw = value.encode()
            if not raw or len(raw) >= NAME_LEN or b"/" in raw:
                raise SelfProtectionError(f"self-protection {what} {value!r}: 1-63 bytes, no '/'")
            parts.append(raw)
        return SELF_CONFIG.pack(*parts)


@dataclass(frozen=True)
class SelfGuardReport:
    adopted: bool
    link_ids: dict[str, int]
    map_ids: dict[str, int]
    protected_inodes: int


@dataclass(frozen=True)
class SelfEvent:
    attack: str
    pid: int
    uid: int
    target_pid: int
    detail: int
    mnt_ns: int
    comm: str
    name: str
    ts_ns: int


def decode_self_event(raw: bytes) -> SelfEvent:
    if len(raw) < SELF_EVENT.size:
        raise ValueError(f"self_guard event is {len(raw)} bytes, expected {SELF_EVENT.size}")
    ts_ns, attack, pid, uid, target_pid, detail, _pad, mnt_ns, comm, name = SELF_EVENT.unpack_from(raw)
    return SelfEvent(
        ts_ns=ts_ns,
        attack=ATTACKS.get(attack, f"unknown({attack})"),
        pid=pid,
        uid=uid,
        target_pid=target_pid,
        detail=detail,
        mnt_ns=mnt_ns,
        comm=comm.split(b"\0", 1)[0].decode(errors="replace"),
        name=name.split(b"\0", 1)[0].decode(errors="replace"),
    )


class SelfGuard:
    def __init__(self, pin_root: Path = DEFAULT_PIN_DIR, lib: Libbpf | None = None,
                 preload: Preload | None = None) -> None:
        """`preload`: the shipped object, being loaded since the process started; the first load or
        tag comparison takes it."""
        self._lib = lib
        self._preload = preload
        self.pin_root = pin_root
        self.pin_dir = pin_root / "self"
        self.links_dir = self.pin_dir / "links"

    @property
    def lib(self) -> Libbpf:
        if self._lib is None:
            self._lib = Libbpf()
        return self._lib

    def _open_maps(self) -> MapSet:
        return MapSet.open_pinned(self.lib, {name: self.pin_dir / name for name in SELF_MAPS})

    # -- steps -------------------------------------------------------------------------------

    def load_or_adopt(self, config: SelfProtectionConfig) -> SelfGuardReport:
        adopted = self._adoptable()
        if not adopted:
            self._load_and_pin()
        report = self._arm(config)
        return SelfGuardReport(adopted=adopted, link_ids=report[0], map_ids=report[1],
                               protected_inodes=report[2])

    def _shipped_object(self, *, own_maps: bool) -> BpfObject:
        """The shipped object, opened; loaded already when the preload has it (`own_maps`: only a
        load with maps of its own may take it, as the preload's are). The caller closes it."""
        preload, self._preload = self._preload, None
        path = object_path(SELF_GUARD)
        taken = preload.take_self_guard(object_digest(path)) if preload is not None else None
        if taken is not None and not own_maps:
            taken.close()
            taken = None
        return taken if taken is not None else BpfObject(self.lib, path)

    def _shipped_tags(self) -> dict[str, str]:
        """Program tags of the shipped object, known only by loading it (the kernel computes them)."""
        with self._shipped_object(own_maps=True) as obj:
            if not obj.loaded:
                obj.load()
            return {p.name: p.info().tag for p in obj.programs()}

    def _adoptable(self) -> bool:
        if not self.links_dir.is_dir():
            return False
        pinned = self.pinned_link_tags()
        return bool(pinned) and pinned == self._shipped_tags()

    def pinned_link_tags(self) -> dict[str, str]:
        tags = {}
        for pin in sorted(self.links_dir.iterdir()) if self.links_dir.is_dir() else []:
            with Link.open_pinned(self.lib, pin) as link:
                tags[pin.name] = link.program_info().tag
        return tags

    def _load_and_pin(self) -> None:
        self.links_dir.mkdir(parents=True, exist_ok=True)
        # Keep the state of an earlier generation: reuse its pinned maps where they exist.
        pinned = [name for name in SELF_MAPS if (self.pin_dir / name).exists()]
        with self._shipped_object(own_maps=not pinned) as obj:
            if not obj.loaded:
                for name in pinned:
                    with MapHandle.open_pinned(self.lib, self.pin_dir / name) as handle:
                        obj.reuse_map(name, handle.fd)
                obj.load()
            for name in SELF_MAPS:
                if not (self.pin_dir / name).exists():
                    obj.pin_map(name, self.pin_dir / name)
            # Make before break: every new link is attached before an old pin is replaced.
            links = [(p.name, p.attach()) for p in obj.programs()]
            for name, link in links:
                pin = self.links_dir / name
                if pin.exists():
                    pin.unlink()  # the new link of this hook is already attached
                with link:
                    link.pin(pin)

    def _arm(self, config: SelfProtectionConfig) -> tuple[dict[str, int], dict[str, int], int]:
        with self._open_maps() as maps:
            inodes = maps["self_inodes"]
            wanted = {inode_key(p) for p in (*config.protected_paths, self.pin_root)}
            for key in wanted:
                inodes.update(key, b"\x01")  # additions first: never a moment less protected
            for key in set(inodes.keys()) - wanted:
                inodes.delete(key)
            map_ids = self._reserve_maps(maps, config.protected_map_ids)
            maps["self_config"].update(bytes(4), config.encoded(self.pin_root.name))
            link_ids = {name: info.id for name, info in self.link_infos().items()}
            return link_ids, map_ids, len(wanted)

    def protect_maps(self, map_ids: Iterable[int]) -> None:
        """Reserve write access to the engine's maps (`map_ids`, all of them: see _reserve_maps) for warden."""
        with self._open_maps() as maps:
            self._reserve_maps(maps, map_ids)

    @staticmethod
    def _reserve_maps(maps: MapSet, engine_map_ids: Iterable[int]) -> dict[str, int]:
        """Make self_map_ids hold exactly self_guard's own maps and `engine_map_ids`: the new ids first (never
        a moment less protected), then the ids no longer in use let go (an older object's own maps, gone
        with its programs), so that upgrades do not fill the map. Returns self_guard's map ids by name."""
        own = {name: handle.info.id for name, handle in maps.items()}
        reserved = maps["self_map_ids"]
        wanted = {map_id.to_bytes(4, "little") for map_id in (*own.values(), *engine_map_ids)}
        for key in sorted(wanted):
            reserved.update(key, b"\x01")
        for key in set(reserved.keys()) - wanted:
            reserved.delete(key)
        return own

    def teardown(self) -> list[str]:
        """Unpin every self_guard link (detaching its programs) and map, then remove <pin root>/self/ and the
        pin root when nothing else is left in it. Returns what was removed, for the log."""
        removed: list[str] = []
        if self.links_dir.is_dir():
            for pin in sorted(self.links_dir.iterdir()):
                pin.unlink()
                removed.append(str(pin))
            self.links_dir.rmdir()
        for name in SELF_MAPS:
            pin = self.pin_dir / name
            with contextlib.suppress(FileNotFoundError):
                pin.unlink()
                removed.append(str(pin))
        for directory in (self.pin_dir, self.pin_root):
            with contextlib.suppress(FileNotFoundError, OSError):
                directory.rmdir()
        return removed

    # -- inspection ----------------------------------------------------------------------------

    def link_infos(self) -> dict[str, LinkInfo]:
        result = {}
        for pin in sorted(self.links_dir.iterdir()):
            with Link.open_pinned(self.lib, pin) as link:
                result[pin.name] = link.info()
        return result

    def drops(self) -> int:
        with MapHandle.open_pinned(self.lib, self.pin_dir / "self_drops") as handle:
            return handle.counter(bytes(4))
