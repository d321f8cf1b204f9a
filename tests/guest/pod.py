"""What the two pod-VM profile test modules check, shared (tests/guest/test_profile_{kata,peerpod}.py).

A refused gate: warden never becomes READY, kata-agent never starts, no container runs. An accepted
gate: kata-agent starts only after READY, and the seed's three policies hold in the containers it
starts, including one whose guest hook failed (kata-agent ignores that; warden confines the
unregistered container anyway). With the guest components (an accepted image made with
`guest_components=True`: aa.toml with the event log on in the initdata, warden configured to record in
the AAEL and to poll the KBS): the AAEL record is written once the attestation-agent comes up after
READY; a KBS update with a higher version is enforced in kata-agent's containers, a lower or
foreign-signed one is refused and the enforced policy stays.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from initdata.bundle import PolicyFile
from initdata.document import parse_initdata
from supervisor.enforcement import shipped_objects
from tests.data.initdata.factory import make_envelope, make_initdata, policy_files, public_pem, signing_key
from tests.guest.profiles import KATA_AGENT_CLIENT, KBS_REPO, PodImage
from tests.guest.service import CHECKS_SCRIPT, WARDEN, is_ready, make_container, show, wait_until, warden_status
from tests.guest.vm import REPO_ROOT, GuestOptions, GuestVM

SEED = REPO_ROOT / "tests" / "data" / "policies" / "seed"
TRUSTED_KEY = "owner-ed25519"  # in the image's /etc/warden/trust
FOREIGN_KEY = "owner-p256"  # not trusted by the image
BASELINE_POLICY = PolicyFile("baseline-block.yaml", """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorHostPolicy
metadata:
  name: baseline-block
spec:
  nodeSelector:
    matchLabels: {}
  action: Block
  file:
    matchDirectories:
      - dir: /var/tmp/warden-baseline/
        recursive: true
