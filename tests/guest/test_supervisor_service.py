"""warden.service under the guest's real systemd 252, kernel 6.1 (BPF LSM) and swtpm vTPM; crun for OCI.

One guest for the whole module (a boot costs 15-100 s under TCG); the tests run in file order and
build on each other, like the life of a pod VM:

 1. a bad configuration key: one clear line, no start;
 2. PCR8 not extended yet, so the gate refuses: the baseline bundle is enforced, READY never comes,
    STATUS says why, the process exits 1 after gate_failure_exit_s and systemd restarts it;
 2b. inputs that used to crash the gate (issue 15 item 2: a 5000-digit integer, a far expiry with an
    offset, a deeply nested rollback state) under the real unit: a one-line refusal, no traceback,
    the baseline stays enforced;
 3. PCR8 extended with the initdata digest: READY only after enforcement, StatusText = status line;
 4. kill -9 five times under a probe loop: zero probe successes, restarts adopt the same links;
 5. SIGSTOP: the watchdog fires, systemd restarts the supervisor, enforcement holds;
 6. the agent killed in a loop: backoff grows, `degraded` reported, events produced meanwhile arrive;
 7. garbage on the control socket, `warden status`;
 8. reload: an untrusted bundle is refused (nothing changes), a newer signed one is applied;
 9. crun + the hook: the container policy holds inside a busybox container, also after chroot (issue 14);
    a malformed state is refused;
9b. issue 15 items 1 and 10: a container the host renames and relabels still gets the signed pod's
    mysql rules; a second register cannot relabel it; a host process cannot be registered; only uid 0
    reaches the control socket; /run/warden is not writable by VM root;
10. supervisor stopped: enforcement stays, and crun cannot create a container (the hook fails closed).
"""

from __future__ import annotations

import json
import re
import textwrap
import time
from types import MappingProxyType

import pytest

from initdata.bundle import PodIdentity, PolicyFile, build_payload
from initdata.document import parse_initdata
from initdata.dsse import BUNDLE_PAYLOAD_TYPE, sign_envelope
from supervisor.enforcement import shipped_objects
from tests.data.initdata.factory import FIXTURE_EXPIRES, make_initdata, public_pem, signing_key
from tests.guest.service import (
    WARDEN,
    is_ready,
    lsm_link_ids,
    make_container,
    show,
    unit_text,
    wait_until,
    warden_status,
)
from tests.guest.vm import REPO_ROOT, GuestOptions, GuestVM

PROBE_DIR = "/var/tmp/warden-probe"
BASELINE_DIR = "/var/tmp/warden-baseline"
V2_DIR = "/var/tmp/warden-v2"
OTHER_NODE_DIR = "/var/tmp/warden-other-node"  # blocked by a host policy for another node: never enforced here
NODE_LABELS = {"kubernetes.io/hostname": "pod-vm"}  # the configuration's node_labels
ALERTS = "/var/log/warden/alerts.json"  # LogsDirectory=warden: writable under ProtectSystem=strict
MARKER = f"{PROBE_DIR}/marker-while-agent-down"
UPDATE = "/var/tmp/warden-update.bundle.json"  # signed, so it needs no protection (and gets none)
# The agent cannot be killed from outside warden's cgroup (self-protection), so to make it crash the
# test asks a wrapper inside the cgroup to SIGKILL the real `warden agent` when this file's content
# changes (the service cannot write /var/tmp: each instance remembers the content it started with).
CRASH = "/var/tmp/warden-crash-agent"
AGENT_WRAPPER = [
    "/bin/sh", "-c",
    f"start=$(cat {CRASH} 2>/dev/null); {REPO_ROOT}/.venv/bin/warden agent --config /etc/warden/warden.yaml & "
    f"a=$!; while kill -0 $a 2>/dev/null; do if [ \"$(cat {CRASH} 2>/dev/null)\" != \"$start\" ]; then "
    "kill -9 $a; exit 137; fi; sleep 0.1; done; wait $a",
]


