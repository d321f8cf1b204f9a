"""warden.service and guest-components' agents over their own sockets: the AAEL record, KBS updates;
and the alert fields KubeArmor users read, end to end through crun and the hook.

One guest, the shipped unit, tests in file order:
 1. warden becomes READY while no attestation-agent runs (READY never waits for it); `warden status`
    shows the AAEL record pending with the connection error, and the KBS poll failing;
 2. the attestation-agent stand-in (ttrpc on its real socket, eventlog enabled in aa.toml) is started
    afterwards, as in Kata where it starts after kata-agent: the background retry writes the
    `github.com/coco-warden EnforcePolicy` event for the enforced RuleSet into its event log;
 3. the CDH stand-in serves a newer signed bundle at kbs:///default/warden/bundle: it is gated and
    enforced (and recorded in the AAEL); then a lower version and a bundle signed by a key the image
    does not trust are fetched and refused, the newer one stays enforced;
 4. a crun container registered by the hook with the CRI annotations: its denied read gives an alert
    with ContainerID, ContainerName, PodName, NamespaceName and PID/PPID in its pid namespace;
 5. the unit's configfs-tsm line makes a configfs directory writable under its read-only /sys.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import textwrap
import time

import pytest

from initdata.bundle import PolicyFile
from supervisor.enforcement import shipped_objects
from tests.data.initdata.factory import make_envelope, make_initdata, public_pem, signing_key
from tests.guest.service import WARDEN, make_container, unit_text, wait_until, warden_status
from tests.guest.vm import REPO_ROOT, GuestOptions, GuestVM

V1_DIR, V2_DIR = "/var/tmp/kbs-v1", "/var/tmp/kbs-v2"
KBS_REPO = "/var/tmp/kbs-repo"  # the KBS's resource store, <repo>/<type>/<tag> (trustee LocalFs layout)
RESOURCE_FILE = f"{KBS_REPO}/default/warden/bundle"
EVENTLOG = "/run/attestation-agent/eventlog"
AA_TOML = "/etc/confidential-containers/aa.toml"
ALERTS = "/var/log/warden/alerts.json"
CONTAINER_SECRET = PolicyFile("container-secret.yaml", textwrap.dedent("""\
    apiVersion: security.kubearmor.com/v1
    kind: KubeArmorPolicy
    metadata:
      name: container-secret
    spec:
      selector:
        matchLabels:
          kubearmor.io/container.name: ".*"
      action: Block
      file:
        matchDirectories:
          - dir: /secret/
            recursive: true
    """))


def host_block(name: str, directory: str) -> PolicyFile:
    return PolicyFile(f"{name}.yaml", textwrap.dedent(f"""\
        apiVersion: security.kubearmor.com/v1
        kind: KubeArmorHostPolicy
        metadata:
          name: {name}
        spec:
          nodeSelector:
            matchLabels: {{}}
          action: Block
          file:
            matchDirectories:
              - dir: {directory}/
                recursive: true
        """))


def bundle(version: int, directory: str, key: str = "owner-ed25519") -> str:
    return make_envelope([signing_key(key)], version=version,
                         policies=[host_block(f"block-v{version}", directory), CONTAINER_SECRET],
                         bpf_objects=shipped_objects()).to_json().decode()


def standin_unit(description: str, module: str, args: str) -> str:
    return (f"[Unit]\nDescription={description} (test-bed stand-in, {module})\n[Service]\n"
            f"WorkingDirectory={REPO_ROOT}\nExecStart={REPO_ROOT}/.venv/bin/python -m {module} {args}\n")


CONFIG = json.dumps({  # JSON is YAML; the AA and CDH at their default sockets
    "gate": {"trust_dir": "/etc/warden/trust", "measurement_sources": ["sample"], "insecure_allow_sample": True},
    "initdata": "/etc/warden/initdata.toml",
    "baseline_bundle": "/usr/share/warden/baseline.bundle.json",
    "record_ruleset": True,
    "kbs_update": {"resource": "kbs:///default/warden/bundle", "interval_s": 2},
    "agent": {"logPath": ALERTS, "maxAlertPerSec": 1000},
})


@pytest.fixture(scope="module")
def guest_options() -> GuestOptions:
    return GuestOptions(files={
        "/etc/systemd/system/warden.service": unit_text(),
        "/etc/systemd/system/attestation-agent.service": standin_unit(
            "attestation-agent", "tests.guest.standins.attestation_agent", f"-c {AA_TOML}"),
        "/etc/systemd/system/confidential-data-hub.service": standin_unit(
            "confidential-data-hub", "tests.guest.standins.cdh", f"--resources {KBS_REPO}"),
        AA_TOML: "[eventlog_config]\nenable_eventlog = true\n",
        "/etc/warden/warden.yaml": CONFIG,
        "/etc/warden/initdata.toml": make_initdata(bundle(1, V1_DIR).encode()).decode(),
        "/etc/warden/trust/owner.pem": public_pem("owner-ed25519").decode(),
        "/usr/share/warden/baseline.bundle.json": bundle(1, "/var/tmp/kbs-baseline"),
        f"{V1_DIR}/secret": "v1\n",
        f"{V2_DIR}/secret": "v2\n",
    })


def readable(guest: GuestVM, path: str) -> bool:
    return guest.run(f"cat {path}").returncode == 0


def status_until(guest: GuestVM, what: str, predicate: object, timeout: float = 90) -> dict[str, object]:
    found: dict[str, object] = {}

    def check() -> bool:
        found.update(warden_status(guest, ready=True))
        return bool(predicate(found))  # type: ignore[operator]

    wait_until(what, check, timeout, guest)
    return found


def eventlog_lines(guest: GuestVM) -> list[str]:
    return guest.run(f"cat {EVENTLOG}", check=True).stdout.splitlines()


@pytest.fixture(scope="module")
def ready(guest: GuestVM) -> None:
    assert guest.run("test -S /run/confidential-containers/attestation-agent/attestation-agent.sock").returncode != 0
    result = guest.run("systemctl start warden.service", timeout=240)  # returns once READY=1 arrived
    assert result.returncode == 0, f"{result}\n{guest.run('journalctl -u warden -n 60 --no-pager').stdout}"


def test_ready_without_the_agent_and_status_says_pending(guest: GuestVM, ready: None) -> None:
    assert not readable(guest, f"{V1_DIR}/secret")
    status = status_until(guest, "a failed AAEL attempt", lambda s: s["aael"]["attempts"] >= 1)  # type: ignore[index]
    aael = status["aael"]
    assert aael["recorded"] is False, aael  # type: ignore[index]
    assert "attestation-agent.sock: connect: nothing listens" in aael["last_error"]  # type: ignore[index]
    assert aael["ruleset"] == status["enforcement"]["ruleset_digest"]  # type: ignore[index]
    assert status["enforcement"]["recorded_in_aael"] is False  # type: ignore[index]
    kbs = status_until(guest, "a KBS poll", lambda s: s["kbs_update"]["polls"] >= 1)["kbs_update"]  # type: ignore[index]
    assert "cdh.sock: connect: nothing listens" in kbs["last_poll_error"], kbs  # type: ignore[index]


def test_aael_record_once_the_agent_is_up(guest: GuestVM, ready: None) -> None:
    guest.run("systemctl start attestation-agent.service", check=True)
    status = status_until(guest, "the AAEL record", lambda s: s["aael"]["recorded"] is True)  # type: ignore[index]
    ruleset = status["enforcement"]["ruleset_digest"]  # type: ignore[index]
    assert status["enforcement"]["recorded_in_aael"] is True  # type: ignore[index]
    lines = eventlog_lines(guest)
    assert lines[0] == "INIT sha256/" + "0" * 64
    assert lines[1:] == [f'github.com/coco-warden EnforcePolicy {{"bundle_version":1,"ruleset":"{ruleset}"}}']
    print(f"AAEL recorded {status['aael']['recorded_after_s']}s after READY's record request, "  # type: ignore[index]
          f"{status['aael']['attempts']} attempts")  # type: ignore[index]


def _serve(guest: GuestVM, envelope: str) -> str:
    guest.run(f"mkdir -p $(dirname {RESOURCE_FILE}) && cat > {RESOURCE_FILE}.tmp < "
              f"{guest.write_shared(f'kbs-{time.monotonic_ns()}.json', envelope)} && mv {RESOURCE_FILE}.tmp "
              f"{RESOURCE_FILE}", check=True)
    return "sha256:" + hashlib.sha256(envelope.encode()).hexdigest()


def test_kbs_update_newer_enforced_lower_and_foreign_refused(guest: GuestVM, ready: None) -> None:
    guest.run("systemctl start confidential-data-hub.service", check=True)
    assert readable(guest, f"{V2_DIR}/secret")
    _serve(guest, bundle(2, V2_DIR))
    status = status_until(guest, "bundle v2 from the KBS", lambda s: s["gate"]["bundle_version"] == 2)  # type: ignore[index]
    assert not readable(guest, f"{V2_DIR}/secret")
    assert readable(guest, f"{V1_DIR}/secret")  # v2 replaced v1's policy
    assert status["last_reload"]["via"] == "kbs kbs:///default/warden/bundle via " \
        "unix:///run/confidential-containers/cdh.sock"  # type: ignore[index]
    ruleset = status["enforcement"]["ruleset_digest"]  # type: ignore[index]
    status_until(guest, "the v2 AAEL record", lambda s: s["aael"]["recorded"] is True  # type: ignore[index]
                 and s["aael"]["ruleset"] == ruleset)  # type: ignore[index]
    assert eventlog_lines(guest)[-1] == (f'github.com/coco-warden EnforcePolicy '
                                         f'{{"bundle_version":2,"ruleset":"{ruleset}"}}')

    for envelope, problem in ((bundle(1, V1_DIR), "version"), (bundle(3, V1_DIR, key="owner-p384"), "signature")):
        digest = _serve(guest, envelope)
        status = status_until(guest, f"the refusal ({problem})",
                              lambda s, d=digest: (s["kbs_update"]["last_result"] or {}).get("digest") == d)  # type: ignore[index]
        result = status["kbs_update"]["last_result"]  # type: ignore[index]
        assert result["ok"] is False and problem in result["error"].lower(), result  # type: ignore[index]
        assert status["gate"]["bundle_version"] == 2  # type: ignore[index]
        assert not readable(guest, f"{V2_DIR}/secret") and readable(guest, f"{V1_DIR}/secret")
    text = guest.run(f"{WARDEN} status").stdout
    assert "aael:         recorded sha256:" in text, text
    print("\n".join(line for line in text.splitlines() if line.startswith(("aael:", "kbs update:"))))


def test_alerts_carry_the_containers_identity_and_namespace_pids(guest: GuestVM, ready: None) -> None:
    directory = make_container(guest, "mysql", ["sh", "-c", "cat /secret/data; echo rc=$?"],
                               files={"/secret/data": "container-secret\n"})
    guest.python(textwrap.dedent(f"""
        import json
        path = "{directory}/config.json"
        config = json.load(open(path))
        config["annotations"].update({{"io.kubernetes.cri.sandbox-name": "mysql-7d9f",
                                      "io.kubernetes.cri.sandbox-namespace": "payments"}})
        json.dump(config, open(path, "w"))
    """), check=True)
    result = guest.run(f"crun run -b {directory} ctr-0123abcd", timeout=120)
    assert result.returncode == 0 and "rc=1" in result.stdout and "container-secret" not in result.stdout, result
    alerts: list[dict[str, object]] = []

    def found() -> bool:
        lines = guest.run(f"cat {ALERTS}").stdout.splitlines()
        alerts[:] = [a for a in map(json.loads, lines) if a.get("PolicyName") == "container-secret"]
        return bool(alerts)

    wait_until("the container's alert", found, 60, guest)
    a = alerts[-1]
    assert (a["ContainerID"], a["ContainerName"], a["PodName"], a["NamespaceName"]) == (
        "ctr-0123abcd", "mysql", "mysql-7d9f", "payments"), a
    assert (a["Resource"], a["Action"], a["Type"]) == ("/secret/data", "Block", "MatchedPolicy"), a
    # sh is PID 1 of the container's pid namespace and cat its child (or sh itself, exec'd); crun, the
    # parent of PID 1, lives outside the namespace and reads as 0 there. HostPID/HostPPID: the VM's.
    assert a["PID"] in (1, 2) and a["PPID"] in (0, 1) and a["HostPID"] > 2 and a["HostPPID"] > 0, a  # type: ignore[operator]
    print({k: a[k] for k in ("ContainerID", "ContainerName", "PodName", "NamespaceName", "PID", "PPID", "HostPID",
                             "HostPPID")})


def test_configfs_report_directory_is_writable_under_the_units_sandbox(guest: GuestVM) -> None:
    """The unit's sandbox lines, with the tsm report directory swapped for another configfs directory
    (this 6.1 kernel has no configfs-tsm; usb_gadget entries are made by mkdir just like tsm reports)."""
    lines = [line for line in unit_text().splitlines()
             if line.startswith(("ProtectSystem=", "ReadOnlyPaths=", "ReadWritePaths="))]
    assert "ReadWritePaths=-/sys/kernel/config/tsm/report" in lines
    gadget = "/sys/kernel/config/usb_gadget"
    guest.run("modprobe libcomposite && (mountpoint -q /sys/kernel/config || "
              "mount -t configfs none /sys/kernel/config)", check=True)
    properties = " ".join(f"-p {shlex.quote(line.replace('/sys/kernel/config/tsm/report', gadget))}" for line in lines)
    sandboxed = guest.run(f"systemd-run -q --wait --pipe {properties} mkdir {gadget}/warden-g1")
    assert sandboxed.returncode == 0, sandboxed
    assert guest.run(f"test -d {gadget}/warden-g1/strings").returncode == 0  # configfs made the entry
    without = " ".join(f"-p {shlex.quote(line)}" for line in lines if "/sys/kernel/config" not in line)
    refused = guest.run(f"systemd-run -q --wait --pipe {without} mkdir {gadget}/warden-g2")
    assert refused.returncode != 0 and "Read-only file system" in refused.stdout + refused.stderr, refused
    guest.run(f"rmdir {gadget}/warden-g1", check=True)
