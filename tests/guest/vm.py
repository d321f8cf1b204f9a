"""The guest-VM test bed: a Kata-like guest in which warden's kernel behaviour is proven.

The host kernel refuses BPF-LSM program loads, so every enforcement test runs in a guest:
Debian's 6.1 kernel (BPF-LSM on by default) under QEMU, booted from a tiny busybox initramfs that
mounts the host root read-only over virtio-9p under a tmpfs overlay and switches to the host's
`/lib/systemd/systemd` as PID 1. A second 9p share (`/testbed` in the guest) carries files to lay
over the guest root at boot and a command channel served by a small agent running as a systemd
service; `GuestVM.run` sends a shell command to it and returns exit code, stdout and stderr.

Nothing here is mocked: the kernel, systemd, the TPM (swtpm) and the OCI runtime are the real ones.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import lzma
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO_ROOT / "build" / "guest"
GUEST_TESTBED = "/testbed"  # where the work share is mounted inside the guest
VENV_BIN = REPO_ROOT / ".venv" / "bin"

# Loaded in this order by the initramfs: virtio transport, then 9p, then overlayfs.
INITRAMFS_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    # Kata guest kernels have virtio-blk built in, so the initdata disk is /dev/vdX before userspace.
    "virtio_blk",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
    "overlay",
)

# The guest serial console prints this once the initramfs hands over to systemd.
SWITCH_ROOT_MARKER = "warden-testbed: switching to systemd"
# A working KVM reaches the marker in about a second; TCG needs about three.
KVM_PROBE_TIMEOUT_S = 12.0

INIT_SCRIPT = f"""#!/bin/busybox sh
# initramfs /init: host root (read-only 9p) + tmpfs upper = overlay root; then systemd as PID 1.
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "warden-testbed: $*"; sleep 1; poweroff -f; }}
mkdir -p /proc /sys /dev /lower /rw /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod "/modules/$m.ko" || fail "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower \\
  || fail "mount hostroot failed"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
# xino=on: inode numbers unique across the 9p lower and the tmpfs upper (fs id in the high bits), as
# on a single-filesystem pod-VM root; without it a new file can share i_ino with a lower one, and
# self-protection (keyed by device and inode number) would see a protected inode there.
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work,xino=on /newroot \\
  || fail "overlay failed"
mkdir -p /newroot{GUEST_TESTBED}
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=512000 testbed /newroot{GUEST_TESTBED} \\
  || fail "mount testbed failed"
cp -a /newroot{GUEST_TESTBED}/rootfs/. /newroot/ || fail "copying the rootfs overlay failed"
# The host image is a Docker one: without this, systemd runs in container mode and ignores the
# kernel command line, which is not how a pod VM behaves.
rm -f /newroot/.dockerenv
echo "{SWITCH_ROOT_MARKER}"
umount /proc /sys
mount --move /dev /newroot/dev
# The unit to boot comes from the kernel command line (systemd.unit=), as in a Kata guest.
exec switch_root /newroot /lib/systemd/systemd
"""

TESTBED_TARGET = """[Unit]
Description=coco-warden guest test bed
Requires=basic.target
After=basic.target
Wants=warden-testbed-agent.service
AllowIsolate=yes
"""

AGENT_UNIT = f"""[Unit]
Description=coco-warden test bed command agent
After=basic.target