def host_block(name: str, directory: str, node: str | None = None) -> PolicyFile:
    labels = "{}" if node is None else json.dumps({"kubernetes.io/hostname": node})
    text = textwrap.dedent(f"""\
        apiVersion: security.kubearmor.com/v1
        kind: KubeArmorHostPolicy
        metadata:
          name: {name}
        spec:
          nodeSelector:
            matchLabels: {labels}
          severity: 7
          message: "guest test: {name}"
          action: Block
          file:
            matchDirectories:
              - dir: {directory}/
                recursive: true
        """)
    return PolicyFile(f"{name}.yaml", text)


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


MYSQL_BLOCK = PolicyFile("block-mysql-data-access.yaml",
                         (REPO_ROOT / "tests/data/policies/seed/block-mysql-data-access.yaml").read_text())
# The pod this VM runs, as its owner signed it (issue 15 item 1): labels come from here, never annotations.
POD = PodIdentity(namespace="default", labels=MappingProxyType({"app": "mysql"}), containers=("mysql",))


def bundle(version: int, policies: list[PolicyFile], key: str = "owner-ed25519", pod: PodIdentity | None = None) -> str:
    payload = build_payload(version=version, expires=FIXTURE_EXPIRES, policies=policies,
                            bpf_objects=shipped_objects(), pod=pod)
    return sign_envelope(payload, BUNDLE_PAYLOAD_TYPE, [signing_key(key)]).to_json().decode()


# Accepted, but its syscalls section is not monitored: named in the log and in `warden status`.
SYSCALLS_AUDIT = PolicyFile("syscalls-audit.yaml", textwrap.dedent("""\
    apiVersion: security.kubearmor.com/v1
    kind: KubeArmorPolicy
    metadata:
      name: syscalls-audit
    spec:
      selector:
        matchLabels:
          kubearmor.io/container.name: ".*"
      syscalls:
        matchSyscalls:
          - syscall: [unlink]
    """))

V1 = [host_block("probe-block", PROBE_DIR), CONTAINER_SECRET, MYSQL_BLOCK]
V2 = [*V1, host_block("v2-block", V2_DIR), host_block("other-node-block", OTHER_NODE_DIR, node="other-vm"),
      SYSCALLS_AUDIT]
INITDATA = make_initdata(bundle(1, V1, pod=POD).encode()).decode()
INITDATA_DIGEST = parse_initdata(INITDATA.encode(), origin="test").digest_hex


def config_yaml(**agent: object) -> str:
    agent_settings = {"backoff_initial_s": 0.5, "backoff_max_s": 4, "backoff_jitter_s": 0.1, "crash_budget": 3,
                      "crash_window_s": 120, "stable_after_s": 600, "logPath": ALERTS, "maxAlertPerSec": 1000, **agent}
    return json.dumps({  # JSON is YAML
        # swtpm is a TPM no TEE vouches for: INSECURE, and only because the test bed opts in.
        "gate": {"trust_dir": "/etc/warden/trust", "measurement_sources": ["vtpm"], "insecure_sources": ["vtpm"]},
        "initdata": "/etc/warden/initdata.toml",
        "baseline_bundle": "/usr/share/warden/baseline.bundle.json",
        "update_bundle": UPDATE,
        "gate_failure_exit_s": 8,
        "record_ruleset": False,
        "node_labels": NODE_LABELS,
        "agent": agent_settings,
    }, indent=2)


@pytest.fixture(scope="module")
def guest_options() -> GuestOptions:
    return GuestOptions(tpm=True, files={
        "/etc/systemd/system/warden.service": unit_text(),
        "/etc/warden/warden.yaml": config_yaml(command=AGENT_WRAPPER),
        "/etc/warden/initdata.toml": INITDATA,
        "/etc/warden/trust/owner.pem": public_pem("owner-ed25519").decode(),
        "/usr/share/warden/baseline.bundle.json": bundle(1, [host_block("baseline-block", BASELINE_DIR)]),
        f"{PROBE_DIR}/secret": "probe secret\n",
        MARKER: "read while the agent is down\n",
        f"{BASELINE_DIR}/secret": "baseline secret\n",
        f"{V2_DIR}/secret": "v2 secret\n",
        f"{OTHER_NODE_DIR}/secret": "other node's secret\n",
    })


# -- helpers ------------------------------------------------------------------------------------


def readable(guest: GuestVM, path: str) -> bool:
    return guest.run(f"cat {path}").returncode == 0


