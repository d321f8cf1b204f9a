"""The BPF-LSM engine against the real 6.1 kernel: the seed policies, events, the pinned failsafe,
adoption without a window, a 10,000-rule swap, a make-before-break upgrade, the CLI and teardown.

One guest for the whole module (a boot is the expensive part); tests run in file order and build on
each other's state, as the engine's lifecycle does: load -> loader killed -> adopt -> swap -> upgrade
-> teardown.

Scopes used: the host (this VM's mount namespace; no host policies, so unrestricted), a registered
container "mysql" (labels app=mysql; its own mount and pid namespaces), and an unregistered mount
namespace, which gets the rules of every container (file-integrity-monitoring, net-raw-block).
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.guest.vm import REPO_ROOT, GuestVM

SEED = f"{REPO_ROOT}/tests/data/policies/seed"
PY = f"{REPO_ROOT}/.venv/bin/python"
WARDEN = f"{REPO_ROOT}/.venv/bin/warden"
MYSQL_FILE = "/var/lib/mysql/any-file"
# file_guard 20 (open, permission, 9 path hooks, setattr, setxattr, removexattr, ioctl, ioctl_compat,
# sb_mount, move_mount, sb_pivotroot), exec_guard 3 (bprm_check, mmap_file, file_mprotect), net_guard 3
# (create, sendmsg, connect), cap_guard 1, scope_guard 6 (task_alloc; confinement: ptrace_access_check,
# bpf, kernel_read_file, kernel_load_data, file_open for sysctls)
WARDEN_LINKS = 33

LOADER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from bpf.kernel.engine import Engine
    from bpf.policy.files import load_policy_paths

    containers = json.loads(sys.argv[1])
    policies = load_policy_paths([Path(p) for p in sys.argv[3:]])
    engine = Engine()
    report = engine.load_or_adopt(policies)
    digests = {c["name"]: engine.register_container(c["name"], c["labels"], c["pid_ns"], c["mnt_ns"])
               for c in containers}
    result = {"pid": os.getpid(), "mode": report.mode, "link_ids": report.link_ids, "digests": digests,
              "health": engine.health(), "added": report.added, "removed": report.removed,
              "timings": report.timings_s}
    Path(sys.argv[2]).write_text(json.dumps(result))
    time.sleep(1_000_000)  # a long-lived loader, until SIGKILL
""")

# A probe in the unregistered namespace: tries a write the rules forbid and a read they allow, as fast
# as the shell goes, and counts wrong answers, until /tmp/probe.stop appears.
PROBE = textwrap.dedent("""
    a=0; bad_write=0; bad_read=0
    while [ ! -e /tmp/probe.stop ]; do
      a=$((a+1))
      if { echo x > /bin/probe-target; } 2>/dev/null; then bad_write=$((bad_write+1)); fi
      if ! { read -r _ < /bin/probe-read; } 2>/dev/null; then bad_read=$((bad_read+1)); fi
    done
    echo "$a $bad_write $bad_read" > /tmp/probe.out
""")


@dataclass(frozen=True)
class Container:
    pid: int
    pid_ns: int
    mnt_ns: int

    def run(self, guest: GuestVM, command: str) -> tuple[int, str]:
        result = guest.run(f"nsenter -t {self.pid} -m -p -- sh -c {json.dumps(command)}")
        return result.returncode, result.stdout + result.stderr


def in_unregistered(guest: GuestVM, command: str) -> tuple[int, str]:
    result = guest.run(f"unshare -m -- sh -c {json.dumps(command)}")
    return result.returncode, result.stdout + result.stderr


def on_host(guest: GuestVM, command: str) -> tuple[int, str]:
    result = guest.run(f"sh -c {json.dumps(command)}")
    return result.returncode, result.stdout + result.stderr


Runner = Callable[[str], tuple[int, str]]


def container_scopes(guest: GuestVM, mysql: Container) -> list[Runner]:
    """Run a command in the unregistered namespace, or in the registered mysql container."""
    return [lambda c: in_unregistered(guest, c), lambda c: mysql.run(guest, c)]


