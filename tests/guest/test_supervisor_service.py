"""warden.service under the guest's real systemd 252, kernel 6.1 (BPF LSM) and swtpm vTPM; crun for OCI.

One guest for the whole module (a boot costs 15-100 s under TCG); the tests run in file order and
build on each other, like the life of a pod VM:

 1. a bad configuration key: one clear line, no start;
 2. PCR8 not extended yet, so the gate refuses: the baseline bundle is enforced, READY never comes,
    STATUS says why, the process exits 1 after gate_failure_exit_s and systemd restarts it;
 3. PCR8 extended with the initdata digest: READY only after enforcement, StatusText = status line;
 4. kill -9 five times under a probe loop: zero probe successes, restarts adopt the same links;
 5. SIGSTOP: the watchdog fires, systemd restarts the supervisor, enforcement holds;
 6. the agent killed in a loop: backoff grows, `degraded` reported, events produced meanwhile arrive;
 7. garbage on the control socket, `warden status`;
 8. reload: an untrusted bundle is refused (nothing changes), a newer signed one is applied;
 9. crun + the hook: the container policy holds inside a busybox container; a malformed state is refused;
10. supervisor stopped: enforcement stays, and crun cannot create a container (the hook fails closed).
"""

from __future__ import annotations

import json
import re
import textwrap
import time

import pytest

from initdata.bundle import PolicyFile
from initdata.document import parse_initdata
from supervisor.enforcement import shipped_objects
from tests.data.initdata.factory import make_envelope, make_initdata, public_pem, signing_key
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


def bundle(version: int, policies: list[PolicyFile], key: str = "owner-ed25519") -> str:
    return make_envelope([signing_key(key)], version=version, policies=policies,
                         bpf_objects=shipped_objects()).to_json().decode()


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

V1 = [host_block("probe-block", PROBE_DIR), CONTAINER_SECRET]
V2 = [*V1, host_block("v2-block", V2_DIR), host_block("other-node-block", OTHER_NODE_DIR, node="other-vm"),
      SYSCALLS_AUDIT]
INITDATA = make_initdata(bundle(1, V1).encode()).decode()
INITDATA_DIGEST = parse_initdata(INITDATA.encode(), origin="test").digest_hex


def config_yaml(**agent: object) -> str:
    agent_settings = {"backoff_initial_s": 0.5, "backoff_max_s": 4, "backoff_jitter_s": 0.1, "crash_budget": 3,
                      "crash_window_s": 120, "stable_after_s": 600, "logPath": ALERTS, "maxAlertPerSec": 1000, **agent}
    return json.dumps({  # JSON is YAML
        "gate": {"trust_dir": "/etc/warden/trust", "measurement_sources": ["vtpm"]},
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
    assert reply == {"ok": False, "error": "request is not JSON (UnicodeDecodeError)", "retry": False}
    assert guest.run("stat -c %a /run/warden/warden.sock", check=True).stdout.strip() == "600"
    assert is_ready(guest)
    text = guest.run(f"{WARDEN} status", check=True).stdout
    assert "phase:        ready" in text and "measurement:  vtpm" in text


# -- 8. reload ------------------------------------------------------------------------------------


def test_reload_refuses_an_untrusted_bundle_and_applies_a_newer_one(guest: GuestVM, ready: dict[str, float]) -> None:
    untrusted = bundle(2, [*V1, host_block("v2-block", V2_DIR)], key="owner-p256")
    guest.run(f"cat > {UPDATE} < {guest.write_shared('untrusted.json', untrusted)}", check=True)
    guest.run("systemctl reload warden.service", check=True)
    wait_until("the refused reload", lambda: (warden_status(guest)["last_reload"] or {}).get("result") == "refused",
               60, guest)
    assert readable(guest, f"{V2_DIR}/secret")
    assert "bundle v1" in show(guest, "StatusText")["StatusText"]

    good = bundle(2, V2)
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


def test_hook_with_malformed_state_fails_with_a_clear_error(guest: GuestVM, ready: dict[str, float]) -> None:
    result = guest.run(f"echo '{{\"ociVersion\": \"1.0\", \"id\": ' | {WARDEN} hook --stage createRuntime")
    assert result.returncode == 1
    assert result.stderr.startswith("warden hook: stdin: OCI state is not JSON (Expecting value at line 2")


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