def start_probe(guest: GuestVM, path: str, log: str) -> None:
    guest.run(
        f"setsid nohup sh -c 'while :; do if cat {path} >/dev/null 2>&1; then echo OK; else echo DENIED; fi; "
        f"sleep 0.1; done' > {log} 2>&1 < /dev/null & echo $! > {log}.pid",
        check=True,
    )


def stop_probe(guest: GuestVM, log: str) -> tuple[int, int]:
    guest.run(f"kill $(cat {log}.pid)")
    text = guest.run(f"cat {log}", check=True).stdout
    return text.count("OK"), text.count("DENIED")


# -- 1. configuration ---------------------------------------------------------------------------


def test_bad_config_key_gives_one_clear_line_and_no_start(guest: GuestVM) -> None:
    guest.run("mkdir -p /var/tmp/bad && printf 'agent:\\n  maxAlertPerSecond: 5\\n' > /var/tmp/bad/warden.yaml",
              check=True)
    result = guest.run(f"{WARDEN} run --check-config --config /var/tmp/bad/warden.yaml")
    assert result.returncode == 1
    assert result.stderr == ("warden: /var/tmp/bad/warden.yaml: agent.maxAlertPerSecond: unknown key (known: "
                             "alertThrottling, backoff_initial_s, backoff_jitter_s, backoff_max_s, command, "
                             "crash_budget, crash_window_s, enabled, logPath, maxAlertPerSec, stable_after_s, "
                             "stop_timeout_s, throttleSec)\n")
    ok = guest.run(f"{WARDEN} run --check-config --config /etc/warden/warden.yaml")
    assert ok.returncode == 0, ok


# -- 2. the gate refuses: baseline, never READY, exit 1 -------------------------------------------


def test_refused_gate_enforces_the_baseline_and_never_sends_ready(guest: GuestVM) -> None:
    assert readable(guest, f"{BASELINE_DIR}/secret")
    guest.run("systemctl start --no-block warden.service", check=True)
    wait_until("the baseline STATUS", lambda: "enforcing baseline" in show(guest, "StatusText")["StatusText"],
               240, guest)
    text = show(guest, "StatusText")["StatusText"]
    assert text.startswith("NOT READY: gate refused: /sys/class/tpm/tpm0/pcr-sha256/8: PCR8: measured 0000")
    assert "enforcing baseline bundle v1" in text
    assert show(guest, "ActiveState")["ActiveState"] == "activating"  # READY=1 was never sent
    assert not readable(guest, f"{BASELINE_DIR}/secret")
    assert readable(guest, f"{PROBE_DIR}/secret")
    # exit 1 after gate_failure_exit_s (8 s), then Restart=always; the baseline stays enforced meanwhile
    wait_until("a restart after exit 1", lambda: int(show(guest, "NRestarts")["NRestarts"]) >= 1, 120, guest)
    # PID 1 logs to the serial console in the test bed (not to the journal)
    assert "warden.service: Main process exited, code=exited, status=1/FAILURE" in guest.serial_log.read_text()
    assert not readable(guest, f"{BASELINE_DIR}/secret")
    guest.run("systemctl stop warden.service; systemctl reset-failed warden.service || true", check=True)
    assert not readable(guest, f"{BASELINE_DIR}/secret"), "stopping must not remove enforcement"


# -- 2b. inputs that used to crash the gate -------------------------------------------------------

CRASH_DIR = "/var/tmp/warden-crash"
# A runtime drop-in (/run/systemd, not protected) points the real unit at a configuration whose
# measurement source is `sample` (so the gate reaches the bundle and state parsers) and whose
# initdata and rollback state are the hostile inputs.
CRASH_DROPIN = "/run/systemd/system/warden.service.d/crash.conf"


def crash_envelope_big_int() -> str:
    return '{"payload": "e30=", "payloadType": "x", "signatures": [{"keyid": "", "sig": "AA=="}], "n": ' \
        + "9" * 5000 + "}"


def crash_envelope_far_expiry() -> str:
    document = json.loads(build_payload(version=1, expires=FIXTURE_EXPIRES, policies=V1).decode())
    document["expires"] = "9999-12-31T23:59:59-01:00"  # past datetime.max once in UTC: was OverflowError
    payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return sign_envelope(payload, BUNDLE_PAYLOAD_TYPE, [signing_key("owner-ed25519")]).to_json().decode()


