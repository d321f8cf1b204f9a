"""The libbpf loader against the real 6.1 kernel: load, attach, pin, survive the loader, unpin."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.guest.vm import GuestVM

PIN_DIR = "/sys/fs/bpf/warden-testbed"
GUARDED = "/var/tmp/guarded"

# Runs in the guest: load write_guard, guard GUARDED, prove the deny while alive, pin, exit.
LOAD_AND_PIN = textwrap.dedent(f"""
    import errno, os
    from pathlib import Path
    from bpf.kernel.libbpf import BpfObject, Libbpf
    from bpf.kernel.objects import CHECKOUT_DIR

    lib = Libbpf()
    pins = Path("{PIN_DIR}")
    pins.mkdir(exist_ok=True)
    with BpfObject(lib, CHECKOUT_DIR / "tests" / "write_guard.bpf.o") as obj:
        obj.load()
        st = os.stat("{GUARDED}")
        key = st.st_ino.to_bytes(8, "little") + st.st_dev.to_bytes(4, "little") + bytes(4)
        obj.map("guarded_dirs").update(key, b"\\x01")
        obj.pin_map("guarded_dirs", pins / "guarded_dirs")
        link = obj.program("write_guard_file_open").attach()
        try:
            open("{GUARDED}/file", "w")
            raise SystemExit("write allowed while the loader is alive")
        except PermissionError as exc:
            assert exc.errno == errno.EPERM
        link.pin(pins / "write_guard_link")
        print("link", link.info().id)
        link.release()
""")

WRITE = f"echo changed > {GUARDED}/file"


@pytest.fixture(scope="module")
def pinned_link_id(guest: GuestVM) -> int:
    guest.run("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf", check=True)
    guest.run(f"mkdir -p {GUARDED} && echo original > {GUARDED}/file", check=True)
    loaded = guest.python(LOAD_AND_PIN, check=True)
    return int(loaded.stdout.split()[-1])


def test_write_is_denied_with_eperm_after_the_loader_exited(guest: GuestVM, pinned_link_id: int) -> None:
    result = guest.run(WRITE)
    assert result.returncode != 0
    assert "Operation not permitted" in result.stderr
    assert guest.run(f"cat {GUARDED}/file", check=True).stdout == "original\n"


def test_reads_and_other_directories_are_unaffected(guest: GuestVM, pinned_link_id: int) -> None:
    guest.run(f"cat {GUARDED}/file", check=True)
    guest.run("echo free > /var/tmp/unguarded-file", check=True)


def test_pinned_link_is_listed_by_bpftool_with_its_id(guest: GuestVM, pinned_link_id: int) -> None:
    links = json.loads(guest.run("bpftool -j link list", check=True).stdout)
    ours = [link for link in links if link["id"] == pinned_link_id]
    assert len(ours) == 1
    assert (ours[0]["prog_type"], ours[0]["attach_type"]) == ("lsm", "lsm_mac")
    prog = json.loads(guest.run(f"bpftool -j prog show id {ours[0]['prog_id']}", check=True).stdout)
    assert prog["name"] == "write_guard_file_open"


def test_loader_reopens_the_pinned_link_and_map(guest: GuestVM, pinned_link_id: int) -> None:
    code = textwrap.dedent(f"""
        from pathlib import Path
        from bpf.kernel.libbpf import Libbpf, Link, MapHandle
        lib = Libbpf()
        link = Link.open_pinned(lib, Path("{PIN_DIR}/write_guard_link"))
        info = link.info()
        prog = lib.prog_info_by_id(info.prog_id)
        guarded = MapHandle.open_pinned(lib, Path("{PIN_DIR}/guarded_dirs"))
        print(info.id, prog.name, len(list(guarded.keys())))
        link.release()
    """)
    out = guest.python(code, check=True).stdout.split()
    assert out == [str(pinned_link_id), "write_guard_fil", "1"]  # kernel names are 15 chars


def test_libbpf_errors_carry_errno_and_message(guest: GuestVM, pinned_link_id: int) -> None:
    code = textwrap.dedent(f"""
        import errno
        from pathlib import Path
        from bpf.kernel.libbpf import BpfError, Libbpf, MapHandle
        lib = Libbpf()
        try:
            lib.obj_get(Path("{PIN_DIR}/missing"))
        except BpfError as exc:
            assert exc.errno == errno.ENOENT, exc
            print(exc)
        guarded = MapHandle.open_pinned(lib, Path("{PIN_DIR}/guarded_dirs"))
        try:
            guarded.update(bytes(16), b"\\x01", flags=2)  # BPF_EXIST on a missing key
        except BpfError as exc:
            assert exc.errno == errno.ENOENT, exc
            print(exc)
    """)
    out = guest.python(code, check=True).stdout.splitlines()
    assert out[0].startswith(f"bpf_obj_get({PIN_DIR}/missing): ENOENT")
    assert out[1].startswith("map_update(guarded_dirs): ENOENT")


def test_unpinning_restores_writes(guest: GuestVM, pinned_link_id: int) -> None:
    # Runs last in this module (pytest keeps file order): removing the pin drops the last reference.
    guest.run(f"rm {PIN_DIR}/write_guard_link", check=True)
    guest.run(WRITE, check=True)
    assert guest.run(f"cat {GUARDED}/file", check=True).stdout == "changed\n"
    assert f"{pinned_link_id}: tracing" not in guest.run("bpftool link list", check=True).stdout
