"""Self-protection: load, pin, adopt and arm the `self_guard` BPF-LSM object.

Lifecycle, as separate steps (Tetragon's sensor model):
  load    open self_guard.bpf.o, load it, attach every program, pin each link and map under
          <pin root>/self/ (links/<program>, maps by name);
  adopt   when the pins exist and every pinned program's tag equals the shipped object's, reuse
          them: nothing is detached or reloaded;
  arm     write the identity (the unit's cgroup names) and the protected inodes and map ids. Once
          armed, only warden's cgroup and PID 1 can change any of it, so arming comes last and a
          restarted supervisor (inside the warden cgroup) re-arms what it adopted.
There is no unload here: `warden teardown`, from inside the warden cgroup, is the only way out.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bpf.kernel.libbpf import BpfObject, Libbpf, Link, LinkInfo, MapHandle
from bpf.kernel.objects import object_dir, object_path

OBJECT_NAME = "self_guard"
NAME_LEN = 64
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/warden")
SELF_MAPS = ("self_config", "self_inodes", "self_map_ids", "self_events", "self_drops")

# enum self_attack in self_guard.bpf.c
ATTACKS = {
    1: "signal",
    2: "ptrace",
    3: "bpf-command",
    4: "map-write",
    5: "pin-change",
    6: "bpffs-mount",
    7: "protected-write",
    8: "cgroup-join",
}


class SelfProtectionError(Exception):
    """Self-protection could not be loaded, adopted or armed."""


def kernel_dev(st_dev: int) -> int:
    """A stat() st_dev in the kernel's internal dev_t encoding (MAJOR << 20 | MINOR)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def inode_key(path: Path) -> bytes:
    """The self_inodes key of `path`: struct inode_key {u64 ino; u32 dev; u32 pad}."""
    st = path.stat()
    return st.st_ino.to_bytes(8, "little") + kernel_dev(st.st_dev).to_bytes(4, "little") + bytes(4)


def default_protected_paths() -> tuple[Path, ...]:
    """What an attacker must not change: configuration, trust keys, state, the installation."""
    import attest
    import bpf
    import initdata
    import supervisor

    candidates = [
        Path("/etc/warden"),
        Path("/run/warden"),
        Path(sys.prefix),  # the venv or the system prefix warden runs from
        Path(os.path.realpath(sys.executable)).parent.parent,  # the interpreter's own tree
        object_dir(),
        *(Path(pkg.__file__).resolve().parent for pkg in (attest, bpf, initdata, supervisor)
          if pkg.__file__ is not None),
        Path("/etc/systemd/system/warden.service"),
        Path("/usr/lib/systemd/system/warden.service"),
        Path("/usr/share/oci/hooks"),
    ]
    return tuple(p for p in candidates if p.exists())


@dataclass(frozen=True)
class SelfProtectionConfig:
    unit_cgroup: str = "warden.service"
    parent_cgroup: str = "system.slice"
    protected_paths: tuple[Path, ...] = field(default_factory=default_protected_paths)
    protected_map_ids: tuple[int, ...] = ()

    def encoded(self, pin_dir_name: str) -> bytes:
        parts = []
        for what, value in (("unit_cgroup", self.unit_cgroup), ("parent_cgroup", self.parent_cgroup),
                            ("pin dir", pin_dir_name)):
            raw = value.encode()
            if not raw or len(raw) >= NAME_LEN or b"/" in raw:
                raise SelfProtectionError(f"self-protection {what} {value!r}: 1-63 bytes, no '/'")
            parts.append(raw.ljust(NAME_LEN, b"\0"))
        return b"".join(parts)


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


SELF_EVENT_SIZE = 8 + 4 * 6 + 8 + 16 + NAME_LEN


def decode_self_event(raw: bytes) -> SelfEvent:
    if len(raw) < SELF_EVENT_SIZE:
        raise ValueError(f"self_guard event is {len(raw)} bytes, expected {SELF_EVENT_SIZE}")
    u32 = [int.from_bytes(raw[8 + 4 * i : 12 + 4 * i], "little") for i in range(6)]
    detail = u32[4] - (1 << 32) if u32[4] >= 1 << 31 else u32[4]
    return SelfEvent(
        ts_ns=int.from_bytes(raw[0:8], "little"),
        attack=ATTACKS.get(u32[0], f"unknown({u32[0]})"),
        pid=u32[1],
        uid=u32[2],
        target_pid=u32[3],
        detail=detail,
        mnt_ns=int.from_bytes(raw[32:40], "little"),
        comm=raw[40:56].split(b"\0", 1)[0].decode(errors="replace"),
        name=raw[56 : 56 + NAME_LEN].split(b"\0", 1)[0].decode(errors="replace"),
    )