CRASH_CASES = {
    # name: (initdata bundle value, rollback state file or None, what the one-line refusal names)
    "int-5000-digits": (crash_envelope_big_int(), None, "envelope: not accepted: an integer of 5000 characters"),
    "far-expiry": (crash_envelope_far_expiry(), None, "payload.expires: '9999-12-31T23:59:59-01:00'"),
    "deep-state": (bundle(1, V1), "[" * 2000 + "]" * 2000, "file: not accepted: nested deeper than 32 levels"),
}


def test_crashing_inputs_end_in_a_one_line_refusal_with_the_baseline_kept(guest: GuestVM) -> None:
    """Issue 15 item 2 under the real unit: each used to kill the gate thread with ValueError,
    OverflowError or RecursionError (no baseline, a traceback); now each is a GateError."""
    assert not readable(guest, f"{BASELINE_DIR}/secret")  # test 2 left the baseline pinned
    for name, (envelope, state, expected) in CRASH_CASES.items():
        directory = f"{CRASH_DIR}/{name}"
        config = json.loads(config_yaml())
        config["gate"] = {"trust_dir": "/etc/warden/trust", "measurement_sources": ["sample"],
                          "insecure_allow_sample": True, "state_dir": f"{directory}/state"}
        config["initdata"] = f"{directory}/initdata.toml"  # read-only for the unit: only read
        config["agent"] = {"enabled": False}
        guest.run(f"mkdir -p {directory}/state", check=True)
        files = {"warden.yaml": json.dumps(config), "initdata.toml": make_initdata(envelope.encode()).decode()}
        if state is not None:
            files["state/bundle-state.json"] = state
        for file_name, content in files.items():
            shared = guest.write_shared(f"crash-{name}-{file_name.replace('/', '-')}", content)
            guest.run(f"cat > {directory}/{file_name} < {shared}", check=True)
        guest.run(f"mkdir -p $(dirname {CRASH_DROPIN}) && printf '[Service]\\nExecStart=\\nExecStart={WARDEN} run "
                  f"--config {directory}/warden.yaml\\n' > {CRASH_DROPIN} && systemctl daemon-reload", check=True)
        since = guest.run("date +%s.%N", check=True).stdout.strip()
        guest.run("systemctl start --no-block warden.service", check=True)
        # Each case's refusal names its own input, so a STATUS left from the previous case cannot pass.
        wait_until(f"the refusal of {name}",
                   lambda expected=expected: expected in show(guest, "StatusText")["StatusText"], 180, guest)
        text = show(guest, "StatusText")["StatusText"]
        assert expected in text, text
        assert "keeping the enforcement already pinned" in text, text
        assert not readable(guest, f"{BASELINE_DIR}/secret")  # the baseline holds throughout
        journal = guest.run(f"journalctl -u warden.service --since @{since} --no-pager -o cat", check=True).stdout
        assert "Traceback" not in journal and "internal error" not in journal, journal
        guest.run("systemctl stop warden.service; systemctl reset-failed warden.service || true", check=True)
    guest.run(f"rm -f {CRASH_DROPIN} && systemctl daemon-reload", check=True)
    assert not readable(guest, f"{BASELINE_DIR}/secret")


# -- 3. READY after enforcement ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ready(guest: GuestVM) -> dict[str, float]:
    guest.run(f"tpm2_pcrextend 8:sha256={INITDATA_DIGEST}", check=True)
    started = time.monotonic()
    result = guest.run("systemctl start warden.service", timeout=240)  # returns once READY=1 arrived
    elapsed = time.monotonic() - started
    assert result.returncode == 0, f"{result}\n{guest.run('journalctl -u warden -n 80 --no-pager').stdout}"
    return {"start_s": elapsed}


