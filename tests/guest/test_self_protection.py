"""Self-protection against root in the VM and in a container: every attack is denied and alerted.

A stand-in for the warden service runs as the real unit name (warden.service) under systemd: its
main process loads and arms self_guard from inside the warden cgroup, exactly as the supervisor
does, then a child ("agent") drains the self_events ring buffer into a file on the shared work
directory. The attacks then come from outside that cgroup: from the test agent (root in the VM)
and from a process in fresh mount and pid namespaces (root in a container).
"""

from __future__ import annotations

import json
import shlex
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.guest.vm import GuestVM

PINS = "/sys/fs/bpf/warden"

STAND_IN = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from bpf.loader import Libbpf, MapHandle, RingBuffer
    from bpf.self_protect import SelfGuard, SelfProtectionConfig, decode_self_event

    events_out, ready_marker = sys.argv[1], sys.argv[2]
    guard = SelfGuard()
    report = guard.load_or_adopt(SelfProtectionConfig())
    agent = os.fork()
    if agent == 0:
        lib = Libbpf()
        events = MapHandle.open_pinned(lib, guard.pin_dir / "self_events")
        def write(raw):
            with open(events_out, "a") as out:
                out.write(json.dumps(decode_self_event(raw).__dict__) + "\\n")
        ring = RingBuffer(lib, events.fd, write)
        while True:
            ring.poll(200)
    Path(ready_marker).write_text(json.dumps(
        {"supervisor": os.getpid(), "agent": agent, "adopted": report.adopted,
         "links": report.link_ids, "maps": report.map_ids, "inodes": report.protected_inodes}))
    while True:
        time.sleep(3600)