""")


def envelope(key: str, policies: list[PolicyFile], version: int = 1) -> bytes:
    return make_envelope([signing_key(key)], version=version, policies=policies,
                         bpf_objects=shipped_objects()).to_json()


# The pod owner's aa.toml (initdata `[data]`): the AA keeps its event log only when told to
# (guest-components attestation-agent src/lib.rs: "Extend eventlog not enabled when launching!").
AA_TOML = "[eventlog_config]\nenable_eventlog = true\n"
KBS_RESOURCE = "kbs:///default/warden/bundle"
EVENTLOG = "/run/attestation-agent/eventlog"
GUEST_COMPONENTS_CONFIG = {"record_ruleset": True, "kbs_update": {"resource": KBS_RESOURCE, "interval_s": 2}}


def pod_image(*, signed_by: str, guest_components: bool = False) -> PodImage:
    """The image (trusted key, baseline) and a pod whose initdata carries the seed's three policies.
    `guest_components`: the AA's event log on (initdata aa.toml), warden recording the enforced RuleSet
    in it and polling KBS_RESOURCE through the CDH every 2 s."""
    return PodImage(owner_pem=public_pem(TRUSTED_KEY).decode(),
                    baseline=envelope(TRUSTED_KEY, [BASELINE_POLICY]).decode(),
                    initdata=make_initdata(envelope(signed_by, policy_files(SEED)),
                                           extra={"aa.toml": AA_TOML} if guest_components else None),
                    config=GUEST_COMPONENTS_CONFIG if guest_components else {})


def boot(options: GuestOptions, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestVM]:
    vm = GuestVM(options, tmp_path_factory.mktemp("guest"))
    vm.start()
    try:
        yield vm
    finally:
        vm.stop()


def props(guest: GuestVM, unit: str, *names: str) -> dict[str, str]:
    out = guest.run(f"systemctl show {unit} -p {','.join(names)}", check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(guest: GuestVM, unit: str, lines: int = 40) -> str:
    return guest.run(f"journalctl -u {unit} -n {lines} --no-pager -o cat").stdout


def initdata_digest(image: PodImage) -> str:
    return parse_initdata(image.initdata, origin="initdata").digest_hex


# -- the refused gate ---------------------------------------------------------------------------------


def check_refused(guest: GuestVM) -> None:
    wait_until("the gate's refusal", lambda: "gate refused" in show(guest, "StatusText")["StatusText"], 240, guest)
    status = show(guest, "StatusText")["StatusText"]
    assert "signature" in status or "trusted" in status, status
    restarts = int(show(guest, "NRestarts")["NRestarts"])
    # Through one exit and restart of warden (gate_failure_exit_s), kata-agent stays down.
    wait_until("warden's restart after the refusal", lambda: int(show(guest, "NRestarts")["NRestarts"]) > restarts,
               120, guest)
    agent = props(guest, "kata-agent.service", "ActiveState", "ExecMainStartTimestampMonotonic")
    assert agent["ActiveState"] != "active", agent
    assert agent["ExecMainStartTimestampMonotonic"] == "0", f"kata-agent ran: {agent}\n{journal(guest, 'kata-agent')}"
    assert not is_ready(guest)
    directory = make_container(guest, "refused", ["sh", "-c", "echo started > /started"], oci_hooks=False)
    request = guest.run(f"{KATA_AGENT_CLIENT} --id refused-1 --bundle {directory}")
    assert request.returncode == 125, request  # nobody serves containers
    assert guest.run(f"test -e {directory}/rootfs/started").returncode != 0
    assert json.loads(guest.run("crun list -f json", check=True).stdout or "[]") == []


# -- the accepted gate --------------------------------------------------------------------------------


def check_kata_agent_after_ready(guest: GuestVM) -> dict[str, int]:
    wait_until("warden.service READY", lambda: is_ready(guest), 240, guest)
    wait_until("kata-agent.service active",
               lambda: props(guest, "kata-agent.service", "ActiveState")["ActiveState"] == "active", 120, guest)
    ready_at = int(props(guest, "warden.service", "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"])
    agent_at = int(props(guest, "kata-agent.service", "ExecMainStartTimestampMonotonic")
                   ["ExecMainStartTimestampMonotonic"])
    assert 0 < ready_at <= agent_at, f"warden READY at {ready_at} us, kata-agent started at {agent_at} us"
    return {"warden_ready_us": ready_at, "kata_agent_start_us": agent_at}


def run_in_pod(guest: GuestVM, name: str, *, labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None, script: str = CHECKS_SCRIPT,
               files: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """A container started by kata-agent (no OCI hooks of its own; kata-agent adds its guest hooks):
    (the checks' outcomes, the prestart hook's result). `script` prints `check|outcome` lines."""
    directory = make_container(guest, name, ["sh", "-c", script], labels=labels, with_usr=True,
                               extra_caps=["CAP_NET_RAW"], files=files or {"/var/lib/mysql/any-file": "row 1\n"},
                               oci_hooks=False, annotations=annotations)
    result = guest.run(f"{KATA_AGENT_CLIENT} --id {name}-1 --bundle {directory}", timeout=180)
    assert result.returncode == 0, result
    reply: dict[str, Any] = json.loads(result.stdout)
    assert reply["status"] == 0, reply
    outcomes = dict(line.split("|", 1) for line in reply["stdout"].splitlines() if "|" in line)
    hooks = {entry["stage"]: entry["result"] for entry in reply["hooks"]}
    return outcomes, hooks


ROGUE_ANNOTATIONS = {"io.kubernetes.cri.container-name": "rogue\tname"}


def blocked(outcome: str) -> bool:
    return outcome.startswith("denied") and "Operation not permitted" in outcome


def check_seed_policies(guest: GuestVM) -> None:
    mysql, mysql_hooks = run_in_pod(guest, "mysql", labels={"app": "mysql"})
    web, web_hooks = run_in_pod(guest, "web")
    # The host gives this container a name the control protocol refuses (a tab in it): warden's hook
    # cannot register it, kata-agent logs that and starts the container anyway (hooks.rs).
    rogue, rogue_hooks = run_in_pod(guest, "rogue", annotations=ROGUE_ANNOTATIONS)
    assert mysql_hooks["prestart"] == web_hooks["prestart"] == "ok", (mysql_hooks, web_hooks)
    assert rogue_hooks["prestart"] == "exit 1", rogue_hooks
    for name, outcomes in (("mysql", mysql), ("web", web), ("rogue", rogue)):
        assert blocked(outcomes["raw socket"]), (name, outcomes)  # net-raw-block
        assert blocked(outcomes["write /bin/evil"]), (name, outcomes)  # file-integrity-monitoring
        # block-mysql-data-access: this bundle names no pod, so no container's identity is established
        # and every registered one gets every container policy; the unregistered rogue too (fail closed).
        assert blocked(outcomes["cat /var/lib/mysql/any-file"]), (name, outcomes)


def check_warden_crash_keeps_kata_agent(guest: GuestVM) -> None:
    """systemd's automatic restart of a crashed warden leaves kata-agent (and the pod) running: the
    drop-in only Wants= warden (a Requires= would restart kata-agent with it)."""
    agent_pid = props(guest, "kata-agent.service", "MainPID")["MainPID"]
    restarts = int(show(guest, "NRestarts")["NRestarts"])
    guest.run("systemctl kill --signal=SIGKILL warden.service", check=True)
    wait_until("warden.service back to READY",
               lambda: int(show(guest, "NRestarts")["NRestarts"]) > restarts and is_ready(guest), 240, guest)
    after = props(guest, "kata-agent.service", "ActiveState", "MainPID")
    assert after == {"ActiveState": "active", "MainPID": agent_pid}, after


# -- the guest components: AAEL record and KBS updates ----------------------------------------------


def status_until(guest: GuestVM, what: str, predicate: Callable[[dict[str, Any]], bool],
                 timeout: float = 120) -> dict[str, Any]:
    """`warden status --json` (READY required) once `predicate` holds for it."""
    found: dict[str, Any] = {}

    def check() -> bool:
        found.clear()
        found.update(warden_status(guest, ready=True))
        return predicate(found)

    wait_until(what, check, timeout, guest)
    return found


def status_text(guest: GuestVM) -> str:
    return guest.run(f"{WARDEN} status", check=True).stdout


def check_aael_recorded_once_the_aa_is_up(guest: GuestVM) -> None:
    """READY came without the attestation-agent; the record waits for it (status says so), and is
    written once the AA is started after READY, as kata-agent starts it."""
    wait_until("warden.service READY", lambda: is_ready(guest), 240, guest)
    pending = status_until(guest, "a failed AAEL attempt", lambda s: s["aael"]["attempts"] >= 1)
    assert pending["aael"]["recorded"] is False, pending["aael"]
    assert "attestation-agent.sock" in pending["aael"]["last_error"], pending["aael"]
    assert "NOT recorded yet" in status_text(guest)
    assert guest.run(f"test -e {EVENTLOG}").returncode != 0  # no AA has run in this VM yet

    guest.run("systemctl start attestation-agent.service", check=True)
    status = status_until(guest, "the AAEL record", lambda s: s["aael"]["recorded"] is True)
    ruleset = status["enforcement"]["ruleset_digest"]
    assert status["aael"]["ruleset"] == ruleset and status["enforcement"]["recorded_in_aael"] is True, status
    lines = guest.run(f"cat {EVENTLOG}", check=True).stdout.splitlines()
    assert lines == ["INIT sha256/" + "0" * 64,
                     f'github.com/coco-warden EnforcePolicy {{"bundle_version":1,"ruleset":"{ruleset}"}}'], lines
    ready_at = int(props(guest, "warden.service", "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"])
    aa_at = int(props(guest, "attestation-agent.service", "ExecMainStartTimestampMonotonic")
                ["ExecMainStartTimestampMonotonic"])
    assert 0 < ready_at < aa_at, (ready_at, aa_at)
    text = status_text(guest)
    assert f"aael:         recorded {ruleset}" in text, text
    print(next(line for line in text.splitlines() if line.startswith("aael:")))


# The update the pod owner pushes to the KBS: the MySQL rule replaced by one for PostgreSQL's data.
POSTGRES_POLICY = PolicyFile("block-postgres-data-access.yaml", (SEED / "block-mysql-data-access.yaml").read_text()
                             .replace("block-mysql-data-access", "block-postgres-data-access")
                             .replace("/var/lib/mysql/", "/var/lib/postgresql/"))
DATA_DIRS_SCRIPT = """
for f in /var/lib/mysql/any-file /var/lib/postgresql/any-file; do
  cat $f >/dev/null 2>/tmp/e && echo "cat $f|allowed" || echo "cat $f|denied: $(sed 's/.*: //' /tmp/e)"