def test_ready_only_after_enforcement_with_the_status_line(guest: GuestVM, ready: dict[str, float]) -> None:
    props = show(guest, "ActiveState", "StatusText", "Type", "NotifyAccess", "WatchdogUSec")
    assert props["ActiveState"] == "active"
    assert (props["Type"], props["NotifyAccess"], props["WatchdogUSec"]) == ("notify", "main", "10s")
    assert re.match(r"enforcing bundle v1 \(sha256:[0-9a-f]{12}\), ruleset sha256:[0-9a-f]{12}, measured by vtpm",
                    props["StatusText"]), props["StatusText"]
    # READY=1 means enforced: the very first probe after `systemctl start` returned is denied.
    assert not readable(guest, f"{PROBE_DIR}/secret")
    status = warden_status(guest)
    assert status["phase"] == "ready"
    assert status["gate"]["result"] == "accepted"  # type: ignore[index]
    assert status["gate"]["measurement_source"] == "vtpm"  # type: ignore[index]
    print(f"systemctl start -> READY: {ready['start_s']:.1f}s; supervisor ready_after_s={status['ready_after_s']}")


# -- 4. kill -9 five times ----------------------------------------------------------------------


def test_kill_9_five_times_enforcement_holds_and_links_are_adopted(guest: GuestVM, ready: dict[str, float]) -> None:
    links_before = lsm_link_ids(guest)
    assert links_before
    probe_log = "/var/tmp/probe-kill9.log"
    start_probe(guest, f"{PROBE_DIR}/secret", probe_log)
    restart_times = []
    try:
        for _ in range(5):
            old_pid = show(guest, "MainPID")["MainPID"]
            guest.run("systemctl kill --kill-who=main --signal=SIGKILL warden.service", check=True)
            restart_times.append(wait_until(
                "READY again after kill -9",
                lambda old=old_pid: show(guest, "MainPID")["MainPID"] not in ("0", old) and is_ready(guest),
                120, guest))
            assert lsm_link_ids(guest) == links_before
    finally:
        successes, denials = stop_probe(guest, probe_log)
    assert successes == 0
    assert denials > 10
    assert int(show(guest, "NRestarts")["NRestarts"]) >= 5
    status = warden_status(guest)
    assert status["enforcement"]["adopted"] is True  # type: ignore[index]
    print(f"kill -9 -> READY again: {', '.join(f'{t:.1f}s' for t in restart_times)}; probe denials {denials}")


# -- 5. SIGSTOP: the watchdog ---------------------------------------------------------------------


def test_sigstop_fires_the_watchdog_and_systemd_restarts(guest: GuestVM, ready: dict[str, float]) -> None:
    guest.run("systemctl reset-failed warden.service")
    links_before = lsm_link_ids(guest)
    old_pid = show(guest, "MainPID")["MainPID"]
    probe_log = "/var/tmp/probe-stop.log"
    start_probe(guest, f"{PROBE_DIR}/secret", probe_log)
    try:
        guest.run("systemctl kill --kill-who=main --signal=SIGSTOP warden.service", check=True)
        elapsed = wait_until(
            "a watchdog restart",
            lambda: show(guest, "MainPID")["MainPID"] not in ("0", old_pid) and is_ready(guest), 180, guest)
    finally:
        successes, denials = stop_probe(guest, probe_log)
    assert "warden.service: Watchdog timeout" in guest.serial_log.read_text()  # PID 1 logs to the console
    assert successes == 0 and denials > 10
    assert lsm_link_ids(guest) == links_before
    print(f"SIGSTOP -> watchdog restart READY after {elapsed:.1f}s")


# -- 6. the agent ---------------------------------------------------------------------------------


def agent_status(guest: GuestVM) -> dict[str, object]:
    agent = warden_status(guest)["agent"]
    assert isinstance(agent, dict)
    return agent