""")


@dataclass(frozen=True)
class Warden:
    supervisor: int
    agent: int
    links: dict[str, int]
    maps: dict[str, int]
    events_file: str


def start_stand_in(guest: GuestVM, name: str) -> dict[str, object]:
    script = guest.write_shared("stand_in.py", STAND_IN)
    ready = f"/testbed/scratch/{name}.ready"
    events = "/testbed/scratch/events.jsonl"
    guest.run(f"rm -f {ready}", check=True)
    errors = f"/testbed/scratch/{name}.stderr"
    command = shlex.quote(f"exec {guest.venv_python} {script} {events} {ready} 2>{errors}")
    guest.run(
        f"systemd-run --unit=warden --property=Type=simple --setenv=PYTHONDONTWRITEBYTECODE=1 /bin/sh -c {command}",
        check=True,
    )
    host_ready = guest.host_path(ready)
    deadline = time.monotonic() + 120
    while not host_ready.exists():
        status = guest.run("systemctl is-active warden.service").stdout.strip()
        if status == "failed" or time.monotonic() > deadline:
            stderr = guest.run(f"cat {errors}").stdout
            raise AssertionError(f"stand-in warden did not arm ({status}):\n{stderr}")
        time.sleep(0.5)
    return dict(json.loads(host_ready.read_text()), events_file=events)


@pytest.fixture(scope="module")
def warden(guest: GuestVM) -> Iterator[Warden]:
    guest.run("mkdir -p /etc/warden /run/warden && echo 'gate: {}' > /etc/warden/warden.yaml", check=True)
    info = start_stand_in(guest, "first")
    yield Warden(
        supervisor=int(str(info["supervisor"])),
        agent=int(str(info["agent"])),
        links=dict(info["links"]),  # type: ignore[call-overload]
        maps=dict(info["maps"]),  # type: ignore[call-overload]
        events_file=str(info["events_file"]),
    )


def events(guest: GuestVM, warden: Warden) -> list[dict[str, object]]:
    path = guest.host_path(warden.events_file)
    time.sleep(0.5)  # the agent polls every 200 ms
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def alive(guest: GuestVM, pid: int) -> bool:
    return guest.run(f"test -d /proc/{pid}").returncode == 0


# Root in new mount, UTS, IPC and network namespaces that shares the VM's pid namespace (as a
# hostPID pod would): the strongest container attacker, since it can still name warden's pids.
# In a pid-namespaced container warden's processes are not even visible (ESRCH).
IN_CONTAINER = "unshare --mount --uts --ipc --net --fork /bin/bash -c {script}"


def attack(guest: GuestVM, command: str, *, container: bool) -> tuple[int, str]:
    if container:
        command = IN_CONTAINER.format(script=shlex.quote(command))
    result = guest.run(command, timeout=30)
    return result.returncode, result.stdout + result.stderr


ATTACKS = [
    # (name, command template, expected attack kind in the event)
    ("kill -9 supervisor", "kill -9 {supervisor}", "signal"),
    ("kill -STOP supervisor", "kill -STOP {supervisor}", "signal"),
    ("kill -9 agent", "kill -9 {agent}", "signal"),
    ("kill -TERM agent", "kill -TERM {agent}", "signal"),
    ("ptrace attach supervisor",
     "python3 -c 'import ctypes,os,sys; l=ctypes.CDLL(None,use_errno=True); "
     "r=l.ptrace(16,{supervisor},0,0); e=ctypes.get_errno(); print(os.strerror(e)); sys.exit(r!=0)'",
     "ptrace"),
    ("bpftool link detach", "bpftool link detach id {link}", "bpf-command"),
    ("bpf(BPF_OBJ_GET) on a pin", f"bpftool link show pinned {PINS}/self/links/self_task_kill", "pin-change"),
    ("map update by id", "bpftool map update id {config_map} key 0 0 0 0 value " + " ".join(["0"] * 192),
     "map-write"),
    ("rm pins", f"rm -rf {PINS}", "pin-change"),
    ("umount bpffs", "umount /sys/fs/bpf", "bpffs-mount"),
    ("mount over bpffs", "mount -t tmpfs none /sys/fs/bpf", "bpffs-mount"),
    ("write /etc/warden", "echo 'gate: {{insecure_allow_sample: true}}' > /etc/warden/warden.yaml",
     "protected-write"),
    ("delete /etc/warden config", "rm -f /etc/warden/warden.yaml", "protected-write"),
    ("write the venv", "touch {venv}/evil", "protected-write"),
    ("join the warden cgroup",
     "echo $$ > /sys/fs/cgroup/system.slice/warden.service/cgroup.procs", "cgroup-join"),
]


@pytest.mark.parametrize("container", [False, True], ids=["vm-root", "container-root"])
def test_every_attack_is_denied_and_alerted(guest: GuestVM, warden: Warden, container: bool) -> None:
    venv = guest.venv_python.rsplit("/bin/", 1)[0]
    values = {"supervisor": warden.supervisor, "agent": warden.agent, "venv": venv,
              "link": warden.links["self_task_kill"], "config_map": warden.maps["self_config"]}
    table = []
    for name, template, kind in ATTACKS:
        before = len(events(guest, warden))
        returncode, output = attack(guest, template.format(**values), container=container)
        new = events(guest, warden)[before:]
        seen = any(e["attack"] == kind for e in new)
        table.append((name, returncode, "Operation not permitted" in output, seen, output.strip()[-120:]))
    print("\nattack                          denied  EPERM  event")
    for name, rc, eperm, seen, _ in table:
        print(f"{name:32}{'yes' if rc else 'NO':8}{'yes' if eperm else 'no':7}{'yes' if seen else 'NO'}")
    failures = [row for row in table if row[1] == 0 or not row[3]]
    assert not failures, failures
    assert alive(guest, warden.supervisor) and alive(guest, warden.agent)
    assert guest.run("cat /etc/warden/warden.yaml", check=True).stdout == "gate: {}\n"
    state = guest.run(f"grep State /proc/{warden.supervisor}/status", check=True).stdout
    assert "stopped" not in state


def test_pid1_still_stops_and_restarts_the_service_and_the_new_one_adopts(
    guest: GuestVM, warden: Warden
) -> None:
    guest.run("systemctl stop warden.service", check=True)
    assert not alive(guest, warden.supervisor)
    # Enforcement outlived the service: a process outside warden still cannot touch the pins.
    assert guest.run(f"rm -rf {PINS}").returncode != 0
    guest.run("systemctl reset-failed warden.service || true")
    info = start_stand_in(guest, "second")
    assert info["adopted"] is True
    assert info["links"] == warden.links  # the same kernel links: nothing was detached
