"""`make demo`: the main job, shown end to end in a Kata-like guest VM.

Each step prints one progress line and then what it proved; the demo exits 0 only when every
expectation held. It grows as capabilities land (see the issues); today it shows the foundation:
a CO-RE BPF-LSM object from bpf/ loads in the guest's 6.1 kernel, pins its link, and keeps
blocking a write after the process that loaded it has exited.
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.guest.vm import GuestError, GuestOptions, GuestVM

GUARDED = "/var/lib/demo-guarded"
PIN_DIR = "/sys/fs/bpf/warden-demo"

LOAD_AND_PIN = textwrap.dedent(f"""
    import os
    from pathlib import Path
    from bpf.loader import BpfObject, Libbpf
    from bpf.objects import object_path

    lib = Libbpf()
    Path("{PIN_DIR}").mkdir(exist_ok=True)
    with BpfObject(lib, object_path("write_guard")) as obj:
        obj.load()
        st = os.stat("{GUARDED}")
        key = st.st_ino.to_bytes(8, "little") + st.st_dev.to_bytes(4, "little") + bytes(4)
        obj.map("guarded_dirs").update(key, b"\\x01")
        link = obj.program("write_guard_file_open").attach()
        link.pin(Path("{PIN_DIR}/write_guard_link"))
        print(f"pid {{os.getpid()}} loaded write_guard, link id {{link.info().id}} pinned; exiting")
        link.release()
""")


@dataclass
class Report:
    failures: int = 0

    def step(self, title: str) -> None:
        print(f"\n==> {title}", flush=True)

    def show(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            print(f"    {line}")

    def expect(self, what: str, ok: bool) -> None:
        print(f"    [{'PASS' if ok else 'FAIL'}] {what}", flush=True)
        if not ok:
            self.failures += 1


def timed(report: Report, title: str, action: Callable[[], None]) -> None:
    report.step(title)
    started = time.monotonic()
    action()
    print(f"    ({time.monotonic() - started:.1f}s)")


def run_demo(vm: GuestVM, report: Report) -> None:
    def boot() -> None:
        vm.start()
        kernel = vm.run("uname -r", check=True).stdout.strip()
        lsms = vm.run("cat /sys/kernel/security/lsm", check=True).stdout.strip()
        report.show(f"guest kernel {kernel} ({vm.accel}), LSMs: {lsms}")
        report.expect("BPF-LSM is active in the guest", "bpf" in lsms.split(","))

    timed(report, "Booting the Kata-like guest VM (systemd as PID 1)", boot)

    report.step("Loading the CO-RE write_guard object and pinning its link in bpffs")
    vm.run("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf", check=True)
    vm.run(f"mkdir -p {GUARDED} && echo original > {GUARDED}/data", check=True)
    loaded = vm.python(LOAD_AND_PIN)
    report.show(loaded.stdout + loaded.stderr)
    report.expect("loader exited 0", loaded.returncode == 0)
    loader_pid = loaded.stdout.split()[1] if loaded.stdout.startswith("pid ") else "?"
    gone = vm.run(f"test ! -e /proc/{loader_pid}").returncode == 0
    report.expect(f"the loader (pid {loader_pid}) is gone", gone and loader_pid != "?")

    report.step(f"Writing to {GUARDED}/data with the loader gone")
    write = vm.run(f"echo tampered > {GUARDED}/data")
    report.show(f"$ echo tampered > {GUARDED}/data\n{write.stderr.strip()}")
    report.expect("the write is blocked: Operation not permitted",
                  write.returncode != 0 and "Operation not permitted" in write.stderr)
    content = vm.run(f"cat {GUARDED}/data", check=True).stdout.strip()
    report.expect("the file still reads 'original'", content == "original")

    report.step("Inspecting the pinned link with bpftool")
    links = vm.run("bpftool link list", check=True).stdout
    report.show(links)
    report.expect("a pinned lsm_mac link is attached", "lsm_mac" in links)


def main() -> int:
    report = Report()
    print("coco-warden demo: attestation-gated BPF-LSM enforcement in a confidential guest VM")
    with tempfile.TemporaryDirectory(prefix="warden-demo-") as workdir:
        vm = GuestVM(GuestOptions(tpm=True), Path(workdir))
        try:
            run_demo(vm, report)
        except GuestError as exc:
            print(f"\n[FAIL] the guest failed: {exc}", file=sys.stderr)
            return 1
        finally:
            vm.stop()
    verdict = "every expectation held" if report.failures == 0 else f"{report.failures} expectation(s) failed"
    print(f"\n==> demo finished: {verdict}")
    return 0 if report.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