def test_agent_killed_in_a_loop_backs_off_degrades_and_events_arrive_later(
    guest: GuestVM, ready: dict[str, float]
) -> None:
    wait_until("the agent running", lambda: agent_status(guest).get("pid") is not None, 60, guest)
    # Self-protection: root in the VM cannot kill the agent.
    denied = guest.run(f"kill -9 {wait_until_agent_pid(guest)}")
    assert denied.returncode != 0 and "not permitted" in denied.stderr, denied
    marker = MARKER  # read only here: its alert can only come from this test
    for round_number in range(4):
        pid = wait_until_agent_pid(guest)
        time.sleep(1)  # let the new wrapper read its start value first
        guest.run(f"echo {round_number} > {CRASH}", check=True)
        wait_until("the agent crash", lambda old=pid: agent_status(guest).get("pid") != old, 30, guest)
        if round_number == 2:
            # produced while the agent is down (backing off): must be delivered by the next agent
            guest.run(f"cat {marker}")
    agent = agent_status(guest)
    assert agent["degraded"] is True
    history = agent["backoff_history"]
    assert isinstance(history, list) and len(history) >= 3
    assert history[1] > history[0] and history[2] > history[1], history  # exponential (jitter <= 0.1 s)
    assert "DEGRADED" in show(guest, "StatusText")["StatusText"]
    assert is_ready(guest)  # enforcement and READY are not affected
    wait_until("the marker event in the alert log",
               lambda: marker in guest.run(f"cat {ALERTS}").stdout, 60, guest)
    line = next(json.loads(x) for x in guest.run(f"cat {ALERTS}").stdout.splitlines() if marker in x)
    assert line["PolicyName"] == "probe-block" and line["Action"] == "Block"
    print(f"agent backoff history {history}")


def wait_until_agent_pid(guest: GuestVM) -> int:
    found: list[int] = []

    def running() -> bool:
        pid = agent_status(guest).get("pid")
        if isinstance(pid, int):
            found.append(pid)
            return True
        return False

    wait_until("the agent restarted", running, 60, guest)
    return found[-1]


# -- 7. control socket ----------------------------------------------------------------------------


def test_garbage_on_the_control_socket_gets_an_error_and_the_supervisor_lives(
    guest: GuestVM, ready: dict[str, float]
) -> None:
    code = textwrap.dedent("""
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.connect("/run/warden/warden.sock")
        s.sendall(b"\\x00\\xffnot json at all\\n")
        print(s.recv(4096).decode().strip())
    """)
    reply = json.loads(guest.python(code, check=True).stdout)
    assert reply == {"ok": False, "error": "request is not JSON (not UTF-8 at byte 1)", "retry": False}
    assert guest.run("stat -c %a /run/warden/warden.sock", check=True).stdout.strip() == "600"
    assert is_ready(guest)
    text = guest.run(f"{WARDEN} status", check=True).stdout
    assert "phase:        ready" in text and "measurement:  vtpm" in text


# -- 8. reload ------------------------------------------------------------------------------------


def test_reload_refuses_an_untrusted_bundle_and_applies_a_newer_one(guest: GuestVM, ready: dict[str, float]) -> None:
    untrusted = bundle(2, [*V1, host_block("v2-block", V2_DIR)], key="owner-p256", pod=POD)
    guest.run(f"cat > {UPDATE} < {guest.write_shared('untrusted.json', untrusted)}", check=True)
    guest.run("systemctl reload warden.service", check=True)
    wait_until("the refused reload", lambda: (warden_status(guest)["last_reload"] or {}).get("result") == "refused",
               60, guest)
    assert readable(guest, f"{V2_DIR}/secret")
    assert "bundle v1" in show(guest, "StatusText")["StatusText"]

    good = bundle(2, V2, pod=POD)
    guest.run(f"cat > {UPDATE} < {guest.write_shared('v2.json', good)}", check=True)
    guest.run("systemctl reload warden.service", check=True)
    wait_until("bundle v2", lambda: "bundle v2" in show(guest, "StatusText")["StatusText"], 60, guest)
    assert not readable(guest, f"{V2_DIR}/secret")
    assert not readable(guest, f"{PROBE_DIR}/secret")
    assert is_ready(guest)
    # node_labels say this VM is pod-vm: the host policy for other-vm selects nothing here.
    assert readable(guest, f"{OTHER_NODE_DIR}/secret")
    # Nothing accepted is silently not enforced: the syscalls section is named in the status and the log.
    warning = ("KubeArmorPolicy syscalls-audit: accepted, not enforced as written: spec.syscalls (not monitored: "
               "warden has no syscall hook; KubeArmor only audits syscalls, it never blocks them)")
    assert warden_status(guest)["enforcement"]["policy_warnings"] == [warning]  # type: ignore[index]
    journal = guest.run("journalctl -u warden.service --no-pager -o cat", check=True).stdout
    assert f"policy {warning}" in journal

    # A restart resumes v2: the boot bundle (v1) alone is now a rollback and must not come back.
    old_pid = show(guest, "MainPID")["MainPID"]
    guest.run("systemctl kill --kill-who=main --signal=SIGKILL warden.service", check=True)
    wait_until("READY again", lambda: show(guest, "MainPID")["MainPID"] not in ("0", old_pid) and is_ready(guest),
               180, guest)
    assert "bundle v2" in show(guest, "StatusText")["StatusText"]
    assert not readable(guest, f"{V2_DIR}/secret")