def start_loader(guest: GuestVM, containers: list[Container], ready: str, env: str = "") -> int:
    script = guest.write_shared(f"loader-{time.monotonic_ns()}.py", LOADER)
    spec = json.dumps([{"name": "mysql", "labels": {"app": "mysql"}, "pid_ns": c.pid_ns, "mnt_ns": c.mnt_ns}
                       for c in containers])
    guest.run(f"rm -f {ready}", check=True)
    started = guest.run(f"cd {REPO_ROOT} && {env} setsid nohup {PY} {script} '{spec}' {ready} {SEED} "
                        f"> {ready}.log 2>&1 & echo $!", check=True)
    assert started.stdout.strip()
    deadline = time.monotonic() + 240
    while guest.run(f"test -s {ready}").returncode != 0:
        log = guest.run(f"cat {ready}.log").stdout
        assert time.monotonic() < deadline and "Traceback" not in log, log
        time.sleep(0.5)
    pid = int(read_result(guest, ready)["pid"])
    assert guest.run(f"kill -0 {pid}").returncode == 0, "the loader must still be running"
    return pid


def read_result(guest: GuestVM, ready: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(guest.run(f"cat {ready}", check=True).stdout)
    return data


def warden_link_ids(guest: GuestVM) -> set[int]:
    links = json.loads(guest.run("bpftool -j link list", check=True).stdout)
    progs = {p["id"]: p["name"] for p in json.loads(guest.run("bpftool -j prog list", check=True).stdout)}
    return {link["id"] for link in links if progs.get(link.get("prog_id"), "").startswith("warden_")}


# Drains the engine's pinned ring buffer (not the agent's alert file: no agent runs in this module).
READ_ALERTS = textwrap.dedent("""
    import json
    from bpf.kernel.engine import Engine
    for alert in Engine().read_alerts():
        print(json.dumps(alert.to_dict()))
""")


def read_alerts(guest: GuestVM) -> list[dict[str, Any]]:
    return [json.loads(line) for line in guest.python(READ_ALERTS, check=True).stdout.splitlines()]


@pytest.fixture(scope="module")
def mysql(guest: GuestVM) -> Iterator[Container]:
    guest.run("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf", check=True)
    guest.run(f"mkdir -p /var/lib/mysql && echo secret > {MYSQL_FILE} && echo ok > /bin/probe-read "
              "&& echo original > /bin/probe-target", check=True)
    guest.run("setsid unshare -m -p -f --mount-proc sleep 100001 >/dev/null 2>&1 &", check=True)
    pid = 0
    for _ in range(100):
        found = guest.run("pgrep -f '^sleep 100001'")
        if found.returncode == 0:
            pid = int(found.stdout.split()[0])
            break
        time.sleep(0.1)
    assert pid, "container process did not start"
    pid_ns = int(guest.run(f"stat -Lc %i /proc/{pid}/ns/pid", check=True).stdout)
    mnt_ns = int(guest.run(f"stat -Lc %i /proc/{pid}/ns/mnt", check=True).stdout)
    yield Container(pid, pid_ns, mnt_ns)
    guest.run(f"kill {pid}")


@pytest.fixture(scope="module")
def first_load(guest: GuestVM, mysql: Container) -> dict[str, Any]:
    pid = start_loader(guest, [mysql], "/run/loader1.json")
    result = read_result(guest, "/run/loader1.json")
    # The failsafe: every test below runs after the loader was SIGKILLed.
    guest.run(f"kill -9 {pid}", check=True)
    for _ in range(50):
        if guest.run(f"kill -0 {pid}").returncode != 0:
            break
        time.sleep(0.1)
    assert guest.run(f"kill -0 {pid}").returncode != 0, "loader survived SIGKILL"
    return result


# -- the seed proof of concept (after SIGKILL of the loader) ------------------------------------------


def test_first_load_is_fresh_and_healthy(first_load: dict[str, Any]) -> None:
    assert first_load["mode"] == "loaded"
    assert first_load["health"] == []
    assert isinstance(first_load["digests"], dict) and first_load["digests"]["mysql"].startswith("sha256:")
    assert len(first_load["link_ids"]) == WARDEN_LINKS


def test_raw_sockets_are_refused_in_containers_only(guest: GuestVM, first_load: dict[str, Any],
                                                    mysql: Container) -> None:
    raw = f"{PY} -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)'"
    tcp = f"{PY} -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM)'"
    for where in container_scopes(guest, mysql):
        code, out = where(raw)
        assert code != 0 and "Operation not permitted" in out
        assert where(tcp)[0] == 0  # only raw is blocked
    assert on_host(guest, raw)[0] == 0


FIM_CHANGES = {
    "write": "echo x > {d}/victim",
    "create": "touch {d}/new-file",
    "delete": "rm -f {d}/victim",
    "rename": "mv {d}/victim {d}/renamed",
    "chmod": "chmod 700 {d}/victim",
    "mkdir": "mkdir {d}/new-dir",
    "truncate": "truncate -s 0 {d}/victim",  # refused at file_open (opened for writing)
    "truncate-path": PY + " -c \"import os; os.truncate('{d}/victim', 0)\"",  # path_truncate, no open
    "link": "ln {d}/victim /tmp/hard-link",
}


@pytest.mark.parametrize("change", sorted(FIM_CHANGES))
@pytest.mark.parametrize("directory", ["/bin", "/sbin"])
def test_fim_refuses_changes_in_containers_and_allows_them_on_the_host(
        guest: GuestVM, first_load: dict[str, Any], mysql: Container, change: str, directory: str) -> None:
    guest.run(f"rm -rf {directory}/new-dir {directory}/new-file {directory}/renamed /tmp/hard-link; "
              f"echo v > {directory}/victim", check=True)
    command = FIM_CHANGES[change].format(d=directory)
    for where in container_scopes(guest, mysql):
        code, out = where(command)
        assert code != 0 and "Operation not permitted" in out, (change, out)
        assert guest.run(f"cat {directory}/victim", check=True).stdout == "v\n"
        assert where(f"cat {directory}/victim")[0] == 0  # reading still works
    code, out = on_host(guest, command)
    assert code == 0, out


def test_mysql_data_is_refused_in_the_mysql_container_only(guest: GuestVM, first_load: dict[str, Any],
                                                           mysql: Container) -> None:
    code, out = mysql.run(guest, f"cat {MYSQL_FILE}")
    assert code != 0 and "Operation not permitted" in out
    assert mysql.run(guest, "ls /var/lib/mysql/")[0] != 0  # the directory itself is covered too
    # an unregistered container could be mysql: the rules of every container policy apply (fail closed)
    assert in_unregistered(guest, f"cat {MYSQL_FILE}")[0] != 0
    assert on_host(guest, f"cat {MYSQL_FILE}") == (0, "secret\n")


def test_events_carry_kubearmor_alert_fields(guest: GuestVM, first_load: dict[str, Any],
                                             mysql: Container) -> None:
    mysql.run(guest, f"cat {MYSQL_FILE}")
    alerts = read_alerts(guest)
    mysql_alerts = [a for a in alerts if a["PolicyName"] == "block-mysql-data-access"]
    assert mysql_alerts, alerts[-5:]
    a = mysql_alerts[-1]
    assert (a["ContainerName"], a["Labels"], a["Operation"], a["Resource"], a["Action"], a["Result"],
            a["Enforcer"], a["Type"]) == ("mysql", "app=mysql", "File", MYSQL_FILE, "Block", "Permission denied",
                                          "BPFLSM", "MatchedPolicy")
    assert a["Source"].endswith("/cat") and a["Data"] == "lsm=FILE_OPEN" and a["Scope"] >= 16
    raw = [a for a in alerts if a["PolicyName"] == "net-raw-block"]
    assert raw and raw[0]["Operation"] == "Network" and "type=SOCK_RAW" in raw[0]["Resource"]
    assert {r["ContainerName"] for r in raw} == {"", "mysql"}  # unregistered: no name, never a placeholder
    # KubeArmor numbering: PID/PPID in the process's own pid namespace, the VM's in HostPID/HostPPID.
    # mysql runs in its own pid namespace (unshare -p, entered with nsenter): small numbers there, and a
    # parent outside it (nsenter) reads as 0; the unregistered namespace shares the VM's pid namespace.
    assert 0 < a["PID"] < a["HostPID"] and a["PPID"] < a["HostPPID"], a
    unregistered = [r for r in raw if r["ContainerName"] == ""]
    assert all(r["PID"] == r["HostPID"] and r["PPID"] == r["HostPPID"] for r in unregistered), unregistered
    fim = {a["Data"] for a in alerts if a["PolicyName"] == "file-integrity-monitoring"}
    assert {"lsm=FILE_OPEN", "lsm=FILE_UNLINK", "lsm=FILE_RENAME", "lsm=FILE_CHMOD", "lsm=FILE_MKDIR",
            "lsm=FILE_LINK", "lsm=FILE_TRUNCATE"} <= fim
    assert all(a["Result"] == "Permission denied" and a["Action"] == "Block" for a in alerts)


# -- failsafe, adoption, swap, upgrade ---------------------------------------------------------------


def start_probe(guest: GuestVM) -> None:
    script = guest.write_shared("probe.sh", PROBE)
    guest.run("rm -f /tmp/probe.stop /tmp/probe.out", check=True)
    guest.run(f"setsid unshare -m sh {script} >/dev/null 2>&1 &", check=True)
    time.sleep(1)


def stop_probe(guest: GuestVM) -> tuple[int, int, int]:
    guest.run("touch /tmp/probe.stop", check=True)
    for _ in range(100):
        out = guest.run("cat /tmp/probe.out")
        if out.returncode == 0 and out.stdout.strip():
            attempts, bad_write, bad_read = map(int, out.stdout.split())
            return attempts, bad_write, bad_read
        time.sleep(0.2)
    raise AssertionError("probe did not stop")


def test_a_new_loader_adopts_the_pins_without_a_window(guest: GuestVM, first_load: dict[str, Any],
                                                       mysql: Container) -> None:
    before = warden_link_ids(guest)
    assert before == set(first_load["link_ids"].values())
    start_probe(guest)
    pid = start_loader(guest, [mysql], "/run/loader2.json")
    attempts, bad_write, bad_read = stop_probe(guest)
    guest.run(f"kill -9 {pid}")
    second = read_result(guest, "/run/loader2.json")
    assert second["mode"] == "adopted" and second["health"] == []
    assert second["link_ids"] == first_load["link_ids"]
    assert warden_link_ids(guest) == before  # same links: nothing detached or reloaded
    assert second["digests"] == first_load["digests"]
    assert attempts > 20 and bad_write == 0 and bad_read == 0, (attempts, bad_write, bad_read)


def big_policy(tag: str, count: int) -> str:
    paths = "\n".join(f"      - path: /data/{tag}/d{i // 100}/f{i}" for i in range(count))
    return textwrap.dedent(f"""
        apiVersion: security.kubearmor.com/v1
        kind: KubeArmorPolicy
        metadata:
          name: bulk-{tag}
        spec:
          selector:
            matchLabels:
              kubearmor.io/container.name: ".*"
          action: Block
          file:
            matchPaths:
        """) + paths + "\n"


SWAP = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from bpf.kernel.engine import Engine
    from bpf.policy.files import load_policy_paths
    seed = Path(sys.argv[1])
    engine = Engine()
    out = []
    for bulk in sys.argv[2:]:
        report = engine.load_or_adopt(load_policy_paths([seed, Path(bulk)]))
        out.append({"mode": report.mode, "added": report.added, "removed": report.removed,
                    "counts": report.rule_counts, "sync_s": report.timings_s["sync"], "health": engine.health()})
    print(json.dumps(out))
""")


def load_with_seed(guest: GuestVM, policy: str) -> dict[str, Any]:
    """Load the seed policies and `policy` (adopting the pins); the engine's report, drained of alerts."""
    script = guest.write_shared("swap.py", SWAP)
    loaded: dict[str, Any] = json.loads(guest.run(f"cd {REPO_ROOT} && {PY} {script} {SEED} {policy}",
                                                  timeout=600, check=True).stdout)[-1]
    read_alerts(guest)  # drain what the tests before left
    return loaded


def alerts_by_path(guest: GuestVM) -> dict[str, list[str]]:
    """The alerts waiting in the ring buffer, as "policy:action" per resource."""
    by_path: dict[str, list[str]] = {}
    for alert in read_alerts(guest):
        by_path.setdefault(alert["Resource"], []).append(f"{alert['PolicyName']}:{alert['Action']}")
    return by_path


def test_swapping_10000_rules_never_gives_a_wrong_answer(guest: GuestVM, first_load: dict[str, Any]) -> None:
    a = guest.write_shared("bulk-a.yaml", big_policy("a", 10_000))
    b = guest.write_shared("bulk-b.yaml", big_policy("b", 10_000))
    guest.run("mkdir -p /data/a/d7 /data/b/d7 && echo a > /data/a/d7/f777 && echo b > /data/b/d7/f777", check=True)
    script = guest.write_shared("swap.py", SWAP)
    guest.run(f"cd {REPO_ROOT} && {PY} {script} {SEED} {a}", timeout=600, check=True)  # 10,000 rules in
    assert in_unregistered(guest, "cat /data/a/d7/f777")[0] != 0
    assert in_unregistered(guest, "cat /data/b/d7/f777") == (0, "b\n")
    start_probe(guest)
    swapped = guest.run(f"cd {REPO_ROOT} && {PY} {script} {SEED} {b}", timeout=600, check=True)
    attempts, bad_write, bad_read = stop_probe(guest)
    report = json.loads(swapped.stdout)[-1]
    assert report["mode"] == "adopted" and report["health"] == []
    assert report["counts"]["any-container"] == 10_004  # the bulk policy and every seed rule (the union)
    assert report["added"] >= 10_000 and report["removed"] >= 10_000
    assert attempts > 20 and bad_write == 0 and bad_read == 0, (attempts, bad_write, bad_read)
    assert in_unregistered(guest, "cat /data/a/d7/f777") == (0, "a\n")
    assert in_unregistered(guest, "cat /data/b/d7/f777")[0] != 0


DEEP_POLICIES = textwrap.dedent("""
    apiVersion: security.kubearmor.com/v1
    kind: KubeArmorPolicy
    metadata:
      name: audit-deep
    spec:
      selector:
        matchLabels:
          kubearmor.io/container.name: ".*"
      action: Audit
      file:
        matchDirectories:
          - dir: /data/deep/x/y/
            recursive: true
    ---
    apiVersion: security.kubearmor.com/v1
    kind: KubeArmorPolicy
    metadata:
      name: block-deep
    spec:
      selector:
        matchLabels:
          kubearmor.io/container.name: ".*"
      action: Block
      file:
        matchPaths:
          - path: /data/deep/x/y/z/leaf
        matchDirectories:
          - dir: /data/plain/
""")

def test_deep_rules_jumps_and_one_decision_per_overlay_open(guest: GuestVM, first_load: dict[str, Any]) -> None:
    """Rules five components down, reached by jumps over prefixes without rules ("/" -> "/data/deep/x/y/"
    -> "/data/deep/x/y/z/"); on the overlay root every open is decided once, not again for the real
    file behind it; a regular file is not the directory a directory rule names."""
    policy = guest.write_shared("deep.yaml", DEEP_POLICIES)
    guest.run("mkdir -p /data/deep/x/y/z && echo leaf > /data/deep/x/y/z/leaf && echo other > /data/deep/x/y/z/other"
              " && echo beside > /data/deep/x/beside && echo plain > /data/plain", check=True)
    assert guest.run("stat -f -c %T /data/deep").stdout.strip() == "overlayfs"
    loaded = load_with_seed(guest, policy)
    assert loaded["mode"] == "adopted" and loaded["health"] == []
    assert in_unregistered(guest, "cat /data/deep/x/y/z/leaf")[0] != 0
    assert in_unregistered(guest, "cat /data/deep/x/y/z/other") == (0, "other\n")
    assert in_unregistered(guest, "cat /data/deep/x/beside") == (0, "beside\n")
    assert in_unregistered(guest, "cat /data/plain") == (0, "plain\n")
    assert on_host(guest, "cat /data/deep/x/y/z/leaf") == (0, "leaf\n")
    by_path = alerts_by_path(guest)
    assert by_path.get("/data/deep/x/y/z/leaf") == ["block-deep:Block"]
    assert by_path.get("/data/deep/x/y/z/other") == ["audit-deep:Audit"]  # once, not twice
    assert "/data/deep/x/beside" not in by_path and "/data/plain" not in by_path


def name_of_length(n: int) -> str:
    """A name whose bytes all differ from their neighbours', so a misplaced byte changes the path."""
    return "".join(chr(ord("a") + i % 26) for i in range(n))


NAME_LENGTHS = [*range(1, 42), 100]  # 1-31: stored inside the dentry; 32 and more: read by the kernel
CHAIN = "/data/names/chain/" + "/".join(name_of_length(n) for n in (1, 9, 17, 25, 31, 32, 3, 8, 16, 24, 7)) + "/leaf"
LONG = "/data/long/" + "/".join(["L" * 250] * 5) + "/f"  # 1,280 bytes: longer than the walk's buffer
LONGISH = "/data/long/" + "/".join(["M" * 250] * 2) + "/f"  # 518 bytes: longer than any rule
DEEP = "/data/deep40/" + "d/" * 40 + "f"  # 42 components: deeper than any rule
FREE = "/data/free/" + "/".join(["L" * 250] * 5) + "/f"  # no rule: what the kernel allows, warden allows

PATHS_POLICIES = textwrap.dedent("""
    apiVersion: security.kubearmor.com/v1
    kind: KubeArmorPolicy
    metadata:
      name: audit-names
    spec:
      selector:
        matchLabels:
          kubearmor.io/container.name: ".*"
      action: Audit
      file:
        matchDirectories:
          - dir: /data/names/
            recursive: true
    ---
    apiVersion: security.kubearmor.com/v1
    kind: KubeArmorPolicy
    metadata:
      name: block-paths
    spec:
      selector:
        matchLabels:
          kubearmor.io/container.name: ".*"
      action: Block
      file:
        matchPaths:
          {paths}
        matchDirectories:
          - dir: /data/long/
            recursive: true
          - dir: /data/deep40/
            recursive: true
""")


def test_names_of_every_length_long_and_deep_paths_and_mount_crossings(guest: GuestVM,
                                                                        first_load: dict[str, Any]) -> None:
    """The walk writes each name in place, leaf to root: names of every length up to 41 bytes (short
    ones copied from the dentry in words, longer ones read by the kernel) land byte for byte where they
    belong; a path longer than the walk's buffer, or longer or deeper than any rule, is still matched by
    the directory rules on its root side; a path on another mount is found across the mount point."""
    blocked = [f"/data/names/{name_of_length(n)}" for n in NAME_LENGTHS if n % 2]
    audited = [f"/data/names/{name_of_length(n)}" for n in NAME_LENGTHS if not n % 2]
    blocked += [CHAIN, "/data/mnt/sub/secret"]
    paths = "\n".join(f"      - path: {p}" for p in blocked).lstrip()
    policy = guest.write_shared("paths.yaml", PATHS_POLICIES.format(paths=paths))
    files = [*blocked, *audited, LONG, LONGISH, DEEP, FREE, "/data/mnt/sub/other"]
    guest.run("mkdir -p /data/mnt && mount -t tmpfs warden-test /data/mnt", check=True)
    for path in files:
        guest.run(f"mkdir -p {path.rsplit('/', 1)[0]} && echo {len(path)} > {path}", check=True)
    assert load_with_seed(guest, policy)["health"] == []
    for path in files:
        status, out = in_unregistered(guest, f"cat {path}")
        if path in blocked or path in (LONG, LONGISH, DEEP):
            assert status != 0 and "Operation not permitted" in out, (path, out)
        else:
            assert (status, out) == (0, f"{len(path)}\n"), path
    by_path = alerts_by_path(guest)
    truncated = {r: by_path.pop(r) for r in list(by_path) if r.startswith(("/data/long", "/data/deep40"))}
    for path in blocked:
        assert by_path.get(path) == ["block-paths:Block"], path
    for path in audited:
        assert by_path.get(path) == ["audit-names:Audit"], path
    assert set(by_path) == set(blocked) | set(audited)
    # the paths that fit no rule are shown as far as they fit: the directory that matched, and below
    assert sum(map(len, truncated.values())) == 3 and all(len(r) <= 255 for r in truncated), truncated
    guest.run("umount /data/mnt", check=True)


def test_upgrade_is_make_before_break(guest: GuestVM, first_load: dict[str, Any], mysql: Container) -> None:
    # A "new version" of file_guard: same programs, different object bytes (so a different digest).
    guest.run(f"mkdir -p /run/objs2 && cp {REPO_ROOT}/build/bpf/*.bpf.o /run/objs2/ "
              "&& printf '\\0\\0\\0\\0\\0\\0\\0\\0' >> /run/objs2/file_guard.bpf.o", check=True)
    before = warden_link_ids(guest)
    start_probe(guest)
    pid = start_loader(guest, [mysql], "/run/loader3.json", env="WARDEN_BPF_DIR=/run/objs2")
    attempts, bad_write, bad_read = stop_probe(guest)
    guest.run(f"kill -9 {pid}")
    third = read_result(guest, "/run/loader3.json")
    assert third["mode"] == "mixed" and third["health"] == []
    links: dict[str, int] = third["link_ids"]
    old: dict[str, int] = first_load["link_ids"]
    assert all((links[k] != old[k]) == k.startswith("file_guard/") for k in old)
    after = warden_link_ids(guest)
    assert len(after) == WARDEN_LINKS and after != before  # the old file_guard links are gone
    assert attempts > 20 and bad_write == 0 and bad_read == 0, (attempts, bad_write, bad_read)
    assert mysql.run(guest, f"cat {MYSQL_FILE}")[0] != 0


REGISTRY = textwrap.dedent("""
    import json, subprocess, sys
    from pathlib import Path
    from bpf.kernel.engine import Engine
    from bpf.policy.files import load_policy_paths
    pid, pid_ns, mnt_ns = map(int, sys.argv[2:5])
    cat = ["nsenter", "-t", str(pid), "-m", "-p", "--", "cat", "/var/lib/mysql/any-file"]
    engine = Engine()
    mode = engine.load_or_adopt(load_policy_paths([Path(sys.argv[1])])).mode
    engine.read_alerts()

    def scope_of_refusal():
        code = subprocess.run(cat, capture_output=True).returncode
        return code, sorted({a.ContainerName for a in engine.read_alerts()})

    engine.unregister_container(pid_ns, mnt_ns)
    after_unregister = scope_of_refusal()
    digest = engine.register_container("mysql", {"app": "mysql"}, pid_ns, mnt_ns)
    after_register = scope_of_refusal()
    print(json.dumps([mode, after_unregister, after_register, digest, engine.health()]))
""")


def test_unregister_and_register_a_container(guest: GuestVM, first_load: dict[str, Any],
                                             mysql: Container) -> None:
    script = guest.write_shared("registry.py", REGISTRY)
    out = guest.run(f"cd {REPO_ROOT} && WARDEN_BPF_DIR=/run/objs2 {PY} {script} {SEED} {mysql.pid} "
                    f"{mysql.pid_ns} {mysql.mnt_ns}", timeout=300, check=True)
    mode, after_unregister, after_register, digest, health = json.loads(out.stdout)
    assert mode == "adopted" and health == []
    # unregistered: the rules for every container, which include mysql's (their union); its alerts name
    # no container (no placeholder name: nothing registered it)
    assert after_unregister[0] != 0 and after_unregister[1] == [""]
    assert after_register[0] != 0 and after_register[1] == ["mysql"] and digest == first_load["digests"]["mysql"]


# -- CLI and teardown ---------------------------------------------------------------------------------


def test_engine_cli(guest: GuestVM, first_load: dict[str, Any]) -> None:
    refused = guest.run(f"{WARDEN} engine apply {SEED}")
    assert refused.returncode == 2 and "--no-gate" in refused.stderr
    status = json.loads(guest.run(f"{WARDEN} engine status --json", check=True).stdout)
    assert status["loaded"] and len(status["links"]) == WARDEN_LINKS and all(li["attached"] for li in status["links"])
    assert {li["hook"] for li in status["links"]} >= {"lsm/file_open", "lsm/path_rename", "lsm/socket_create",
                                                      "lsm/capable", "lsm/bprm_check_security"}
    assert status["scopes"]["mysql"]["rule_count"] == 4  # mysql + the three rules for every container
    assert status["maps"]["warden_rules"]["max_entries"] >= 8 * 65_536
    # Nobody read the 1 MiB ring buffer while the probes hammered denied writes: the losses are counted.
    assert status["event_drops"] > 1000
    bad = guest.run(f"{WARDEN} engine apply /nonexistent.yaml --no-gate")
    assert bad.returncode == 1 and "/nonexistent.yaml" in bad.stderr and "Traceback" not in bad.stderr


def test_teardown_is_the_only_thing_that_unpins(guest: GuestVM, first_load: dict[str, Any],
                                                mysql: Container) -> None:
    done = guest.run(f"{WARDEN} teardown", check=True)
    assert "removed /sys/fs/bpf/warden/links/" in done.stderr
    assert warden_link_ids(guest) == set()
    assert mysql.run(guest, f"cat {MYSQL_FILE}") == (0, "secret\n")
    assert in_unregistered(guest, "echo x > /bin/probe-target")[0] == 0
    assert guest.run("ls /sys/fs/bpf/warden").returncode != 0
