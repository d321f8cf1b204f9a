"""Kata's initdata block device (initdata.device) and its place in initdata.locate.

Regular files stand in for block devices here (`is_device=stat.S_ISREG`); the guest test
tests/guest/test_profile_kata.py reads a real virtio-blk disk.
"""

from __future__ import annotations

import gzip
import hashlib
import stat
import struct
from pathlib import Path

import pytest

from initdata.device import find_initdata_device, read_initdata_device
from initdata.encoding import MAX_IMAGE_BYTES, encode_annotation, encode_image
from initdata.errors import InitdataNotFound, InputTooLarge, MalformedInitdata
from initdata.locate import locate_initdata

TOML = b'algorithm = "sha256"\nversion = "0.1.0"\n\n[data]\n"note" = "on a disk"\n'
OTHER_TOML = b'algorithm = "sha256"\nversion = "0.1.0"\n\n[data]\n"note" = "in /run"\n'


def disks(tmp_path: Path, contents: dict[str, bytes]) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name, data in contents.items():
        (dev / name).write_bytes(data)
    return dev


def test_finds_the_disk_with_the_magic_among_vd_and_sd(tmp_path: Path) -> None:
    root_disk = b"\x7fELF" + b"\0" * 4092  # the guest's root image: not initdata
    dev = disks(tmp_path, {"vda": root_disk, "sda": b"\0" * 512, "vdb": encode_image(TOML),
                           "initdata-not-a-disk-name": encode_image(OTHER_TOML)})
    found = find_initdata_device(dev, by_id=dev / "absent", is_device=stat.S_ISREG)
    assert found == dev / "vdb"
    assert read_initdata_device(found) == TOML
    (dev / "sdb").write_bytes(encode_image(OTHER_TOML))  # two initdata disks: the first by name wins
    assert find_initdata_device(dev, by_id=dev / "absent", is_device=stat.S_ISREG) == dev / "sdb"


def test_by_id_link_comes_first(tmp_path: Path) -> None:
    dev = disks(tmp_path, {"vda": encode_image(OTHER_TOML), "by-id-initdata": encode_image(TOML)})
    found = find_initdata_device(dev, by_id=dev / "by-id-initdata", is_device=stat.S_ISREG)
    assert found == dev / "by-id-initdata"


def test_no_disk_is_none_and_only_block_devices_count(tmp_path: Path) -> None:
    dev = disks(tmp_path, {"vda": b"\0" * 512, "sdb": b"init"})  # sdb shorter than the magic
    assert find_initdata_device(dev, by_id=dev / "absent", is_device=stat.S_ISREG) is None
    (dev / "vdc").write_bytes(encode_image(TOML))
    assert find_initdata_device(dev, by_id=dev / "absent") is None  # regular files are not block devices


def test_an_unreadable_disk_is_reported_when_nothing_matched(tmp_path: Path) -> None:
    dev = disks(tmp_path, {"vda": b"\0" * 512})
    (dev / "vdb").mkdir()  # opening it fails (EISDIR): a candidate that cannot be read
    with pytest.raises(InitdataNotFound) as caught:
        find_initdata_device(dev, by_id=dev / "absent", is_device=lambda mode: True)
    assert caught.value.origin == str(dev / "vdb")
    (dev / "vdc").write_bytes(encode_image(TOML))
    assert find_initdata_device(dev, by_id=dev / "absent", is_device=lambda mode: True) == dev / "vdc"


def test_reads_kata_agents_layout_exactly(tmp_path: Path) -> None:
    # As kata-agent's own test builds it (src/agent/src/initdata.rs): magic, u64 LE length, gzip,
    # then garbage that must not be read.
    blob = gzip.compress(TOML)
    disk = tmp_path / "vdb"
    disk.write_bytes(b"initdata" + struct.pack("<Q", len(blob)) + blob + b"\xff" * 256)
    assert read_initdata_device(disk) == TOML


@pytest.mark.parametrize(("content", "field", "error"), [
    (b"initdat", "header", MalformedInitdata),
    (b"notinitd" + struct.pack("<Q", 4), "magic", MalformedInitdata),
    (b"initdata" + struct.pack("<Q", 100) + b"\x1f\x8b", "length", MalformedInitdata),
    (b"initdata" + struct.pack("<Q", MAX_IMAGE_BYTES), "length", InputTooLarge),
    (b"initdata" + struct.pack("<Q", 4) + b"abcd", "gzip", MalformedInitdata),
])
def test_bad_images_name_device_and_field(tmp_path: Path, content: bytes, field: str,
                                          error: type[Exception]) -> None:
    disk = tmp_path / "vdb"
    disk.write_bytes(content)
    with pytest.raises(error) as caught:
        read_initdata_device(disk)
    assert str(caught.value).startswith(f"{disk}: {field}: ")


def test_locate_reads_the_device_before_the_run_copies(tmp_path: Path) -> None:
    dev = disks(tmp_path, {"vdb": encode_image(TOML)})
    kata = tmp_path / "initdata.toml"
    kata.write_bytes(OTHER_TOML)
    peer = tmp_path / "peerpod-initdata"
    peer.write_text(encode_annotation(OTHER_TOML))
    where = {"dev_dir": dev, "by_id": dev / "absent", "is_device": stat.S_ISREG, "kata_path": kata,
             "peerpod_path": peer, "peerpod_digest_path": tmp_path / "absent"}
    document = locate_initdata(**where)  # type: ignore[arg-type]
    assert document.origin == str(dev / "vdb")
    assert document.digest_hex == hashlib.sha256(TOML).hexdigest()  # the exact bytes on the disk
    (dev / "vdb").unlink()
    assert locate_initdata(**where).origin == str(kata)  # type: ignore[arg-type]
    kata.unlink()
    assert locate_initdata(**where).origin == str(peer)  # type: ignore[arg-type]
    peer.unlink()
    with pytest.raises(InitdataNotFound, match=f"no initdata block device in {dev}"):
        locate_initdata(**where)  # type: ignore[arg-type]