# -- 9. crun with the hook ------------------------------------------------------------------------


def make_bundle(guest: GuestVM, name: str) -> str:
    return make_container(guest, name, ["sh", "-c", "cat /public; cat /secret/data; echo secret-rc=$?"],
                          files={"/secret/data": "container-secret\n", "/public": "public\n"})


def test_container_policy_is_enforced_inside_a_crun_container(guest: GuestVM, ready: dict[str, float]) -> None:
    directory = make_bundle(guest, "web")
    result = guest.run(f"crun run -b {directory} web-1", timeout=120)
    assert result.returncode == 0, result
    assert "public" in result.stdout
    assert "container-secret" not in result.stdout
    assert "secret-rc=1" in result.stdout
    assert "Permission denied" in result.stderr or "Operation not permitted" in result.stderr
    journal = guest.run("journalctl -u warden.service --no-pager -o cat", check=True).stdout
    assert "registered container web-1 (web)" in journal
    assert "unregistered container web-1" in journal  # poststop
    assert "web-1" not in warden_status(guest)["containers"]  # type: ignore[operator]


def test_chroot_inside_a_crun_container_changes_no_path(guest: GuestVM, ready: dict[str, float]) -> None:
    """Issue 14 under the real service: the container's root chroots into /secret (CAP_SYS_CHROOT) and
    reads /data, which is /secret/data: still the container's path, still refused, and alerted."""
    escape = "import os; os.chroot('/secret'); print(open('/data').read())"
    directory = make_container(guest, "chroot", ["sh", "-c", f"cat /public; /usr/bin/python3 -c \"{escape}\"; "
                                                 "echo chroot-rc=$?"],
                               files={"/secret/data": "chroot-secret\n", "/public": "public\n"},
                               extra_caps=["CAP_SYS_CHROOT"], with_usr=True)
    result = guest.run(f"crun run -b {directory} chroot-1", timeout=120)
    assert result.returncode == 0, result
    assert "public" in result.stdout and "chroot-secret" not in result.stdout
    assert "chroot-rc=1" in result.stdout and "Operation not permitted" in result.stderr, result
    wait_until("the chroot alert", lambda: "chroot-1" in guest.run(f"cat {ALERTS}").stdout
               or "/secret/data" in guest.run(f"cat {ALERTS}").stdout, 60, guest)
    alerts = [json.loads(x) for x in guest.run(f"cat {ALERTS}").stdout.splitlines() if "/secret/data" in x]
    assert any(a["PolicyName"] == "container-secret" and a["ContainerName"] == "chroot"
               and a["Result"] == "Permission denied" for a in alerts), alerts


def test_hook_with_malformed_state_fails_with_a_clear_error(guest: GuestVM, ready: dict[str, float]) -> None:
    result = guest.run(f"echo '{{\"ociVersion\": \"1.0\", \"id\": ' | {WARDEN} hook --stage createRuntime")
    assert result.returncode == 1
    assert result.stderr.startswith("warden hook: stdin: OCI state: not JSON (Expecting value)")


# -- 9b. pod identity, registration and the control socket (issue 15 items 1 and 10) -------------

MYSQL_CHECK = "cat /var/lib/mysql/any-file; echo mysql-rc=$?; busybox sleep 30"


