"""The kernel side the supervisor needs before it can enforce anything.

bpffs mounted under the pin directory (pins live there), securityfs mounted, and `bpf` among the
active LSMs. Under systemd 252 in a minimal guest neither filesystem is mounted for us and a pod-VM
image may differ, so `warden run` checks rather than assumes, and reports every missing piece as one
line (STATUS, or stderr for `warden run --check-config`).
"""

from __future__ import annotations

from pathlib import Path


def _mounts(mountinfo: Path) -> list[tuple[str, str]]:
    """(mount point, fs type) from /proc/self/mountinfo, in mount order."""
    mounts = []
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right:
            point = fields[4].replace("\\040", " ")
            mounts.append((point, right.split()[0]))
    return mounts


def check_prerequisites(pin_dir: Path, *, proc: Path = Path("/proc"),
                        securityfs: Path = Path("/sys/kernel/security")) -> list[str]:
    """Problems that make enforcement impossible; empty when bpffs, securityfs and BPF LSM are there."""
    problems = []
    try:
        mounts = _mounts(proc / "self" / "mountinfo")
    except OSError as exc:
        return [f"{proc}/self/mountinfo: cannot read ({exc.strerror})"]

    def fs_at(path: Path) -> str | None:
        best: tuple[int, str] | None = None
        for point, fstype in mounts:  # later mounts shadow earlier ones at the same point
            covers = path == Path(point) or Path(point) in path.parents
            if covers and (best is None or len(point) >= best[0]):
                best = (len(point), fstype)
        return None if best is None else best[1]

    if fs_at(pin_dir) != "bpf":
        problems.append(f"{pin_dir}: not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)")
    if fs_at(securityfs) != "securityfs":
        problems.append(f"{securityfs}: securityfs is not mounted")
    else:
        try:
            lsms = (securityfs / "lsm").read_text().strip().split(",")
        except OSError as exc:
            problems.append(f"{securityfs}/lsm: cannot read ({exc.strerror})")
        else:
            if "bpf" not in lsms:
                problems.append(f"BPF LSM is not active (lsm={','.join(lsms)}); boot with lsm=...,bpf")
    return problems
