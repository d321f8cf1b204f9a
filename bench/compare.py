"""Side-by-side comparisons for `make bench`, measured in the same guest boot as warden.

- AppArmor (an active LSM in the guest kernel): the benchmark's rules as a profile (bench/rules.py),
  compiled and loaded with apparmor_parser; the syscall loop (bench/syscalls.py) runs confined by it.
- bcc: compiling and loading, at boot, an LSM program equivalent to write_guard with Debian's
  python3-bpfcc (runtime compilation against the guest kernel's headers), against loading the
  shipped CO-RE object, which is why warden ships CO-RE objects.

Needs scripts/install-bench-deps.sh (apparmor, python3-bpfcc, linux-headers for the guest kernel).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

from bench.rules import COUNTS, TREE, BenchRules
from tests.guest.vm import REPO_ROOT, GuestVM

MICROBENCH_SRC = REPO_ROOT / "bench" / "microbench.c"
MICROBENCH = REPO_ROOT / "build" / "bench" / "microbench"
BCC_SCRIPT = REPO_ROOT / "bench" / "bcc_lsm.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-bpfcc is installed


def build_microbench() -> Path:
    """Compile the C microbenchmark (the guest runs the host's binaries from the shared root)."""
    if not MICROBENCH.exists() or MICROBENCH.stat().st_mtime < MICROBENCH_SRC.stat().st_mtime:
        MICROBENCH.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(MICROBENCH), str(MICROBENCH_SRC)],
                       check=True)
    return MICROBENCH


def load_apparmor_profiles(vm: GuestVM) -> dict[int, float]:
    """Compile and load the profile for each rule count; returns apparmor_parser's seconds per count.
    Fails unless each profile really confines (a write under the readOnly tree is refused)."""
    seconds: dict[int, float] = {}
    for count in COUNTS:
        rules = BenchRules(count)
        profile = vm.write_shared(f"{rules.name}.profile", rules.apparmor())
        loaded = vm.run(f"apparmor_parser --replace --skip-cache {profile}", check=True, timeout=1800)
        seconds[count] = loaded.duration_s
        denied = vm.run(f"aa-exec -p {rules.name} -- /bin/sh -c 'echo x > {TREE}/a/probe'")
        if denied.returncode == 0 or "Permission denied" not in denied.stderr:
            raise RuntimeError(f"AppArmor profile {rules.name} did not confine the benchmark: {denied}")
    return seconds


@dataclass(frozen=True)
class LoadComparison:
    bcc_compile_load_attach_s: float
    core_load_attach_s: float

    def to_json(self) -> dict[str, float]:
        return {
            "bcc_compile_load_attach_s": self.bcc_compile_load_attach_s,
            "core_load_attach_s": self.core_load_attach_s,
            "bcc_vs_core": self.bcc_compile_load_attach_s / self.core_load_attach_s,
        }


def compare_bcc(vm: GuestVM) -> float:
    """bcc's compile+load+attach seconds of the equivalent program; fails unless it enforced."""
    vm.run("mkdir -p /srv/bcc-guarded", check=True)
    out = vm.run(f"{SYSTEM_PYTHON} {BCC_SCRIPT} /srv/bcc-guarded", check=True, timeout=1800)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    if not data["write_denied"]:
        raise RuntimeError("the bcc program did not deny the write: comparison invalid")
    return float(data["compile_load_attach_s"])


CORE_LOAD = textwrap.dedent("""
    import json, time
    from bpf.kernel.libbpf import BpfObject, Libbpf
    from bpf.kernel.objects import CHECKOUT_DIR
    lib = Libbpf()
    started = time.monotonic()
    with BpfObject(lib, CHECKOUT_DIR / "tests" / "write_guard.bpf.o") as obj:
        obj.load()
        link = obj.program("write_guard_file_open").attach()
        elapsed = time.monotonic() - started
        link.release()
    print(json.dumps({"load_attach_s": elapsed}))
""")


def core_load_attach_s(vm: GuestVM) -> float:
    out = vm.python(CORE_LOAD, timeout=300, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["load_attach_s"])


def compare_loads(vm: GuestVM) -> LoadComparison:
    return LoadComparison(compare_bcc(vm), core_load_attach_s(vm))
