"""`make demo`: the whole story of coco-warden in Kata-like guest VMs, one progress line per step.

1. The pod owner signs the seed's three policies, builds the CoCo initdata, and gets the Kata
   annotation and the reference values a Trustee operator registers (TDX, SNP, vTPM).
2. A guest boots with a swtpm vTPM; at launch PCR8 is extended with the initdata digest (what the
   firmware and kata-agent do in a CoCo VM); warden.service, enabled, gates and enforces.
3. Real crun containers, started through the OCI hook: raw socket, /bin write and the MySQL data are
   blocked; the alert JSON the agent wrote is shown.
4. Root in the VM cannot kill the supervisor or the agent; systemd (PID 1) can, and enforcement holds
   through the gap while systemd brings them back.
5. An unrestricted pod (its own VM, its own initdata) can do all of it. Then the initdata that pod
   reads is swapped for a tampered one: the gate refuses it and the workload never starts.

Exit 0 only when every expectation held. Output is plain text (no colour), one line per check.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bpf.kernel.objects import object_dir
from supervisor.enforcement import shipped_objects
from tests.guest.service import (
    ALERTS,
    INITDATA,
    host_warden,
    is_ready,
    lsm_link_ids,
    make_container,
    pod_image_files,
    run_checks,
    show,
    wait_until,
)
from tests.guest.vm import REPO_ROOT, GuestError, GuestOptions, GuestVM

SEED_POLICIES = REPO_ROOT / "tests" / "data" / "policies" / "seed"
PROBE_SCRIPT = "while :; do if touch /bin/probe 2>/dev/null; then echo OK; else echo DENIED; fi; sleep 0.1; done"


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def step(self, number: int, title: str) -> None:
        print(f"\n==> [{number}/5] {title}  (t+{time.monotonic() - self.started:.0f}s)", flush=True)

    def progress(self, text: str) -> None:
        print(f"    ... {text}", flush=True)

    def show(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            print(f"    {line}")

    def expect(self, what: str, ok: bool) -> bool:
        print(f"    [{'PASS' if ok else 'FAIL'}] {what}", flush=True)
        if not ok:
            self.failures.append(what)
        return ok

    def table(self, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        for i, row in enumerate((header, *rows)):
            self.show("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
            if i == 0:
                self.show("  ".join("-" * w for w in widths))


@dataclass(frozen=True)
class Artifacts:
    owner_pem: str
    initdata: str  # the restricted pod's: the seed's three policies
    unrestricted_initdata: str  # another pod's: only block-mysql-data-access
    tampered_initdata: str  # the unrestricted pod's, with the bundle swapped by an attacker
    baseline: str


# The pods the bundles are for, as their owners sign them (issue 15 item 1): which rules a container
# gets follows from these labels and container names, never from annotations the host writes.
RESTRICTED_POD = {"namespace": "default", "labels": {"app": "mysql"}, "containers": ["mysql"]}
UNRESTRICTED_POD = {"namespace": "default", "labels": {"app": "web"}, "containers": ["app"]}


def sign(work: Path, name: str, key: Path, policies: list[Path], version: int = 1,
         pod: dict[str, object] | None = None) -> Path:
    directory = work / f"{name}-policies"
    directory.mkdir()
    pod_args: list[str] = []
    if pod is not None:
        (work / f"{name}-pod.yaml").write_text(json.dumps(pod))  # JSON is YAML
        pod_args = ["--pod", str(work / f"{name}-pod.yaml")]
    for policy in policies:
        shutil.copy(policy, directory / policy.name)
    bundle = work / f"{name}.bundle.json"
    # The bundle pins the BPF objects it was written for: the supervisor refuses other enforcement code.
    objects = [arg for path in sorted(shipped_objects()) for arg in ("--bpf-object", str(object_dir() / path))]
    host_warden("bundle", "sign", "--key", str(key), "--version", str(version), "--expires", "+30d",
                *objects, *pod_args, str(directory), "--output", str(bundle))
    return bundle


def owner_side(work: Path, report: Report) -> Artifacts:
    seed = sorted(SEED_POLICIES.glob("*.yaml"))
    mysql_only = [p for p in seed if p.stem == "block-mysql-data-access"]
    host_warden("keygen", str(work / "owner"))
    host_warden("keygen", str(work / "attacker"))
    bundle = sign(work, "restricted", work / "owner.key", seed, pod=RESTRICTED_POD)
    initdata = work / "initdata.toml"
    initdata.write_text(host_warden("initdata", "build", "--bundle", str(bundle), "--algorithm", "sha256"))
    report.show(f"signed bundle v1 with {', '.join(p.stem for p in seed)}")
    digest = host_warden("initdata", "digest", str(initdata)).strip()
    report.show(f"initdata: {initdata.stat().st_size} bytes, sha256 {digest}")
    annotation = host_warden("initdata", "annotation", str(initdata)).strip()
    report.show(f"pod annotation io.katacontainers.config.hypervisor.cc_init_data: {annotation[:48]}... "
                f"({len(annotation)} chars)")
    report.show("reference values for the Trustee operator:")
    for tee, register in (("tdx", "MRCONFIGID"), ("snp", "HOSTDATA"), ("vtpm", "PCR8")):
        report.show(f"  {tee:5} {register:10} {host_warden('initdata', 'digest', '--tee', tee, str(initdata)).strip()}")

    unrestricted = work / "unrestricted.toml"
    unrestricted_bundle = sign(work, "unrestricted", work / "owner.key", mysql_only, pod=UNRESTRICTED_POD)
    unrestricted.write_text(host_warden("initdata", "build", "--bundle", str(unrestricted_bundle),
                                        "--algorithm", "sha256"))
    tampered = work / "tampered.toml"
    permissive = sign(work, "tampered", work / "attacker.key", mysql_only, version=99)
    tampered.write_text(host_warden("initdata", "build", "--bundle", str(permissive), "--algorithm", "sha256"))
    baseline = sign(work, "baseline", work / "owner.key", [p for p in seed if p.stem != "block-mysql-data-access"])
    report.expect("owner key, bundle, initdata and reference values made with the warden CLI", True)
    return Artifacts((work / "owner.pem").read_text(), initdata.read_text(), unrestricted.read_text(),
                     tampered.read_text(), baseline.read_text())


@contextmanager
def booted(work: Path, name: str, files: dict[str, str], report: Report) -> Iterator[GuestVM]:
    vm = GuestVM(GuestOptions(tpm=True, files=files), work / name)
    report.progress(f"booting the {name} pod VM (QEMU, swtpm vTPM, systemd as PID 1)")
    try:
        vm.start()
        report.progress(f"guest up after {vm.boot_seconds:.1f}s ({vm.accel}); waiting for warden.service READY")
        yield vm
    except (GuestError, AssertionError):
        # What warden said, for whoever reads the failure (the serial tail comes with the error).
        for command in ("journalctl -u warden.service -n 15 --no-pager -o cat", f"tail -n 5 {ALERTS}"):
            print(f"    $ {command}\n" + vm.run(command).stdout, file=sys.stderr)
        raise
    finally:
        vm.stop()


def wait_ready(vm: GuestVM, report: Report) -> None:
    waited = wait_until("warden.service READY", lambda: is_ready(vm), 240, vm)
    props = show(vm, "ActiveState", "StatusText")
    report.show(f"warden.service {props['ActiveState']} (+{waited:.1f}s): STATUS={props['StatusText']}")


def blocked(outcome: str) -> bool:
    """Denied by an LSM (EPERM), not by anything else (a read-only root would say EROFS)."""
    return outcome.startswith("denied") and "Operation not permitted" in outcome


def restricted_pod(vm: GuestVM, report: Report) -> None:
    wait_ready(vm, report)
    pcr8 = vm.run("cat /sys/class/tpm/tpm0/pcr-sha256/8", check=True).stdout.strip().lower()
    report.show(f"vTPM PCR8 = {pcr8}")
    report.expect("READY=1 only after the gate accepted and the policy was enforced (measured by vtpm)",
                  "measured by vtpm" in show(vm, "StatusText")["StatusText"])
    report.expect("the status says INSECURE plainly: swtpm is a TPM no TEE vouches for (opted in)",
                  "INSECURE(vtpm)" in show(vm, "StatusText")["StatusText"])

    report.step(3, "Restricted containers (real crun, registered through the OCI hook)")
    mysql = run_checks(vm, "mysql", {"app": "mysql"})
    web = run_checks(vm, "web", None)
    report.table(("action", "container mysql (signed, app=mysql)", "container web (not in the signed pod)"),
                 [(action, mysql[action], web.get(action, "?")) for action in mysql])
    report.expect("raw socket blocked in both (net-raw-block)",
                  blocked(mysql["raw socket"]) and blocked(web["raw socket"]))
    report.expect("write to /bin blocked in both (file-integrity-monitoring)",
                  blocked(mysql["write /bin/evil"]) and blocked(web["write /bin/evil"]))
    report.expect("/var/lib/mysql denied to mysql, and to a container the signed pod does not list (it gets "
                  "the union of the pod's rules: the host cannot pick rules by naming or labelling)",
                  blocked(mysql["cat /var/lib/mysql/any-file"]) and blocked(web["cat /var/lib/mysql/any-file"]))
    time.sleep(1)  # the agent polls the ring buffer every 250 ms
    alerts = [json.loads(line) for line in vm.run(f"cat {ALERTS}", check=True).stdout.splitlines()]
    matched = [a for a in alerts if a.get("Type") == "MatchedPolicy"]
    sample = next((a for a in matched if a["PolicyName"] == "block-mysql-data-access"), None)
    if sample is not None:
        report.show("alert (agent, " + ALERTS + "):")
        report.show(json.dumps({k: sample[k] for k in ("Timestamp", "HostName", "ContainerName", "Labels",
                                                        "PolicyName", "Severity", "Type", "Operation",
                                                        "Resource", "Action", "Result", "Enforcer")}, indent=2))
    report.expect("the agent wrote KubeArmor-style alerts for all three policies",
                  {a["PolicyName"] for a in matched} >= {"net-raw-block", "file-integrity-monitoring",
                                                          "block-mysql-data-access"})

    report.step(4, "Killing the supervisor and its agent")
    links = lsm_link_ids(vm)
    probe = make_container(vm, "probe", ["sh", "-c", f"{PROBE_SCRIPT} > /probe.log"])
    # detached: its stdio must not be the guest agent's, or the command never finishes
    vm.run(f"crun run -d -b {probe} probe-1 </dev/null >/dev/null 2>&1", check=True, timeout=120)
    main_pid = show(vm, "MainPID")["MainPID"]
    agent_pid = vm.run(f"pgrep -P {main_pid} -f 'warden agent'").stdout.split()
    for who, pid in (("supervisor", main_pid), ("agent", agent_pid[0] if agent_pid else "0")):
        attempt = vm.run(f"kill -9 {pid}")
        report.show(f"root in the VM: kill -9 {pid} ({who}) -> {attempt.stderr.strip() or 'exit 0'}")
        report.expect(f"root in the VM cannot kill the {who} (self-protection)",
                      attempt.returncode != 0 and "not permitted" in attempt.stderr)
    restarts = int(show(vm, "NRestarts")["NRestarts"])
    started = time.monotonic()
    vm.run("systemctl kill --signal=SIGKILL warden.service", check=True)
    report.show("systemd (PID 1, the one process allowed to): systemctl kill --signal=SIGKILL warden.service")
    wait_until("warden.service back", lambda: int(show(vm, "NRestarts")["NRestarts"]) > restarts and is_ready(vm),
               240, vm)
    back = time.monotonic() - started
    vm.run("sleep 1; crun kill probe-1 KILL; sleep 0.5; crun delete -f probe-1")
    log = vm.run(f"cat {probe}/rootfs/probe.log", check=True).stdout.split()
    report.show(f"back to READY after {back:.1f}s; probe in a container: {log.count('DENIED')} writes to /bin "
                f"denied, {log.count('OK')} succeeded")
    report.expect("systemd restarted the supervisor and it is READY again", is_ready(vm))
    report.expect("no probe write succeeded while the supervisor was down", log.count("OK") == 0 and len(log) > 5)
    report.expect("the same LSM links are attached (adopted, never detached)", lsm_link_ids(vm) == links)
    self_alerts = [json.loads(line) for line in vm.run(f"cat {ALERTS}", check=True).stdout.splitlines()
                   if "warden-self-protection" in line]
    report.expect(f"the kill attempts were alerted ({len(self_alerts)} self-protection alerts)",
                  any(a["Operation"] == "signal" for a in self_alerts))


def unrestricted_pod(vm: GuestVM, report: Report, tampered: str) -> None:
    wait_ready(vm, report)
    free = run_checks(vm, "app", None)
    report.table(("action", "container app (another pod's policy)"), list(free.items()))
    report.expect("everything is allowed in the unrestricted pod", set(free.values()) == {"allowed"})

    report.progress("the initdata this pod reads is swapped for a tampered one; warden restarts")
    vm.run("systemctl stop warden.service", check=True)
    vm.run(f"cat > {INITDATA} < {vm.write_shared('tampered.toml', tampered)}", check=True)
    vm.run("systemctl start --no-block warden.service", check=True)
    wait_until("the refusal", lambda: "gate refused" in show(vm, "StatusText")["StatusText"], 120, vm)
    report.show(f"STATUS={show(vm, 'StatusText')['StatusText']}")
    report.expect("the gate refused the tampered initdata (PCR8 holds the launched one) and READY never came",
                  "PCR8: measured" in show(vm, "StatusText")["StatusText"] and not is_ready(vm))
    directory = make_container(vm, "late", ["sh", "-c", "echo started > /started"])
    result = vm.run(f"crun run -b {directory} late-1", timeout=120)
    report.show(f"crun run late-1 -> exit {result.returncode}: {result.stderr.strip().splitlines()[-1:]}")
    started = vm.run(f"test -e {directory}/rootfs/started").returncode == 0
    report.expect("the workload never started (the OCI hook failed closed)", result.returncode != 0 and not started)


def main() -> int:
    report = Report()
    print("coco-warden demo: attestation-gated BPF-LSM enforcement in a confidential guest VM")
    with tempfile.TemporaryDirectory(prefix="warden-demo-") as tmp:
        work = Path(tmp)
        try:
            report.step(1, "Pod owner: signing key, signed bundle of the seed's policies, initdata")
            artifacts = owner_side(work, report)
            report.step(2, "Restricted pod: boot with PCR8 extended at launch, warden.service enabled")
            files = pod_image_files(artifacts.owner_pem, artifacts.initdata, artifacts.baseline)
            with booted(work, "restricted", files, report) as vm:
                restricted_pod(vm, report)
            report.step(5, "Unrestricted pod, then tampered initdata")
            files = pod_image_files(artifacts.owner_pem, artifacts.unrestricted_initdata, artifacts.baseline)
            with booted(work, "unrestricted", files, report) as vm:
                unrestricted_pod(vm, report, artifacts.tampered_initdata)
        except (GuestError, AssertionError, RuntimeError) as exc:
            print(f"\n[FAIL] {exc}", file=sys.stderr)
            return 1
    total = time.monotonic() - report.started
    if report.failures:
        print(f"\n==> demo finished in {total:.0f}s: {len(report.failures)} expectation(s) failed:")
        for failure in report.failures:
            print(f"    - {failure}")
        return 1
    print(f"\n==> demo finished in {total:.0f}s: every expectation held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
