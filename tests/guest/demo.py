"""`make demo`: the whole story of coco-warden in a peer-pod VM, one progress line per step.

The VM is the test bed's peer-pod profile (tests/guest/profiles.py `peerpod`): the shipped units
unchanged, process-user-data writing /run/peerpod/initdata and extending PCR8 of a swtpm vTPM,
kata-agent (stand-in: crun and kata-agent's guest-hook semantics) gated on warden.service. One boot.

1. The pod owner signs the seed's three policies, builds the CoCo initdata, and gets the Kata
   annotation and the reference values a Trustee operator registers (TDX, SNP, vTPM).
2. The pod VM boots; process-user-data provisions the initdata and extends PCR8; warden.service gates
   (measurement source: the vTPM, labelled INSECURE: no TEE vouches for swtpm) and enforces;
   kata-agent starts only after warden's READY.
3. Containers started by kata-agent: raw socket, /bin write and the MySQL data are blocked, also in
   a container whose guest hook failed (kata-agent ignores hook failures; warden does not need it);
   the alert JSON the agent wrote is shown.
4. Root in the VM cannot kill the supervisor or the agent; systemd (PID 1) can, and enforcement holds
   through the gap while systemd brings them back; the restarted supervisor adopts the pinned links;
   kata-agent keeps running.
5. Root swaps the initdata for a tampered one (an attacker's bundle) and restarts warden and
   kata-agent: the gate refuses it, and kata-agent waits for a READY that never comes (through
   warden's exit and restart), so no workload can start.

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
from initdata.encoding import encode_annotation
from supervisor.enforcement import shipped_objects
from tests.guest import pod
from tests.guest.profiles import ALERTS, KATA_AGENT_CLIENT, PodImage, peerpod
from tests.guest.service import (
    host_warden,
    is_ready,
    lsm_link_ids,
    make_container,
    show,
    wait_until,
    warden_status,
)
from tests.guest.vm import REPO_ROOT, GuestError, GuestVM

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
    initdata: str  # the pod's: the seed's three policies
    tampered_initdata: str  # an attacker's: a permissive bundle signed by a key the image does not trust
    baseline: str


# The pod the bundle is for, as its owner signs it (issue 15 item 1): which rules a container gets
# follows from these labels and container names, never from annotations the host writes.
RESTRICTED_POD: dict[str, object] = {"namespace": "default", "labels": {"app": "mysql"}, "containers": ["mysql"]}


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

    tampered = work / "tampered.toml"
    permissive = sign(work, "tampered", work / "attacker.key", mysql_only, version=99)
    tampered.write_text(host_warden("initdata", "build", "--bundle", str(permissive), "--algorithm", "sha256"))
    baseline = sign(work, "baseline", work / "owner.key", [p for p in seed if p.stem != "block-mysql-data-access"])
    report.expect("owner key, bundle, initdata and reference values made with the warden CLI", True)
    return Artifacts((work / "owner.pem").read_text(), initdata.read_text(), tampered.read_text(),
                     baseline.read_text())


@contextmanager
def booted(work: Path, name: str, artifacts: Artifacts, initdata: str, report: Report) -> Iterator[GuestVM]:
    image = PodImage(owner_pem=artifacts.owner_pem, baseline=artifacts.baseline, initdata=initdata.encode())
    vm = GuestVM(peerpod(image), work / name)
    report.progress(f"booting the {name} peer-pod VM (QEMU, swtpm vTPM, systemd as PID 1, multi-user.target)")
    try:
        vm.start()
        report.progress(f"guest up after {vm.boot_seconds:.1f}s ({vm.accel}); waiting for warden.service READY")
        yield vm
    except (GuestError, AssertionError):
        # What warden said, for whoever reads the failure (the serial tail comes with the error).
        for command in ("journalctl -u warden.service -n 15 --no-pager -o cat",
                        "journalctl -u kata-agent.service -n 10 --no-pager -o cat", f"tail -n 5 {ALERTS}"):
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


def kata_agent_after_ready(vm: GuestVM, report: Report) -> None:
    digest = vm.run("cat /run/peerpod/initdata.digest", check=True).stdout.strip()
    report.show(f"process-user-data: /run/peerpod/initdata, digest {digest[:16]}..., PCR8 extended (tpm2_pcrextend)")
    try:
        times = pod.check_kata_agent_after_ready(vm)
    except AssertionError as exc:
        report.expect(f"kata-agent started after warden's READY ({exc})", False)
        return
    gap = (times["kata_agent_start_us"] - times["warden_ready_us"]) / 1e6
    report.expect(f"kata-agent started {gap:.2f}s after warden's READY (its drop-in waits for warden.service)",
                  gap >= 0)


def restricted_pod(vm: GuestVM, report: Report) -> None:
    wait_ready(vm, report)
    pcr8 = vm.run("cat /sys/class/tpm/tpm0/pcr-sha256/8", check=True).stdout.strip().lower()
    report.show(f"vTPM PCR8 = {pcr8}")
    report.expect("READY=1 only after the gate accepted and the policy was enforced (measured by vtpm)",
                  "measured by vtpm" in show(vm, "StatusText")["StatusText"])
    report.expect("the status says INSECURE plainly: swtpm is a TPM no TEE vouches for (opted in)",
                  "INSECURE(vtpm)" in show(vm, "StatusText")["StatusText"])
    kata_agent_after_ready(vm, report)

    report.step(3, "Containers started by kata-agent (crun; guest hooks register them)")
    mysql, _ = pod.run_in_pod(vm, "mysql", labels={"app": "mysql"})
    web, _ = pod.run_in_pod(vm, "web")
    rogue, rogue_hooks = pod.run_in_pod(vm, "rogue", annotations=pod.ROGUE_ANNOTATIONS)
    report.table(("action", "mysql (app=mysql)", "web", "rogue (hook failed)"),
                 [(action, mysql[action], web.get(action, "?"), rogue.get(action, "?")) for action in mysql])
    report.expect("raw socket blocked in all three (net-raw-block)",
                  all(blocked(c["raw socket"]) for c in (mysql, web, rogue)))
    report.expect("write to /bin blocked in all three (file-integrity-monitoring)",
                  all(blocked(c["write /bin/evil"]) for c in (mysql, web, rogue)))
    report.expect(f"rogue's guest hook failed ({rogue_hooks['prestart']}) and kata-agent started it anyway; "
                  "warden confined it as an unregistered container", rogue_hooks["prestart"] != "ok")
    report.expect("/var/lib/mysql denied to mysql, to web (not in the signed pod: the union of the pod's rules) and "
                  "to rogue (unregistered: every container policy): the host cannot pick rules by naming, "
                  "labelling or breaking the hook",
                  all(blocked(c["cat /var/lib/mysql/any-file"]) for c in (mysql, web, rogue)))
    time.sleep(1)  # the agent polls the ring buffer every 250 ms
    alerts = [json.loads(line) for line in vm.run(f"cat {ALERTS}", check=True).stdout.splitlines()]
    matched = [a for a in alerts if a.get("Type") == "MatchedPolicy"]
    mysql_data = [a for a in matched if a["PolicyName"] == "block-mysql-data-access"]
    # The mysql container's own alert where there is one (registered by its hook), else the first.
    sample = next((a for a in mysql_data if a.get("ContainerName") == "mysql"), mysql_data[0] if mysql_data else None)
    if sample is not None:
        report.show("alert (agent, " + ALERTS + "):")
        report.show(json.dumps({k: sample.get(k) for k in ("UpdatedTime", "ContainerName", "Labels", "PID",
                                                            "HostPID", "ProcessName", "PolicyName", "Type",
                                                            "Operation", "Resource", "Action", "Result",
                                                            "Enforcer")}, indent=2))
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
    status = warden_status(vm, ready=True)
    enforcement = status["enforcement"]
    report.show(f"warden status: bundle v{enforcement['bundle_version']}, ruleset {enforcement['ruleset_digest']} "
                f"({enforcement['origin']}{', adopted pins' if enforcement['adopted'] else ''})")
    vm.run("sleep 1; crun kill probe-1 KILL; sleep 0.5; crun delete -f probe-1")
    log = vm.run(f"cat {probe}/rootfs/probe.log", check=True).stdout.split()
    report.show(f"back to READY after {back:.1f}s; probe in a container: {log.count('DENIED')} writes to /bin "
                f"denied, {log.count('OK')} succeeded")
    report.expect("systemd restarted the supervisor and it is READY again", is_ready(vm))
    report.expect("no probe write succeeded while the supervisor was down", log.count("OK") == 0 and len(log) > 5)
    report.expect("the restarted supervisor adopted the pinned links (the same LSM links, never detached)",
                  lsm_link_ids(vm) == links and enforcement["adopted"] is True)
    report.expect("kata-agent kept running through warden's restart",
                  pod.props(vm, "kata-agent.service", "ActiveState")["ActiveState"] == "active")
    self_alerts = [json.loads(line) for line in vm.run(f"cat {ALERTS}", check=True).stdout.splitlines()
                   if "warden-self-protection" in line]
    report.expect(f"the kill attempts were alerted ({len(self_alerts)} self-protection alerts)",
                  any(a["Operation"] == "signal" for a in self_alerts))


def tampered_initdata(vm: GuestVM, report: Report, tampered: str) -> None:
    agent_started = pod.props(vm, "kata-agent.service", "ExecMainStartTimestampMonotonic")
    report.progress("root swaps /run/peerpod/initdata (and its digest) for an attacker's (a permissive bundle, "
                    "v99, signed by the attacker's key), restarts warden and kata-agent")
    vm.run("systemctl stop kata-agent.service warden.service", check=True)
    tampered_bytes = tampered.encode()
    vm.run(f"cat > /run/peerpod/initdata < {vm.write_shared('tampered.b64', encode_annotation(tampered_bytes))}",
           check=True)
    digest = host_warden("initdata", "digest", str(vm.host_path(vm.write_shared("tampered.toml", tampered)))).strip()
    vm.run(f"printf %s {digest} > /run/peerpod/initdata.digest", check=True)
    restarts = int(show(vm, "NRestarts")["NRestarts"])
    vm.run("systemctl start --no-block kata-agent.service", check=True)  # pulls warden.service in (Wants=)
    wait_until("the refusal", lambda: "gate refused" in show(vm, "StatusText")["StatusText"], 120, vm)
    report.show(f"STATUS={show(vm, 'StatusText')['StatusText']}")
    report.expect("the gate refused the tampered initdata (PCR8 holds the provisioned one) and READY never came",
                  "PCR8: measured" in show(vm, "StatusText")["StatusText"] and not is_ready(vm))
    wait_until("warden's exit and restart after the refusal",
               lambda: int(show(vm, "NRestarts")["NRestarts"]) > restarts, 120, vm)
    report.show(f"warden exited after gate_failure_exit_s and systemd restarted it (NRestarts "
                f"{show(vm, 'NRestarts')['NRestarts']}); its gate refuses again")
    agent = pod.props(vm, "kata-agent.service", "ActiveState", "SubState", "MainPID", "ExecMainStartTimestampMonotonic")
    directory = make_container(vm, "late", ["sh", "-c", "echo started > /started"], oci_hooks=False)
    result = vm.run(f"{KATA_AGENT_CLIENT} --id late-1 --bundle {directory}")
    started = vm.run(f"test -e {directory}/rootfs/started").returncode == 0
    main_started = agent["ExecMainStartTimestampMonotonic"]
    before = agent_started["ExecMainStartTimestampMonotonic"]
    report.show(f"kata-agent.service {agent['ActiveState']}/{agent['SubState']} (its ExecStartPre= waits for "
                f"warden's READY): main process {agent['MainPID']}, started at {main_started} us (before the "
                f"restart: {before} us)")
    report.show(f"asking kata-agent to run container late-1 -> {result.stderr.strip()}")
    # The new start job reset the main process's record (systemd keeps it of the last run until a start):
    # 0 = no main process since the restart.
    report.expect("kata-agent's main process did not start again, and the workload never started",
                  agent["ActiveState"] != "active" and agent["MainPID"] == "0"
                  and agent["ExecMainStartTimestampMonotonic"] == "0" and result.returncode != 0 and not started)


def main() -> int:
    report = Report()
    print("coco-warden demo: attestation-gated BPF-LSM enforcement in a confidential guest VM")
    with tempfile.TemporaryDirectory(prefix="warden-demo-") as tmp:
        work = Path(tmp)
        try:
            report.step(1, "Pod owner: signing key, signed bundle of the seed's policies, initdata")
            artifacts = owner_side(work, report)
            report.step(2, "The pod's VM: a peer-pod VM with the shipped units")
            with booted(work, "pod", artifacts, artifacts.initdata, report) as vm:
                restricted_pod(vm, report)
                report.step(5, "Tampered initdata: the gate refuses, kata-agent stays down")
                tampered_initdata(vm, report, artifacts.tampered_initdata)
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
