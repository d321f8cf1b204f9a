"""Self-protection of the real warden.service against root in the VM and root in a container.

The guest is a pod VM as `make demo` builds it: warden.service enabled, the seed's three policies in
a signed bundle inside initdata that PCR8 measured at launch. Once READY, attacks come from outside
warden's cgroup: from the test agent (root in the VM) and from a process in fresh mount, UTS, IPC
and network namespaces (root in a container: an unregistered mount namespace gets the rules that
select every container). Each attack must fail and show up in the agent's alert file; afterwards
the supervisor and agent are the same processes and the seed's proof of concept still holds in a
real crun container. The suite prints the attack table.
"""

from __future__ import annotations

import json
import shlex
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from initdata.bundle import PolicyFile
from supervisor.enforcement import shipped_objects
from tests.data.initdata.factory import make_envelope, make_initdata, public_pem, signing_key
from tests.guest.service import (
    ALERTS,
    WARDEN,
    config_json,
    is_ready,
    lsm_link_ids,
    pod_image_files,
    run_checks,
    show,
    wait_until,
    warden_status,
)
from tests.guest.vm import REPO_ROOT, GuestOptions, GuestVM

PINS = "/sys/fs/bpf/warden"
DROPIN = "/run/systemd/system/warden.service.d"
SEED = sorted((REPO_ROOT / "tests" / "data" / "policies" / "seed").glob("*.yaml"))


def signed_bundle(policies: list[PolicyFile]) -> str:
    envelope = make_envelope([signing_key("owner-ed25519")], policies=policies, bpf_objects=shipped_objects())
    return envelope.to_json().decode()


@pytest.fixture(scope="module")
def guest_options() -> GuestOptions:
    seed = [PolicyFile(p.name, p.read_text()) for p in SEED]
    initdata = make_initdata(signed_bundle(seed).encode()).decode()
    baseline = signed_bundle([p for p in seed if p.name.startswith("net-raw")])
    return GuestOptions(tpm=True, files=pod_image_files(public_pem("owner-ed25519").decode(), initdata, baseline))


@dataclass(frozen=True)
class Warden:
    supervisor: int
    agent: int
    self_links: dict[str, int]
    self_maps: dict[str, int]
    engine_config_update: str  # `bpftool map update` arguments that would zero warden_config's key 0
    memo_update: str  # the same for file_guard's own task memo (no pin names it: reached by id only)


def current_warden(guest: GuestVM) -> Warden:
    supervisor = int(show(guest, "MainPID")["MainPID"])
    wait_until("the agent", lambda: agent_pid(guest, supervisor) != 0, 60, guest)
    agent = agent_pid(guest, supervisor)
    engine = warden_status(guest, ready=True)["engine"]
    assert isinstance(engine, dict), engine
    protection = engine["self_protection"]
    config = engine["maps"]["warden_config"]  # the host's mount namespace: zeroed, the host scope is lost
    update = (f"id {config['id']} key {' '.join(['0'] * config['key_size'])} "
              f"value {' '.join(['0'] * config['value_size'])}")
    # a memo saying "no file rules in this scope" would let a task read and write through its descriptors
    memo = json.loads(guest.python(MEMO_MAP, check=True).stdout)
    memo_update = (f"id {memo['id']} key {' '.join(['0'] * memo['key_size'])} "
                   f"value {' '.join(['0'] * memo['value_size'])}")
    return Warden(supervisor, agent, dict(protection["links"]), dict(protection["maps"]), update, memo_update)


# file_guard's task memo (no pin names it), found through its program's map ids and opened read-only.
# Not with bpftool: it opens maps for writing (`map show`, and `prog show` for programs' metadata),
# which self-protection refuses and alerts, each time: enough alerts to start the agent's throttling.
MEMO_MAP = textwrap.dedent("""
    import ctypes, json, os
    from bpf.kernel.libbpf import Libbpf
    libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    class Opts(ctypes.Structure):  # struct bpf_get_fd_by_id_opts
        _fields_ = [("sz", ctypes.c_size_t), ("open_flags", ctypes.c_uint32)]
    opts = Opts(ctypes.sizeof(Opts), 1 << 3)  # BPF_F_RDONLY
    lib = Libbpf()
    prog_id = ctypes.c_uint32(0)
    while libbpf.bpf_prog_get_next_id(prog_id, ctypes.byref(prog_id)) == 0:
        if not lib.prog_info_by_id(prog_id.value).name.startswith("warden_file_per"):  # 15 bytes of the name
            continue
        for map_id in lib.prog_map_ids(prog_id.value):
            fd = libbpf.bpf_map_get_fd_by_id_opts(ctypes.c_uint32(map_id), ctypes.byref(opts))
            info = lib.map_info(fd)
            os.close(fd)
            if info.name == "warden_task_mem":
                print(json.dumps({"id": info.id, "key_size": info.key_size, "value_size": info.value_size}))
""")