done
"""
DATA_FILES = {"/var/lib/mysql/any-file": "row 1\n", "/var/lib/postgresql/any-file": "row 1\n"}


def serve_from_kbs(guest: GuestVM, data: bytes) -> str:
    """Put `data` in the KBS at KBS_RESOURCE (atomically); its digest as the poller reports it."""
    target = f"{KBS_REPO}/{KBS_RESOURCE.removeprefix('kbs:///')}"
    staged = guest.write_shared(f"kbs-{time.monotonic_ns()}.json", data.decode())
    guest.run(f"mkdir -p $(dirname {target}) && cat > {target}.tmp < {staged} && mv {target}.tmp {target}",
              check=True)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def data_dirs_in_pod(guest: GuestVM, name: str) -> dict[str, str]:
    outcomes, _ = run_in_pod(guest, name, labels={"app": "mysql"}, script=DATA_DIRS_SCRIPT, files=DATA_FILES)
    return outcomes


def check_kbs_updates(guest: GuestVM) -> None:
    """v2 from the KBS (through the CDH) is enforced in kata-agent's next container; a lower version and
    a foreign-signed one are refused, status says why, and v2 stays enforced."""
    wait_until("warden.service READY", lambda: is_ready(guest), 240, guest)
    before = data_dirs_in_pod(guest, "kbs-v1")
    assert blocked(before["cat /var/lib/mysql/any-file"]), before
    assert before["cat /var/lib/postgresql/any-file"] == "allowed", before

    v2 = [p for p in policy_files(SEED) if p.name != "block-mysql-data-access.yaml"] + [POSTGRES_POLICY]
    serve_from_kbs(guest, envelope(TRUSTED_KEY, v2, version=2))
    guest.run("systemctl start confidential-data-hub.service", check=True)
    status = status_until(guest, "bundle v2 from the KBS", lambda s: s["gate"]["bundle_version"] == 2)
    assert status["last_reload"]["via"] == f"kbs {KBS_RESOURCE} via unix:///run/confidential-containers/cdh.sock", \
        status["last_reload"]
    after = data_dirs_in_pod(guest, "kbs-v2")
    assert after["cat /var/lib/mysql/any-file"] == "allowed", after  # the changed rule took effect
    assert blocked(after["cat /var/lib/postgresql/any-file"]), after

    for data, problem in ((envelope(TRUSTED_KEY, policy_files(SEED), version=1), "version"),
                          (envelope(FOREIGN_KEY, policy_files(SEED), version=3), "signature")):
        digest = serve_from_kbs(guest, data)

        def gated(status: dict[str, Any], digest: str = digest) -> bool:
            return bool((status["kbs_update"]["last_result"] or {}).get("digest") == digest)

        status = status_until(guest, f"the refusal ({problem})", gated)
        result = status["kbs_update"]["last_result"]
        assert result["ok"] is False and problem in result["error"].lower(), result
        assert status["gate"]["bundle_version"] == 2, status["gate"]
        text = status_text(guest)
        assert "kbs update:" in text and "last: refused" in text, text
        print(next(line for line in text.splitlines() if line.startswith("kbs update:")))
    held = data_dirs_in_pod(guest, "kbs-v2-held")
    assert held["cat /var/lib/mysql/any-file"] == "allowed" and blocked(held["cat /var/lib/postgresql/any-file"]), held
    assert "refused" in journal(guest, "warden.service", 200)
