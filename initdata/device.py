"""Kata's initdata block device: find it among the guest's disks and read the document off it.

The Kata runtime hands initdata to the guest as a raw virtio-blk (or virtio-scsi) disk in the image
format of initdata.encoding (b"initdata", u64 little-endian gzip length, gzip, zero padding).
kata-agent finds it the way `find_initdata_device` does (kata-containers src/agent/src/initdata.rs,
`detect_initdata_device` / `locate_device`): `/dev/disk/by-id/virtio-initdata` where udev made it,
else every block device in /dev whose name starts with `vd` or `sd`, the first whose first 8 bytes
are the magic; then it reads the length and gunzips that many bytes (`read_initdata`), and only
afterwards writes its copy to /run/confidential-containers/initdata/initdata.toml. warden starts
before kata-agent, so it reads the device itself; the TOML bytes are the same, and so is the digest.

Reads are bounded: the header first, then at most the image limit, never the whole disk.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from initdata.encoding import IMAGE_HEADER, IMAGE_MAGIC, MAX_IMAGE_BYTES, decode_image
from initdata.errors import InitdataNotFound, InputTooLarge, MalformedInitdata

DEV_DIR = Path("/dev")
BY_ID_PATH = Path("/dev/disk/by-id/virtio-initdata")
NAME_PREFIXES = ("vd", "sd")  # virtio-blk, virtio-scsi: the two disk types kata-agent looks at


def _first_bytes(path: Path, count: int) -> bytes:
    with path.open("rb") as handle:
        return handle.read(count)


def find_initdata_device(
    dev_dir: Path = DEV_DIR,
    *,
    by_id: Path = BY_ID_PATH,
    is_device: Callable[[int], bool] = stat.S_ISBLK,
) -> Path | None:
    """The first disk whose content starts with the initdata magic, in kata-agent's order; None
    when there is none. A candidate that cannot be read is skipped, but if no disk matched, the
    first such failure is raised (InitdataNotFound): "cannot read /dev/vdb" is not "no initdata".

    `is_device` decides which directory entries are disks (block devices; tests pass S_ISREG)."""
    candidates = [by_id]
    try:
        names = sorted(entry.name for entry in os.scandir(dev_dir) if entry.name.startswith(NAME_PREFIXES))
    except OSError as exc:
        raise InitdataNotFound(str(dev_dir), "device", f"cannot be listed ({exc.strerror})") from None
    candidates += [dev_dir / name for name in names]
    failures: list[InitdataNotFound] = []
    for path in candidates:
        try:
            if not is_device(path.stat().st_mode):
                continue
            magic = _first_bytes(path, len(IMAGE_MAGIC))
        except FileNotFoundError:
            continue  # by-id link absent (no udev), or a disk that went away
        except OSError as exc:
            failures.append(InitdataNotFound(str(path), "device", f"cannot be read ({exc.strerror})"))
            continue
        if magic == IMAGE_MAGIC:
            return path
    if failures:
        raise failures[0]
    return None


def read_initdata_device(path: Path) -> bytes:
    """The initdata TOML bytes on `path` (an image as initdata.encoding.encode_image writes it)."""
    origin = str(path)
    try:
        with path.open("rb") as handle:
            header = handle.read(IMAGE_HEADER.size)
            if len(header) < IMAGE_HEADER.size:
                raise MalformedInitdata(origin, "header", f"{len(header)} bytes is shorter than the 16-byte header")
            magic, length = IMAGE_HEADER.unpack(header)
            if magic != IMAGE_MAGIC:
                raise MalformedInitdata(origin, "magic", f"expected b'initdata', found {magic!r}")
            if length > MAX_IMAGE_BYTES - IMAGE_HEADER.size:
                raise InputTooLarge(origin, "length", f"says {length} gzip bytes, more than the "
                                                      f"{MAX_IMAGE_BYTES - IMAGE_HEADER.size}-byte limit")
            blob = handle.read(length)
    except OSError as exc:
        raise InitdataNotFound(origin, "device", f"cannot be read ({exc.strerror})") from None
    if len(blob) < length:
        raise MalformedInitdata(origin, "length", f"says {length} gzip bytes but the device ends after {len(blob)}")
    return decode_image(header + blob, origin=origin)
