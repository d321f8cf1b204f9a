"""What the two pod-VM profile test modules check, shared (tests/guest/test_profile_{kata,peerpod}.py).

A refused gate: warden never becomes READY, kata-agent never starts, no container runs. An accepted
gate: kata-agent starts only after READY, and the seed's three policies hold in the containers it
starts, including one whose guest hook failed (kata-agent ignores that; warden confines the
unregistered container anyway).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from initdata.bundle import PolicyFile
from initdata.document import parse_initdata
from supervisor.enforcement import shipped_objects
from tests.data.initdata.factory import make_envelope, make_initdata, policy_files, public_pem, signing_key
from tests.guest.profiles import KATA_AGENT_CLIENT, PodImage
from tests.guest.service import CHECKS_SCRIPT, is_ready, make_container, show, wait_until
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


def pod_image(*, signed_by: str) -> PodImage:
    """The image (trusted key, baseline) and a pod whose initdata carries the seed's three policies."""
    return PodImage(owner_pem=public_pem(TRUSTED_KEY).decode(),
                    baseline=envelope(TRUSTED_KEY, [BASELINE_POLICY]).decode(),
                    initdata=make_initdata(envelope(signed_by, policy_files(SEED))))


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
               annotations: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """A container started by kata-agent (no OCI hooks of its own; kata-agent adds its guest hooks):
    (the checks' outcomes, the prestart hook's result)."""
    directory = make_container(guest, name, ["sh", "-c", CHECKS_SCRIPT], labels=labels, with_usr=True,
                               extra_caps=["CAP_NET_RAW"], files={"/var/lib/mysql/any-file": "row 1\n"},
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