def test_a_renamed_relabelled_container_is_still_blocked_from_mysql_data(
    guest: GuestVM, ready: dict[str, float]
) -> None:
    """The issue's attack: the host names the mysql container `mysql-but-not-quite` and labels it
    app=other. Neither is signed, so the container gets the union of the signed pod's rules."""
    directory = make_container(guest, "mysql-but-not-quite", ["sh", "-c", MYSQL_CHECK],
                               labels={"app": "mysql-but-not-quite"}, files={"/var/lib/mysql/any-file": "row 1\n"})
    guest.run(f"setsid nohup crun run -b {directory} relabel-1 > /var/tmp/relabel.log 2>&1 < /dev/null &", check=True)
    wait_until("the container's check", lambda: "mysql-rc=" in guest.run("cat /var/tmp/relabel.log").stdout,
               120, guest)
    log = guest.run("cat /var/tmp/relabel.log", check=True).stdout
    assert "mysql-rc=1" in log and "row 1" not in log, log
    journal = guest.run("journalctl -u warden.service --no-pager -o cat", check=True).stdout
    assert "registered container relabel-1 (mysql-but-not-quite) as union of every policy for the pod" in journal

    # A second register for the running container (a host trying to relabel it afterwards): refused.
    pid = guest.run("crun state relabel-1", check=True).stdout
    init_pid = json.loads(pid)["pid"]
    code = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from supervisor.control import call
        sock = Path("/run/warden/warden.sock")
        print(json.dumps([
            call(sock, {{"op": "register", "id": "relabel-1", "pid": {init_pid}, "name": "web"}}),
            call(sock, {{"op": "register", "id": "other-id", "pid": {init_pid}, "name": "mysql"}}),
            call(sock, {{"op": "register", "id": "host-shell", "pid": __import__("os").getpid(), "name": "mysql"}}),
        ]))
    """)
    replies = json.loads(guest.python(code, check=True).stdout)
    assert [r["ok"] for r in replies] == [False, False, False], replies
    assert "not relabelled" in replies[0]["error"] and "not relabelled" in replies[1]["error"]
    assert "host's pid namespace" in replies[2]["error"]
    guest.run("crun kill relabel-1 KILL; sleep 1; crun delete -f relabel-1 || true")


def test_only_root_reaches_the_control_socket_and_run_warden_is_closed(
    guest: GuestVM, ready: dict[str, float]
) -> None:
    """Issue 15 item 10: uid 0 only (0600 socket in a 0700 directory, SO_PEERCRED checked as well);
    /run/warden (socket, rollback state, accepted update, registry) cannot be written by VM root."""
    as_nobody = guest.run(f"setpriv --reuid=65534 --regid=65534 --clear-groups {WARDEN} status")
    assert as_nobody.returncode != 0
    assert "Permission denied" in as_nobody.stderr or "nothing listening" in as_nobody.stderr, as_nobody
    assert guest.run("stat -c '%a %U' /run/warden", check=True).stdout.strip() == "700 root"
    for attempt in ("echo '{}' > /run/warden/bundle-state.json", "echo x >> /run/warden/accepted-update.bundle.json",
                    "echo x > /run/warden/new-file", "rm -f /run/warden/containers.json",
                    "touch -c /run/warden/bundle-state.json", "chown 65534 /run/warden/bundle-state.json"):
        result = guest.run(attempt)
        assert result.returncode != 0, (attempt, result)
        assert "Operation not permitted" in result.stderr or "Permission denied" in result.stderr, result


# -- 10. supervisor stopped -----------------------------------------------------------------------


def test_with_the_supervisor_stopped_enforcement_stays_and_containers_cannot_start(
    guest: GuestVM, ready: dict[str, float]
) -> None:
    guest.run("systemctl stop warden.service", check=True)
    journal = guest.run("journalctl -u warden.service -n 20 --no-pager -o cat", check=True).stdout
    assert "stopped; enforcement remains pinned" in journal
    assert show(guest, "ExecMainStatus")["ExecMainStatus"] == "0"
    assert not readable(guest, f"{PROBE_DIR}/secret")
    directory = make_bundle(guest, "late")
    started = time.monotonic()
    result = guest.run(f"crun run -b {directory} late-1", timeout=120)
    assert result.returncode != 0
    assert "error executing hook" in result.stderr, result  # crun does not pass the hook's stderr on
    state = '{"ociVersion": "1.0.2", "id": "late-2", "status": "created", "pid": 1, "bundle": "/"}'
    direct = guest.run(f"echo '{state}' | {WARDEN} hook --stage createRuntime --timeout 2")
    assert direct.returncode == 1
    assert "did not acknowledge register of late-2 within 2s" in direct.stderr and "failing closed" in direct.stderr
    assert "container-secret" not in result.stdout and "public" not in result.stdout
    print(f"crun refused in {time.monotonic() - started:.1f}s with the supervisor stopped")