[Service]
Type=simple
ExecStart={VENV_BIN / "python"} {REPO_ROOT / "tests" / "guest" / "agent.py"} {GUEST_TESTBED}/channel
"""

# The host's fstab and timers mean nothing in the guest; an empty fstab keeps systemd from
# waiting on devices that do not exist.
GUEST_FSTAB = "# coco-warden test bed: the root is an overlay set up by the initramfs\n"
# Debian's tmpfiles.d/tmp.conf empties /tmp at boot ("D /tmp"), which in the guest would hide a
# checkout that lives under the host's /tmp (CI may clone there). Keep /tmp as the host has it.
GUEST_TMPFILES_TMP = "d /tmp 1777 root root -\n"
# `make bench` installs AppArmor's tools on the host, which enables apparmor.service; in the guest
# it would compile Debian's profiles at every boot. The benchmark loads its own profile instead.
GUEST_NO_APPARMOR_AT_BOOT = "[Unit]\nConditionPathExists=/etc/warden-testbed/load-apparmor-profiles\n"


class GuestError(Exception):
    """The test bed could not boot the guest or talk to it."""


class GuestTimeout(GuestError):
    """A guest command or the boot did not finish in time."""


@dataclass(frozen=True)
class GuestOptions:
    tpm: bool = False
    memory_mib: int = 2048
    cpus: int = 2
    boot_timeout_s: float = 180.0
    # Extra files laid over the guest root before systemd starts: guest path -> content.
    files: Mapping[str, str] = field(default_factory=dict)
    # Which of `files` are executable (mode 0755).
    executables: tuple[str, ...] = ()
    # Directories copied over the guest root, modes kept: guest directory -> host directory.
    trees: Mapping[str, Path] = field(default_factory=dict)
    # Symbolic links laid over the guest root (`systemctl enable` at image build): guest path -> target.
    links: Mapping[str, str] = field(default_factory=dict)
    # The unit systemd boots (kernel command line systemd.unit=); the command agent is added to it.
    boot_unit: str = "warden-testbed.target"
    # Raw disk images attached read-only as virtio-blk disks: (host image, serial) in /dev/vda, vdb... order.
    disks: tuple[tuple[Path, str], ...] = ()


@dataclass(frozen=True)
class CommandResult:
    command: str
    returncode: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool

    def __str__(self) -> str:
        return (
            f"$ {self.command}\n[exit {self.returncode}{' TIMEOUT' if self.timed_out else ''}"
            f" in {self.duration_s:.2f}s]\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def kernel_release() -> str:
    """The newest Debian kernel installed under /boot (linux-image-amd64)."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        raise GuestError("no /boot/vmlinuz-*: install linux-image-amd64 (make setup does)")
    return kernels[-1].name.removeprefix("vmlinuz-")


def build_initramfs(kver: str, out_dir: Path = BUILD_DIR) -> Path:
    """Build (or reuse) the busybox + modules initramfs for `kver`; cached by content hash."""
    busybox = Path("/bin/busybox")
    module_paths = []
    for name in INITRAMFS_MODULES:
        found = subprocess.run(
            ["modinfo", "-k", kver, "-n", name], check=True, capture_output=True, text=True
        ).stdout.strip()
        module_paths.append((name, Path(found)))
    fingerprint = hashlib.sha256(INIT_SCRIPT.encode())
    fingerprint.update(kver.encode())
    fingerprint.update(busybox.read_bytes())
    key = fingerprint.hexdigest()[:16]
    image = out_dir / f"initramfs-{kver}-{key}.cpio"
    if image.exists():
        return image
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as staging_name:
        staging = Path(staging_name)
        (staging / "bin").mkdir()
        (staging / "modules").mkdir()
        shutil.copy2(busybox, staging / "bin" / "busybox")
        for name, path in module_paths:
            data = path.read_bytes()
            if path.suffix == ".xz":
                data = lzma.decompress(data)
            (staging / "modules" / f"{name}.ko").write_bytes(data)
        (staging / "modules.order").write_text("\n".join(INITRAMFS_MODULES) + "\n")
        init = staging / "init"
        init.write_text(INIT_SCRIPT)
        init.chmod(0o755)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
        # Per-process name: two test runs may build the same image at once; the rename is atomic.
        tmp_image = image.with_suffix(f".{os.getpid()}.tmp")
        with tmp_image.open("wb") as out:
            subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc"],
                input="\n".join(files).encode(),
                stdout=out,
                cwd=staging,
                check=True,
            )
        tmp_image.rename(image)
    return image


def kvm_usable(kver: str) -> bool:
    """Whether a short KVM probe boot reaches systemd; cached per machine and kernel.

    /dev/kvm exists on this machine but KVM boots have hung here, so KVM is used only where a
    probe proves it works; otherwise TCG.
    """
    if os.environ.get("WARDEN_GUEST_ACCEL") in ("tcg", "kvm"):
        return os.environ["WARDEN_GUEST_ACCEL"] == "kvm"
    cache = BUILD_DIR / f"accel-{kver}.json"
    if cache.exists():
        return bool(json.loads(cache.read_text())["kvm"])
    usable = False
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        with tempfile.TemporaryDirectory(prefix="warden-kvm-probe-") as probe_dir:
            vm = GuestVM(GuestOptions(), Path(probe_dir), accel="kvm")
            try:
                vm.launch()
                usable = vm.wait_for_serial(SWITCH_ROOT_MARKER, timeout_s=KVM_PROBE_TIMEOUT_S)
            except GuestError:
                usable = False
            finally:
                vm.stop()
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"kvm": usable}))
    return usable