class SelfGuard:
    def __init__(self, pin_root: Path = DEFAULT_PIN_ROOT, lib: Libbpf | None = None) -> None:
        self.lib = lib or Libbpf()
        self.pin_root = pin_root
        self.pin_dir = pin_root / "self"
        self.links_dir = self.pin_dir / "links"

    # -- steps -------------------------------------------------------------------------------

    def load_or_adopt(self, config: SelfProtectionConfig) -> SelfGuardReport:
        adopted = self._adoptable()
        if not adopted:
            self._load_and_pin()
        report = self._arm(config)
        return SelfGuardReport(adopted=adopted, link_ids=report[0], map_ids=report[1],
                               protected_inodes=report[2])

    def _shipped_tags(self) -> dict[str, str]:
        """Program tags of the shipped object, known only by loading it (the kernel computes them)."""
        with BpfObject(self.lib, object_path(OBJECT_NAME)) as obj:
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
            link = Link.open_pinned(self.lib, pin)
            try:
                tags[pin.name] = self.lib.prog_info_by_id(link.info().prog_id).tag
            finally:
                link.release()
        return tags

    def _load_and_pin(self) -> None:
        self.links_dir.mkdir(parents=True, exist_ok=True)
        with BpfObject(self.lib, object_path(OBJECT_NAME)) as obj:
            # Keep the state of an earlier generation: reuse its pinned maps where they exist.
            for name in SELF_MAPS:
                pin = self.pin_dir / name
                if pin.exists():
                    handle = MapHandle.open_pinned(self.lib, pin)
                    obj.reuse_map(name, handle.fd)
                    handle.close()
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
                link.pin(pin)
                link.release()

    def _arm(self, config: SelfProtectionConfig) -> tuple[dict[str, int], dict[str, int], int]:
        maps = {name: MapHandle.open_pinned(self.lib, self.pin_dir / name) for name in SELF_MAPS}
        try:
            inodes = maps["self_inodes"]
            wanted = {inode_key(p) for p in (*config.protected_paths, self.pin_root)}
            for key in wanted:
                inodes.update(key, b"\x01")  # additions first: never a moment less protected
            for key in set(inodes.keys()) - wanted:
                inodes.delete(key)
            map_ids = {name: handle.info.id for name, handle in maps.items()}
            for map_id in (*map_ids.values(), *config.protected_map_ids):
                maps["self_map_ids"].update(map_id.to_bytes(4, "little"), b"\x01")
            maps["self_config"].update(bytes(4), config.encoded(self.pin_root.name))
            link_ids = {name: info.id for name, info in self.link_infos().items()}
            return link_ids, map_ids, len(wanted)
        finally:
            for handle in maps.values():
                handle.close()

    def protect_maps(self, map_ids: Iterable[int]) -> None:
        """Reserve write access to more maps (the engine's) for warden."""
        handle = MapHandle.open_pinned(self.lib, self.pin_dir / "self_map_ids")
        try:
            for map_id in map_ids:
                handle.update(map_id.to_bytes(4, "little"), b"\x01")
        finally:
            handle.close()

    # -- inspection ----------------------------------------------------------------------------

    def link_infos(self) -> dict[str, LinkInfo]:
        result = {}
        for pin in sorted(self.links_dir.iterdir()):
            link = Link.open_pinned(self.lib, pin)
            try:
                result[pin.name] = link.info()
            finally:
                link.release()
        return result

    def drops(self) -> int:
        handle = MapHandle.open_pinned(self.lib, self.pin_dir / "self_drops")
        try:
            value = handle.lookup(bytes(4)) or b""
            # A per-CPU value: one 8-byte counter per possible CPU.
            return sum(int.from_bytes(value[i : i + 8], "little") for i in range(0, len(value), 8))
        finally:
            handle.close()
