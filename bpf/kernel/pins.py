"""Where the engine pins its objects in bpffs, and the bookkeeping of those pins.

Layout under the pin root (default /sys/fs/bpf/warden/):
    maps/<map>                                   the shared maps (SHARED_MAPS)
    events                                       the ring buffer (EVENTS_MAP)
    links/<object>-<digest12>-<ns>/<program>     one directory per attach of an object
    self/                                        self-protection's own (bpf.kernel.self_protect)
A pinned link keeps its program attached after every process is gone; removing the pin detaches it
(when no process holds the link). Only the engine's upgrade (old link directories, after the new ones are
pinned) and teardown remove pins, through this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import subprocess
import time
from pathlib import Path
from typing import Final

from bpf.kernel.errors import BpffsError, EngineStateError, one_line
from bpf.kernel.libbpf import BpfError, BpfObject, Libbpf, MapSet

DEFAULT_PIN_DIR: Final = Path("/sys/fs/bpf/warden")
SHARED_MAPS: Final = ("warden_rules", "warden_sources", "warden_scopes", "warden_ctrs", "warden_config",
                      "warden_meta", "warden_drops", "warden_task_scope",
                      # matchPatterns (bpf/progs/warden_patterns.h, bpf.kernel.patterns)
                      "warden_pat_heads", "warden_pat_dfas", "warden_pat_verdicts", "warden_pat_pool")
EVENTS_MAP: Final = "warden_events"
BPF_FS_MAGIC: Final = 0xCAFE4A11


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


class EnginePins:
    """The engine's pins under `root`. Opening and listing are free; only `unpin_*` remove anything."""

    def __init__(self, root: Path = DEFAULT_PIN_DIR) -> None:
        self.root = root
        self.maps_dir = root / "maps"
        self.links_dir = root / "links"

    # -- maps ----------------------------------------------------------------------------------

    def map_pin(self, name: str) -> Path:
        return self.root / "events" if name == EVENTS_MAP else self.maps_dir / name

    @property
    def events(self) -> Path:
        return self.map_pin(EVENTS_MAP)

    def map_pins(self) -> dict[str, Path]:
        return {name: self.map_pin(name) for name in (*SHARED_MAPS, EVENTS_MAP)}

    def maps_pinned(self) -> bool:
        return all(pin.exists() for pin in self.map_pins().values())

    def open_maps(self, lib: Libbpf) -> MapSet:
        """Every pinned map, opened; closed together when the MapSet is."""
        try:
            return MapSet.open_pinned(lib, self.map_pins())
        except BpfError as exc:
            raise EngineStateError(f"pinned maps incomplete under {self.root}: {one_line(exc)}") from None

    def pin_maps(self, obj: BpfObject) -> None:
        """Pin the maps `obj` created (the first object loaded; the others reuse these pins)."""
        self.maps_dir.mkdir(parents=True, exist_ok=True)
        for name, pin in self.map_pins().items():
            obj.pin_map(name, pin)

    # -- links ---------------------------------------------------------------------------------

    def new_link_dir(self, object_name: str, digest: str) -> Path:
        """A new, empty directory for the links of one attach of `object_name`. Never reused:
        make-before-break needs the old pins to stay until the new links are pinned, even when the
        same object is attached again."""
        path = self.links_dir / f"{object_name}-{digest.removeprefix('sha256:')[:12]}-{time.time_ns()}"
        path.mkdir(parents=True)
        return path

    def link_dirs(self) -> list[Path]:
        return sorted(self.links_dir.iterdir()) if self.links_dir.is_dir() else []

    @staticmethod
    def object_of(link_dir: Path) -> str:
        """The object whose links a link directory holds."""
        return link_dir.name.split("-", 1)[0]

    # -- removal -------------------------------------------------------------------------------

    def unpin_link_dir(self, link_dir: Path) -> list[str]:
        """Remove one attach's link pins (detaching its programs) and the directory; what was removed."""
        removed = []
        for pin in sorted(link_dir.iterdir()):
            pin.unlink()
            removed.append(str(pin))
        link_dir.rmdir()
        return removed

    def unpin_other_links(self, object_name: str, keep: Path) -> list[str]:
        """Remove the link directories of `object_name` other than `keep` (the upgrade's old links)."""
        removed: list[str] = []
        for link_dir in self.link_dirs():
            if link_dir != keep and self.object_of(link_dir) == object_name:
                removed += self.unpin_link_dir(link_dir)
        return removed

    def unpin_all(self) -> list[str]:
        """Every link (first: programs detach while the maps still hold their rules), then every map;
        the directories, the root too when nothing else (self-protection's pins) is left in it."""
        removed: list[str] = []
        for link_dir in self.link_dirs():
            removed += self.unpin_link_dir(link_dir)
        with contextlib.suppress(FileNotFoundError):
            self.links_dir.rmdir()
        for pin in self.map_pins().values():
            with contextlib.suppress(FileNotFoundError):
                pin.unlink()
                removed.append(str(pin))
        for directory in (self.maps_dir, self.root):
            with contextlib.suppress(FileNotFoundError, OSError):
                directory.rmdir()
        return removed