def agent_pid(guest: GuestVM, supervisor: int) -> int:
    found = guest.run(f"pgrep -P {supervisor} -f 'warden agent'").stdout.split()
    return int(found[0]) if found else 0


@pytest.fixture(scope="module")
def warden(guest: GuestVM) -> Iterator[Warden]:
    wait_until("warden.service READY", lambda: is_ready(guest), 300, guest)
    current = current_warden(guest)
    # the agent process exists before it reads events (its interpreter's start, 10 s or more under TCG):
    # an attack's alert is looked for within 10 s of it
    waited = wait_until("the agent reading events", lambda: any(
        a.get("Operation") == "AgentStarted" and f"agent {current.agent} " in str(a.get("Message"))
        for a in alerts(guest)), 120, guest)
    print(f"the agent was reading events {waited:.1f} s after warden was found READY")
    yield current


def alerts(guest: GuestVM) -> list[dict[str, object]]:
    text = guest.run(f"cat {ALERTS}").stdout
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# Root in new mount, UTS, IPC and network namespaces that shares the VM's pid namespace (as a
# hostPID pod would): the strongest container attacker, since it can still name warden's pids.
# In a pid-namespaced container warden's processes are not even visible (ESRCH).
IN_CONTAINER = "unshare --mount --uts --ipc --net --fork /bin/bash -c {script}"
RAW_SOCKET = "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)'"
SLICE = "/sys/fs/cgroup/system.slice"
OWN_CGROUP = "mkdir -p /sys/fs/cgroup/attacker && echo $$ > /sys/fs/cgroup/attacker/cgroup.procs"

# (name, command template, what the alert must show: self-protection Operation or a seed PolicyName,
#  whether the attack applies to root in the VM too: the seed's policies select containers only)
ATTACKS = [
    ("kill -9 supervisor", "kill -9 {supervisor}", "signal", True),
    ("kill -STOP supervisor", "kill -STOP {supervisor}", "signal", True),
    ("kill -9 agent", "kill -9 {agent}", "signal", True),
    ("kill -STOP agent", "kill -STOP {agent}", "signal", True),
    ("ptrace attach supervisor",
     "python3 -c 'import ctypes,os,sys; l=ctypes.CDLL(None,use_errno=True); "
     "r=l.ptrace(16,{supervisor},0,0); e=ctypes.get_errno(); print(os.strerror(e)); sys.exit(r!=0)'",
     "ptrace", True),
    ("prlimit supervisor", "prlimit --pid {supervisor} --nofile=3:3", "rlimit", True),
    # SIGKILL routed through a pipe's owner (F_SETOWN + F_SETSIG + O_ASYNC), not kill(2): exits 0 only
    # if the supervisor died
    ("SIGIO owner signal to supervisor",
     "python3 -c 'import fcntl,os,sys,time; r,w=os.pipe(); fcntl.fcntl(r,fcntl.F_SETOWN,{supervisor}); "
     "fcntl.fcntl(r,10,9); fcntl.fcntl(r,fcntl.F_SETFL,os.O_ASYNC); os.write(w,b\"x\"); time.sleep(0.5); "
     "os.kill({supervisor},0); sys.exit(\"signal not delivered: not permitted\")'", "signal", True),
    ("bpftool link detach", "bpftool link detach id {link}", "bpf-command", True),
    ("bpf(BPF_OBJ_GET) on a pin", f"bpftool link show pinned {PINS}/self/links/self_task_kill", "pin-change", True),
    ("map update by id", "bpftool map update id {config_map} key 0 0 0 0 value " + " ".join(["0"] * 192),
     "map-write", True),
    ("engine map update by id", "bpftool map update {engine_config_update}", "map-write", True),
    ("file_guard's own map update by id", "bpftool map update {memo_update}", "map-write", True),
    ("rm pins", f"rm -rf {PINS}", "pin-change", True),
    ("umount bpffs", "umount /sys/fs/bpf", "bpffs-mount", True),
    ("mount over bpffs", "mount -t tmpfs none /sys/fs/bpf", "bpffs-mount", True),
    ("write /etc/warden", "echo 'gate: {{insecure_allow_sample: true}}' > /etc/warden/warden.yaml",
     "protected-write", True),
    ("delete /etc/warden config", "rm -f /etc/warden/warden.yaml", "protected-write", True),
    ("write the venv", "touch {venv}/evil", "protected-write", True),
    ("chown the config", "chown 65534 /etc/warden/warden.yaml", "protected-write", True),
    ("touch the config's times", "touch -c -d 2000-01-01 /etc/warden/warden.yaml", "protected-write", True),
    ("setcap in the installation",
     "python3 -c \"import os; os.setxattr('/etc/warden/warden.yaml', 'security.capability', "
     "b'\\x01\\x00\\x00\\x02' + (1 << 13).to_bytes(4, 'little') + bytes(12))\"", "protected-write", True),
    ("join the warden cgroup",
     "echo $$ > /sys/fs/cgroup/system.slice/warden.service/cgroup.procs", "cgroup-join", True),
    ("a cgroup inside warden's", "mkdir /sys/fs/cgroup/system.slice/warden.service/x", "cgroup-join", True),
    # From a cgroup of its own: were it allowed, the freeze would stop the test agent too (system.slice).
    ("freeze warden's parent cgroup", f"{OWN_CGROUP} && echo 1 > {SLICE}/cgroup.freeze; rc=$?; "
     f"echo 0 > {SLICE}/cgroup.freeze 2>/dev/null; exit $rc", "cgroup-control", True),
    ("a limit on warden's parent cgroup", f"echo max > {SLICE}/pids.max", "cgroup-control", True),
    ("renice the supervisor", "renice -n 19 -p {supervisor}", "scheduling", True),
    ("SCHED_IDLE for the agent", "chrt -i -p 0 {agent}", "scheduling", True),
    ("idle I/O class for the supervisor", "ionice -c 3 -p {supervisor}", "scheduling", True),
    ("pin the agent to one CPU", "taskset -p 1 {agent}", "scheduling", True),
    ("write /bin", "touch /bin/evil", "file-integrity-monitoring", False),
    ("open a raw socket", RAW_SOCKET, "net-raw-block", False),
    # issue 14: readOnly covers metadata, and raw covers packet sockets (test_hook_bypasses has them all)
    ("touch the times of a /bin file", "touch -c -d 2000-01-01 /bin/true", "file-integrity-monitoring", False),
    ("setcap a /bin binary",
     "python3 -c \"import os; os.setxattr('/bin/true', 'security.capability', "
     "b'\\x01\\x00\\x00\\x02' + (1 << 13).to_bytes(4, 'little') + bytes(12))\"",
     "file-integrity-monitoring", False),
    ("open an AF_PACKET dgram socket",
     "python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)'", "net-raw-block", False),
]


