"""The real supervisor under systemd: start to READY (fresh load, restart adopting), kill -9 recovery, memory.

warden.service runs in the guest the way `make demo` runs it (tests/guest/service.py: the shipped unit,
the image's configuration and trust key, initdata measured into the vTPM's PCR8), enforcing a bundle
signed here with the benchmark's 10-rule policy. The image files leave the unit disabled: the harness
starts it after the syscall rounds, which must run with no warden program loaded (self-protection,
once loaded, stays pinned for the life of the guest).
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.rules import BLOCKED_FILE, BenchRules
from bpf.kernel.objects import object_dir
from supervisor.enforcement import shipped_objects
from tests.guest.service import ENABLE_UNITS, host_warden, lsm_link_ids, pod_image_files, show, warden_status
from tests.guest.vm import GuestVM

PROBE_LOG = "/run/bench-probe.log"
PROBE_PID = "/run/bench-probe.pid"
# A process the policy covers (an unregistered mount namespace: the any-container rules) reading a
# Blocked file in a loop; each line: uptime (CLOCK_BOOTTIME seconds, no fork), then OK or the error.
PROBE = (f"unshare -m bash -c 'while :; do read up _ < /proc/uptime; "
         f"if err=$(cat {BLOCKED_FILE} 2>&1 >/dev/null); then echo \"$up OK\"; else echo \"$up $err\"; fi; "
         f"sleep 0.05; done'")

# Runs in the guest: SIGKILL through systemd, then wait for READY again; systemd's own timestamps
# (CLOCK_MONOTONIC, microseconds) give the times, so the poll interval does not enter them.
RESTART = textwrap.dedent("""
    import json, subprocess, sys, time
    PROPS = "NRestarts,ActiveState,SubState,MainPID,ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic"
    def show():
        out = subprocess.run(["systemctl", "show", "warden.service", "-p", PROPS], check=True,
                             capture_output=True, text=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    before = show()
    uptime = float(open("/proc/uptime").read().split()[0])
    killed = time.monotonic()
    subprocess.run(["systemctl", "kill", *sys.argv[1:], "--signal=SIGKILL", "warden.service"], check=True)
    deadline = killed + 300
    while True:
        now = show()
        if (int(now["NRestarts"]) > int(before["NRestarts"]) and now["ActiveState"] == "active"
                and now["SubState"] == "running"):
            break
        if time.monotonic() > deadline:
            sys.exit(f"warden.service not READY again within 300 s: {now}")
        time.sleep(0.05)
    ready = int(now["ActiveEnterTimestampMonotonic"]) / 1e6
    print(json.dumps({"killed_uptime": uptime, "kill_to_ready_s": ready - killed,
                      "start_to_ready_s": ready - int(now["ExecMainStartTimestampMonotonic"]) / 1e6,
                      "old_pid": int(before["MainPID"]), "new_pid": int(now["MainPID"])}))
""")


def image_files(work: Path) -> dict[str, str]:
    """Owner key, a bundle of the 10-rule bench policy (also the baseline), initdata; the image's files
    for them, with warden.service not started at boot."""
    policies = work / "policies"
    policies.mkdir(parents=True)
    rules = BenchRules(10)
    (policies / f"{rules.name}.yaml").write_text(rules.kubearmor())
    host_warden("keygen", str(work / "owner"))
    objects = [arg for name in sorted(shipped_objects()) for arg in ("--bpf-object", str(object_dir() / name))]
    bundle = work / "bench.bundle.json"
    host_warden("bundle", "sign", "--key", str(work / "owner.key"), "--version", "1", "--expires", "+30d",
                *objects, str(policies), "--output", str(bundle))
    initdata = host_warden("initdata", "build", "--bundle", str(bundle), "--algorithm", "sha256")
    files = pod_image_files((work / "owner.pem").read_text(), initdata, bundle.read_text())
    return {path: text for path, text in files.items() if text != ENABLE_UNITS}


def rss_kib(vm: GuestVM, pid: int) -> int:
    out = vm.run(f"grep VmRSS /proc/{pid}/status", check=True).stdout.split()
    return int(out[1])


def memory_kib(vm: GuestVM) -> dict[str, int]:
    """VmRSS of the supervisor (MainPID) and of its agent (the child running `warden agent`)."""
    main = int(show(vm, "MainPID")["MainPID"])
    agents = vm.run(f"pgrep -P {main} -f 'warden agent'").stdout.split()
    if main == 0 or len(agents) != 1:
        raise RuntimeError(f"expected the supervisor and one agent child, found MainPID={main} agents={agents}")
    return {"supervisor": rss_kib(vm, main), "agent": rss_kib(vm, int(agents[0]))}


@dataclass(frozen=True)
class Start:
    """One start of the supervisor: systemd's start-to-READY and the supervisor's own split."""

    start_to_ready_s: float
    status: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"start_to_ready_s": self.start_to_ready_s, "ready_after_s": self.status["ready_after_s"],
                "timings": self.status["timings"], "adopted": self.status["enforcement"]["adopted"]}


def start_fresh(vm: GuestVM) -> Start:
    vm.run("systemctl start initdata-measure.service", check=True, timeout=120)
    vm.run("systemctl start warden.service", check=True, timeout=300)  # Type=notify: returns at READY
    props = show(vm, "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    elapsed = (int(props["ActiveEnterTimestampMonotonic"]) - int(props["ExecMainStartTimestampMonotonic"])) / 1e6
    start = Start(elapsed, warden_status(vm, ready=True))
    if start.status["enforcement"]["adopted"]:
        raise RuntimeError("the first start adopted pins: it was meant to be a fresh load")
    return start


def kill_and_wait(vm: GuestVM, *kill_args: str) -> dict[str, Any]:
    script = vm.write_shared("bench-restart.py", RESTART)
    out = vm.run(f"/usr/bin/python3 {script} {' '.join(kill_args)}", check=True, timeout=400)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def restart_adopting(vm: GuestVM) -> Start:
    """SIGKILL the supervisor only (`--kill-who=main`); systemd restarts it and it adopts the pins."""
    restart = kill_and_wait(vm, "--kill-who=main")
    start = Start(float(restart["start_to_ready_s"]), warden_status(vm, ready=True))
    if not start.status["enforcement"]["adopted"]:
        raise RuntimeError("the restarted supervisor did not adopt the pinned enforcement")
    return start


@dataclass(frozen=True)
class Recovery:
    kill_to_ready_s: float
    probes_in_gap: int
    probe_successes_in_gap: int
    probes_total: int
    links_kept: bool

    def to_json(self) -> dict[str, Any]:
        return {"kill_to_ready_s": self.kill_to_ready_s, "probe_reads_in_gap": self.probes_in_gap,
                "probe_successes_in_gap": self.probe_successes_in_gap, "probe_reads_total": self.probes_total,
                "same_lsm_links": self.links_kept}


def kill_9_recovery(vm: GuestVM) -> Recovery:
    """`systemctl kill --signal=SIGKILL warden.service` (supervisor and agent) with a probe reading a
    Blocked file throughout; returns the time to READY and what the probe saw in the gap."""
    links = lsm_link_ids(vm)
    vm.run(f"setsid {PROBE} > {PROBE_LOG} 2>&1 < /dev/null & echo $! > {PROBE_PID}", check=True)
    vm.run("sleep 1", check=True)
    restart = kill_and_wait(vm)
    vm.run("sleep 1", check=True)
    vm.run(f"kill -- -$(cat {PROBE_PID})", check=True)
    lines = [line.split(" ", 1) for line in vm.run(f"cat {PROBE_LOG}", check=True).stdout.splitlines()]
    unexpected = [text for _, text in lines if text != "OK" and "Operation not permitted" not in text]
    if unexpected or len(lines) < 10:
        raise RuntimeError(f"probe did not run as intended ({len(lines)} reads): {unexpected[:3]}")
    start = float(restart["killed_uptime"])
    end = start + float(restart["kill_to_ready_s"])
    in_gap = [text for up, text in lines if start <= float(up) <= end]
    if not in_gap:
        raise RuntimeError("no probe read fell into the gap: the probe loop is too slow to tell")
    return Recovery(float(restart["kill_to_ready_s"]), len(in_gap), in_gap.count("OK"),
                    len(lines), lsm_link_ids(vm) == links)


@dataclass(frozen=True)
class ServiceResults:
    fresh: Start
    adopt: Start
    recovery: Recovery
    memory_fresh_kib: dict[str, int]
    memory_restarted_kib: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"fresh": self.fresh.to_json(), "adopt": self.adopt.to_json(), "kill_9": self.recovery.to_json(),
                "rss_kib_after_fresh_start": self.memory_fresh_kib,
                "rss_kib_after_kill_9_restart": self.memory_restarted_kib}


def measure_service(vm: GuestVM) -> ServiceResults:
    fresh = start_fresh(vm)
    vm.run("sleep 3", check=True)  # let the agent finish starting before reading memory
    memory_fresh = memory_kib(vm)
    adopt = restart_adopting(vm)
    recovery = kill_9_recovery(vm)
    vm.run("sleep 3", check=True)
    return ServiceResults(fresh, adopt, recovery, memory_fresh, memory_kib(vm))