class GuestVM:
    """One booted guest: QEMU (+ optional swtpm) and the command channel to its agent."""

    def __init__(self, options: GuestOptions, workdir: Path, accel: str | None = None) -> None:
        self.options = options
        self.workdir = workdir
        self.kver = kernel_release()
        self._accel = accel
        self.channel = workdir / "channel"
        self.rootfs = workdir / "rootfs"
        self.serial_log = workdir / "serial.log"
        self._qemu: subprocess.Popen[bytes] | None = None
        self._swtpm: subprocess.Popen[bytes] | None = None
        self._ids = itertools.count(1)
        self.boot_seconds: float | None = None

    @property
    def accel(self) -> str:
        if self._accel is None:
            self._accel = "kvm" if kvm_usable(self.kver) else "tcg"
        return self._accel

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Boot the guest and wait until its command agent answers."""
        started = time.monotonic()
        self.launch()
        ready = self.channel / "ready"
        deadline = started + self.options.boot_timeout_s
        while not ready.exists():
            self._raise_if_dead()
            if time.monotonic() > deadline:
                tail = self.serial_tail()
                self.stop()
                raise GuestTimeout(
                    f"guest did not become ready within {self.options.boot_timeout_s:.0f}s "
                    f"(accel={self.accel})\n{tail}"
                )
            time.sleep(0.05)
        self.boot_seconds = time.monotonic() - started

    def launch(self) -> None:
        """Start QEMU (and swtpm) without waiting for the guest."""
        initramfs = build_initramfs(self.kver)
        self._lay_out_workdir()
        argv = self._qemu_argv(initramfs)
        self._qemu = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def wait_for_serial(self, marker: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.serial_log.exists() and marker in self.serial_log.read_text(errors="replace"):
                return True
            self._raise_if_dead()
            time.sleep(0.05)
        return False

    def _raise_if_dead(self) -> None:
        if self._qemu is None:
            raise GuestError("guest was never started")
        if self._qemu.poll() is not None:
            stderr = self._qemu.stderr.read().decode(errors="replace") if self._qemu.stderr else ""
            raise GuestError(f"qemu exited ({self._qemu.returncode}): {stderr.strip()}\n{self.serial_tail()}")

    def stop(self) -> None:
        if self._qemu is not None and self._qemu.poll() is None:
            self._qemu.send_signal(signal.SIGTERM)
            try:
                self._qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._qemu.kill()
                self._qemu.wait()
        if self._swtpm is not None and self._swtpm.poll() is None:
            self._swtpm.terminate()
            try:
                self._swtpm.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._swtpm.kill()
        self._qemu = None
        self._swtpm = None

    def __enter__(self) -> GuestVM:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- commands --------------------------------------------------------------------------

    def run(self, command: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        """Run `command` with bash as root in the guest (under systemd, in the agent's cgroup)."""
        if self._qemu is None or self._qemu.poll() is not None:
            raise GuestError(f"guest is not running\n{self.serial_tail()}")
        request_id = f"{os.getpid()}-{next(self._ids)}"
        request = json.dumps({"command": command, "timeout": timeout})
        tmp = self.channel / f".{request_id}.req.tmp"
        tmp.write_text(request)
        tmp.rename(self.channel / f"{request_id}.req")
        response_path = self.channel / f"{request_id}.resp"
        deadline = time.monotonic() + timeout + 30.0  # the agent enforces `timeout` itself
        while not response_path.exists():
            if self._qemu.poll() is not None:
                raise GuestError(f"guest died while running {command!r}\n{self.serial_tail()}")
            if time.monotonic() > deadline:
                raise GuestTimeout(f"no answer from the guest agent for {command!r}\n{self.serial_tail()}")
            time.sleep(0.02)
        answer = json.loads(response_path.read_text())
        response_path.unlink()
        result = CommandResult(
            command=command,
            returncode=int(answer["returncode"]),
            stdout=answer["stdout"],
            stderr=answer["stderr"],
            duration_s=float(answer["duration_s"]),
            timed_out=bool(answer["timed_out"]),
        )
        if check and result.returncode != 0:
            raise GuestError(f"command failed in the guest:\n{result}\n{self.serial_tail()}")
        return result

    def python(self, code: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        """Run Python `code` with the project's venv interpreter inside the guest."""
        script = self.write_shared(f"py-{next(self._ids)}.py", code)
        return self.run(f"{self.venv_python} {script}", timeout=timeout, check=check)

    @property
    def venv_python(self) -> str:
        """The project's venv interpreter, at the same path inside the guest."""
        return str(VENV_BIN / "python")

    def write_shared(self, name: str, content: str) -> str:
        """Write a file into the shared scratch directory; returns its path inside the guest."""
        scratch = self.workdir / "scratch"
        scratch.mkdir(exist_ok=True)
        (scratch / name).write_text(content)
        return f"{GUEST_TESTBED}/scratch/{name}"

    def host_path(self, guest_path: str) -> Path:
        """The host path of a file the guest wrote under /testbed."""
        if not guest_path.startswith(GUEST_TESTBED + "/"):
            raise ValueError(f"{guest_path} is not under {GUEST_TESTBED}")
        return self.workdir / guest_path.removeprefix(GUEST_TESTBED + "/")

    def serial_tail(self, lines: int = 60) -> str:
        try:
            text = self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no serial log)"
        printed = [line for line in text.splitlines() if line.strip()]
        tail = "\n".join(printed[-lines:])
        return f"--- guest serial log (last {lines} lines) ---\n{tail}"

    # -- internals -------------------------------------------------------------------------

    def _lay_out_workdir(self) -> None:
        self.channel.mkdir(parents=True, exist_ok=True)
        for stale in self.channel.iterdir():
            stale.unlink()
        files = {
            "/etc/fstab": GUEST_FSTAB,
            "/etc/tmpfiles.d/tmp.conf": GUEST_TMPFILES_TMP,
            "/etc/systemd/system/apparmor.service.d/warden-testbed.conf": GUEST_NO_APPARMOR_AT_BOOT,
            "/etc/systemd/system/warden-testbed.target": TESTBED_TARGET,
            "/etc/systemd/system/warden-testbed-agent.service": AGENT_UNIT,
            **self.options.files,
        }
        for guest_dir, host_dir in self.options.trees.items():
            shutil.copytree(host_dir, self.rootfs / guest_dir.lstrip("/"), dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("README.md"))
        if self.options.boot_unit != "warden-testbed.target":
            files[f"/etc/systemd/system/{self.options.boot_unit}.d/warden-testbed.conf"] = (
                "[Unit]\nWants=warden-testbed-agent.service\n")
        for guest_path, content in files.items():
            target = self.rootfs / guest_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            if guest_path in self.options.executables:
                target.chmod(0o755)
        for guest_path, link_target in self.options.links.items():
            link = self.rootfs / guest_path.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(link_target)

    def _qemu_argv(self, initramfs: Path) -> list[str]:
        append = (
            f"console=ttyS0 panic=-1 quiet loglevel=4 systemd.unit={self.options.boot_unit} "
            "systemd.show_status=false systemd.log_target=console systemd.journald.forward_to_console=0"
        )
        argv = [
            "qemu-system-x86_64",
            "-accel", self.accel,
            "-m", str(self.options.memory_mib),
            "-smp", str(self.options.cpus),
            "-display", "none",
            "-monitor", "none",
            "-serial", f"file:{self.serial_log}",
            "-no-reboot",
            "-nic", "none",
            "-kernel", f"/boot/vmlinuz-{self.kver}",
            "-initrd", str(initramfs),
            "-append", append,
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            "-fsdev", f"local,id=testbed,path={self.workdir},security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=testbed,mount_tag=testbed",
        ]
        # `-cpu host` aborts on this machine's KVM (MSR 0x10a); TCG gets every feature it emulates.
        argv += ["-cpu", "kvm64" if self.accel == "kvm" else "max"]
        for index, (image, serial) in enumerate(self.options.disks):
            argv += ["-drive", f"file={image},if=none,id=disk{index},format=raw,readonly=on",
                     "-device", f"virtio-blk-pci,drive=disk{index},serial={serial}"]
        if self.options.tpm:
            argv += self._start_swtpm()
        return argv

    def _start_swtpm(self) -> list[str]:
        state = self.workdir / "tpm-state"
        state.mkdir(exist_ok=True)
        sock = self.workdir / "swtpm.sock"
        self._swtpm = subprocess.Popen(
            [
                "swtpm", "socket", "--tpm2",
                "--tpmstate", f"dir={state}",
                "--ctrl", f"type=unixio,path={sock}",
                "--flags", "not-need-init",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or self._swtpm.poll() is not None:
                raise GuestError("swtpm did not create its control socket")
            time.sleep(0.02)
        return [
            "-chardev", f"socket,id=chrtpm,path={sock}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", "tpm-tis,tpmdev=tpm0",
        ]