def attack(guest: GuestVM, command: str, *, container: bool) -> tuple[int, str]:
    if container:
        command = IN_CONTAINER.format(script=shlex.quote(command))
    result = guest.run(command, timeout=30)
    return result.returncode, result.stdout + result.stderr


def alerted(new: list[dict[str, object]], expected: str) -> bool:
    return any(a.get("PolicyName") == expected or (a.get("PolicyName") == "warden-self-protection"
                                                     and a.get("Operation") == expected) for a in new)


@pytest.mark.parametrize("container", [False, True], ids=["vm-root", "container-root"])
def test_every_attack_is_denied_and_alerted(guest: GuestVM, warden: Warden, container: bool) -> None:
    values = {"supervisor": warden.supervisor, "agent": warden.agent, "venv": f"{REPO_ROOT}/.venv",
              "link": warden.self_links["self_task_kill"], "config_map": warden.self_maps["self_config"],
              "engine_config_update": warden.engine_config_update, "memo_update": warden.memo_update}
    table = []
    for name, template, expected, in_vm in ATTACKS:
        if not (container or in_vm):
            continue
        before = len(alerts(guest))
        returncode, output = attack(guest, template.format(**values), container=container)
        seen = wait_until_alerted(guest, before, expected)
        table.append((name, returncode, "not permitted" in output, seen, output.strip()[-120:]))
    print(f"\n{'attack':32}denied  EPERM  alert")
    for name, rc, eperm, seen, _ in table:
        print(f"{name:32}{'yes' if rc else 'NO':8}{'yes' if eperm else 'no':7}{'yes' if seen else 'NO'}")
    failures = [row for row in table if row[1] == 0 or not row[3]]
    assert not failures, failures
    assert current_warden(guest) == warden  # the same processes, the same links and maps
    assert guest.run("cat /etc/warden/warden.yaml", check=True).stdout == config_json()
    assert "stopped" not in guest.run(f"grep State /proc/{warden.supervisor}/status", check=True).stdout
    assert is_ready(guest)


def wait_until_alerted(guest: GuestVM, before: int, expected: str) -> bool:
    try:
        wait_until(f"an alert for {expected}", lambda: alerted(alerts(guest)[before:], expected), 10, guest)
    except AssertionError:
        return False
    return True


