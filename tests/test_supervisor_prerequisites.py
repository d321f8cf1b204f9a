"""supervisor.prerequisites: bpffs under the pin directory, securityfs, BPF among the active LSMs.

The guest tests run the real check against systemd 252's guest; here the mountinfo parsing rules
(shadowing, escaped spaces, nested mount points) are fed real-format lines.
"""

from __future__ import annotations

from pathlib import Path

from supervisor.prerequisites import check_prerequisites


def fake_proc(tmp_path: Path, *mounts: tuple[str, str]) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    lines = [f"{20 + i} 1 0:{i} / {point} rw,relatime shared:{i} - {fstype} {fstype} rw"
             for i, (point, fstype) in enumerate(mounts)]
    (proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
    return proc


def test_everything_present(tmp_path: Path) -> None:
    security = tmp_path / "sec"
    security.mkdir()
    (security / "lsm").write_text("lockdown,capability,landlock,yama,apparmor,bpf\n")
    proc = fake_proc(tmp_path, ("/", "ext4"), ("/sys/fs/bpf", "bpf"), (str(security), "securityfs"))
    assert check_prerequisites(Path("/sys/fs/bpf/warden"), proc=proc, securityfs=security) == []


def test_each_missing_piece_is_one_line(tmp_path: Path) -> None:
    security = tmp_path / "sec"
    proc = fake_proc(tmp_path, ("/", "ext4"), ("/sys", "sysfs"))
    problems = check_prerequisites(Path("/sys/fs/bpf/warden"), proc=proc, securityfs=security)
    assert problems == [
        "/sys/fs/bpf/warden: not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)",
        f"{security}: securityfs is not mounted",
    ]


def test_bpf_lsm_inactive_and_a_later_mount_shadowing_bpffs(tmp_path: Path) -> None:
    security = tmp_path / "sec"
    security.mkdir()
    (security / "lsm").write_text("capability,yama\n")
    proc = fake_proc(tmp_path, ("/", "ext4"), ("/sys/fs/bpf", "bpf"), ("/sys/fs/bpf", "tmpfs"),
                     (str(security), "securityfs"))
    problems = check_prerequisites(Path("/sys/fs/bpf/warden"), proc=proc, securityfs=security)
    assert problems[0].startswith("/sys/fs/bpf/warden: not on a bpf filesystem")
    assert problems[1] == "BPF LSM is not active (lsm=capability,yama); boot with lsm=...,bpf"


def test_unreadable_mountinfo(tmp_path: Path) -> None:
    problems = check_prerequisites(Path("/sys/fs/bpf/warden"), proc=tmp_path / "absent")
    assert problems == [f"{tmp_path / 'absent'}/self/mountinfo: cannot read (No such file or directory)"]