def test_after_the_attacks_the_seed_proof_of_concept_still_holds(guest: GuestVM, warden: Warden) -> None:
    result = run_checks(guest, "mysql", {"app": "mysql"})
    print("\n" + "\n".join(f"{action:30} {outcome}" for action, outcome in result.items()))
    assert len(result) == 3 and all(outcome.startswith("denied") and "Operation not permitted" in outcome
                                    for outcome in result.values()), result


def test_moving_the_supervisor_out_of_its_cgroup_costs_a_restart_never_enforcement(
        guest: GuestVM, warden: Warden) -> None:
    """Not stopped on 6.1 (threat-model.md, section 7): no LSM hook sees which task a cgroup.procs write
    moves. Moved out, the supervisor is no longer warden: its own self-protection refuses it the pins,
    its health check fails, the watchdog is withheld and systemd replaces it; the new one adopts."""
    links = lsm_link_ids(guest)
    before = show(guest, "NRestarts")["NRestarts"]
    moved = guest.run(f"{OWN_CGROUP.replace('attacker', 'elsewhere')} && echo {warden.supervisor} > "
                      "/sys/fs/cgroup/elsewhere/cgroup.procs")
    assert moved.returncode == 0, moved
    wait_until("a new supervisor", lambda: show(guest, "NRestarts")["NRestarts"] != before, 120, guest)
    wait_until("warden.service READY", lambda: is_ready(guest), 300, guest)
    assert lsm_link_ids(guest) == links  # enforcement never left: the same kernel links
    status = warden_status(guest, ready=True)
    assert status["enforcement"]["adopted"] is True  # type: ignore[index]
    result = run_checks(guest, "mysql", {"app": "mysql"})
    assert all(outcome.startswith("denied") for outcome in result.values()), result


def test_pid1_still_stops_and_restarts_the_service_and_the_new_one_adopts(guest: GuestVM, warden: Warden) -> None:
    warden = current_warden(guest)  # the supervisor the previous test's restart started
    links = lsm_link_ids(guest)
    guest.run("systemctl stop warden.service", check=True)
    assert guest.run(f"test -d /proc/{warden.supervisor}").returncode != 0
    # Enforcement outlived the service: a process outside warden still cannot touch the pins.
    assert guest.run(f"rm -rf {PINS}").returncode != 0
    guest.run("systemctl start warden.service", check=True, timeout=300)
    restarted = current_warden(guest)
    assert restarted.supervisor != warden.supervisor
    assert restarted.self_links == warden.self_links  # the same kernel links: nothing was detached
    assert lsm_link_ids(guest) == links
    status = warden_status(guest, ready=True)
    assert status["enforcement"]["adopted"] is True  # type: ignore[index]
    assert status["engine"]["self_protection"]["adopted"] is True  # type: ignore[index]


def test_teardown_from_the_warden_cgroup_leaves_nothing_pinned(guest: GuestVM, warden: Warden) -> None:
    # From outside warden's cgroup, teardown is refused like any other attack on the pins.
    engine = warden_status(guest, ready=True)["engine"]
    assert isinstance(engine, dict), engine
    ours = {link["link_id"] for link in engine["links"]} | set(current_warden(guest).self_links.values())
    refused = guest.run(f"{WARDEN} teardown")
    assert refused.returncode == 1 and "not permitted" in refused.stderr, refused.stderr
    assert ours <= lsm_link_ids(guest)
    # Inside it: the unit itself, its ExecStart replaced by a runtime drop-in while it is stopped (what
    # root with systemd's API can do: threat-model.md, section 7).
    guest.run("systemctl stop warden.service", check=True)
    guest.run(f"mkdir -p {DROPIN} && printf '[Service]\\nType=oneshot\\nRestart=no\\nWatchdogSec=0\\n"
              f"ExecStart=\\nExecStart={WARDEN} teardown\\n' > {DROPIN}/teardown.conf && systemctl daemon-reload",
              check=True)
    done = guest.run("systemctl start warden.service", timeout=120)
    journal = guest.run("journalctl -u warden.service -n 300 --no-pager -o cat").stdout
    assert done.returncode == 0, journal
    assert f"removed {PINS}/links/" in journal and f"removed {PINS}/self/links/self_task_kill" in journal, journal
    listing = guest.run(f"ls -A {PINS}")
    assert listing.returncode != 0 and "No such file or directory" in listing.stderr, listing.stdout
    assert not ours & lsm_link_ids(guest)  # every warden program detached: the engine's and self_guard's
    assert guest.run("test -e /run/warden/engine.json").returncode != 0
