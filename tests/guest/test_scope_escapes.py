"""A container's root tries to step out of its rules (issue 14: chroot, namespaces, incomplete walks),
against the real 6.1 kernel, after `Engine.load_or_adopt` + `register_container`, the loading process
SIGKILLed before any attempt.

One guest for the module. The registered container "mysql" (labels app=mysql: the seed's
block-mysql-data-access applies, with file-integrity-monitoring, net-raw-block and the filelessExec
preset of tests/data/policies/presets/) has its own mount
namespace and shares the VM's pid namespace, so /proc/1/ns/mnt is the VM's own: the setns escape
the threat model's attacker (CAP_SYS_ADMIN, a shared pid namespace) has. Its first process is
registered by pid, as the OCI hook does. Every escape is shown denied and alerted with the right
policy and the container's own scope (never any-container, never the host), and a neighbour of it
allowed.
"""

from __future__ import annotations

import json
import shlex
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.guest.held import HeldRead
from tests.guest.vm import REPO_ROOT, GuestVM

SEED = f"{REPO_ROOT}/tests/data/policies/seed"
FILELESS = f"{REPO_ROOT}/tests/data/policies/presets/fileless-exec-block.yaml"  # filelessExec Block for mysql
PY = f"{REPO_ROOT}/.venv/bin/python"
MYSQL_FILE = "/var/lib/mysql/any-file"
NOBODY = "setpriv --reuid=65534 --regid=65534 --clear-groups"

LOADER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from bpf.kernel.engine import Engine
    from bpf.policy.files import load_policy_paths

    pid, pid_ns, mnt_ns = map(int, sys.argv[2:5])
    engine = Engine()
    report = engine.load_or_adopt(load_policy_paths([Path(p) for p in sys.argv[5:]]))
    digest = engine.register_container("mysql", {"app": "mysql"}, pid_ns, mnt_ns, pid)
    Path(sys.argv[1]).write_text(json.dumps({"pid": os.getpid(), "digest": digest, "health": engine.health(),
                                             "timings": report.timings_s}))
    time.sleep(1_000_000)  # until SIGKILL
""")

READ_ALERTS = textwrap.dedent("""
    import json
    from bpf.kernel.engine import Engine
    for alert in Engine().read_alerts():
        print(json.dumps(alert.to_dict()))
""")

# The scope recorded on a task, read through a pidfd (the task storage map's key from user space).
TASK_SCOPE = textwrap.dedent("""
    import os, struct, sys
    from bpf.kernel.libbpf import Libbpf, MapHandle
    from bpf.kernel.pins import DEFAULT_PIN_DIR, EnginePins
    pidfd = os.pidfd_open(int(sys.argv[1]))
    with MapHandle.open_pinned(Libbpf(), EnginePins(DEFAULT_PIN_DIR).map_pin("warden_task_scope")) as handle:
        value = handle.lookup(struct.pack("<i", pidfd))
    print(struct.unpack("<I4x", value)[0] if value else 0)
""")


# open_tree / move_mount / pivot_root, which util-linux 2.38 has no command for (x86-64 syscall numbers).
MOUNT_HELPER = textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    AT_FDCWD, OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH = -100, 1, 4

    def call(*args):
        ret = libc.syscall(*args)
        if ret < 0:
            sys.exit(os.strerror(ctypes.get_errno()))
        return ret

    verb, *rest = sys.argv[1:]
    if verb == "clone-read":  # a detached copy of a directory, then a file read through it
        tree = call(428, AT_FDCWD, rest[0].encode(), OPEN_TREE_CLONE)
        try:
            fd = os.open(rest[1], os.O_RDONLY, dir_fd=tree)
        except OSError as exc:
            sys.exit(exc.strerror)
        print(os.read(fd, 100).decode(), end="")
    elif verb == "clone-attach":  # the same copy attached at another path
        tree = call(428, AT_FDCWD, rest[0].encode(), OPEN_TREE_CLONE)
        call(429, tree, b"", AT_FDCWD, rest[1].encode(), MOVE_MOUNT_F_EMPTY_PATH)
        print("attached")
    elif verb == "move":  # an attached mount moved
        call(429, AT_FDCWD, rest[0].encode(), AT_FDCWD, rest[1].encode(), 0)
        print("moved")
    elif verb == "pivot":
        call(155, rest[0].encode(), rest[1].encode())
        print("pivoted")
""")
HELPER = "/usr/bin/python3 /tmp/mount-helper.py"


@dataclass(frozen=True)
class Container:
    pid: int

    def run(self, guest: GuestVM, command: str, timeout: float = 60.0) -> tuple[int, str]:
        result = guest.run(f"nsenter -t {self.pid} -m -- sh -c {shlex.quote(command)}", timeout=timeout)
        return result.returncode, result.stdout + result.stderr


def read_alerts(guest: GuestVM) -> list[dict[str, Any]]:
    out = guest.run(f"cd {REPO_ROOT} && {PY} -c {shlex.quote(READ_ALERTS)}", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def denied_with(guest: GuestVM, container: Container, command: str, policy: str, resource: str,
                incomplete: bool = False) -> dict[str, Any]:
    """Run `command` in the container: it must fail with EPERM, and the alerts must name `policy`
    for `resource` in the container's own scope (mysql), Block, denied."""
    read_alerts(guest)  # drain what earlier steps left
    code, out = container.run(guest, command)
    assert code != 0 and ("Operation not permitted" in out or "denied" in out), (command, code, out)
    alerts = [a for a in read_alerts(guest) if a["PolicyName"] == policy]
    assert alerts, (command, out, read_alerts(guest))
    alert = alerts[0]
    assert (alert["ContainerName"], alert["Action"], alert["Result"]) == ("mysql", "Block", "Permission denied"), alert
    assert alert["Resource"] == resource, alert
    assert ("incomplete=true" in alert["Data"]) == incomplete, alert
    return alert


@pytest.fixture(scope="module")
def mysql(guest: GuestVM) -> Iterator[Container]:
    guest.run("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf", check=True)
    guest.run("sysctl -qw kernel.unprivileged_userns_clone=1 || true")
    guest.run(f"mkdir -p /var/lib/mysql && echo secret > {MYSQL_FILE} && chmod 644 {MYSQL_FILE} "
              "&& echo ok > /bin/probe-read && echo original > /bin/probe-target", check=True)
    # the deep trees are made from the host (no host rules): the walk's limit is 128 dentries
    guest.run("for n in 100 130; do d=/tmp/deep$n; i=0; while [ $i -lt $n ]; do d=$d/d; i=$((i+1)); done; "
              "mkdir -p $d && echo deep > $d/f; done", check=True)
    helper = guest.write_shared("mount-helper.py", MOUNT_HELPER)
    guest.run(f"cp {helper} /tmp/mount-helper.py && mkdir -p /tmp/mnt-target /tmp/mnt-a /tmp/mnt-b /tmp/mnt-pr "
              "/tmp/ov/upper /tmp/ov/work", check=True)
    guest.run("setsid unshare -m --propagation private sleep 100002 >/dev/null 2>&1 &", check=True)
    pid = 0
    for _ in range(100):
        found = guest.run("pgrep -f '^sleep 100002'")
        if found.returncode == 0:
            pid = int(found.stdout.split()[0])
            break
        time.sleep(0.1)
    assert pid, "container process did not start"
    yield Container(pid)
    guest.run(f"kill {pid}")


@pytest.fixture(scope="module")
def applied(guest: GuestVM, mysql: Container) -> dict[str, Any]:
    ns = [int(guest.run(f"stat -Lc %i /proc/{mysql.pid}/ns/{kind}", check=True).stdout) for kind in ("pid", "mnt")]
    script = guest.write_shared("scope-loader.py", LOADER)
    ready = "/run/scope-loader.json"
    guest.run(f"cd {REPO_ROOT} && setsid nohup {PY} {script} {ready} {mysql.pid} {ns[0]} {ns[1]} {SEED} {FILELESS} "
              f"> {ready}.log 2>&1 &", check=True)
    deadline = time.monotonic() + 240
    while guest.run(f"test -s {ready}").returncode != 0:
        log = guest.run(f"cat {ready}.log").stdout
        assert time.monotonic() < deadline and "Traceback" not in log, log
        time.sleep(0.5)
    result: dict[str, Any] = json.loads(guest.run(f"cat {ready}", check=True).stdout)
    print(f"engine load timings: {result['timings']}")
    guest.run(f"kill -9 {result['pid']}", check=True)  # the applying process is gone before any attempt
    for _ in range(50):
        if guest.run(f"kill -0 {result['pid']}").returncode != 0:
            break
        time.sleep(0.1)
    assert guest.run(f"kill -0 {result['pid']}").returncode != 0
    assert result["health"] == []
    return result


def test_the_registered_first_process_holds_its_scope(guest: GuestVM, applied: dict[str, Any],
                                                      mysql: Container) -> None:
    """Registration records the scope on the container's first process through a pidfd: the sleeping
    process, which has run no hook since the programs were loaded, already holds it."""
    script = guest.write_shared("task-scope.py", TASK_SCOPE)
    scope = int(guest.run(f"cd {REPO_ROOT} && {PY} {script} {mysql.pid}", check=True).stdout)
    status = json.loads(guest.run(f"{REPO_ROOT}/.venv/bin/warden engine status --json", check=True).stdout)
    assert scope == status["scopes"]["mysql"]["id"] >= 16


def test_in_the_container_the_rules_hold_and_neighbours_pass(guest: GuestVM, applied: dict[str, Any],
                                                             mysql: Container) -> None:
    denied_with(guest, mysql, f"cat {MYSQL_FILE}", "block-mysql-data-access", MYSQL_FILE)
    assert mysql.run(guest, "cat /bin/probe-read") == (0, "ok\n")
    assert guest.run(f"cat {MYSQL_FILE}").stdout == "secret\n"  # the host scope has no rules


@pytest.mark.parametrize("escape", [
    "unshare -m",  # a new mount namespace
    "unshare -p -f",  # a new pid namespace, the command in a forked child (task_alloc inherits)
    "unshare -Urm",  # user + mount namespaces, as root of the container
    f"{NOBODY} unshare -Urm",  # ... and without any capability
])
def test_namespaces_do_not_leave_the_container_scope(guest: GuestVM, applied: dict[str, Any], mysql: Container,
                                                     escape: str) -> None:
    denied_with(guest, mysql, f"{escape} cat {MYSQL_FILE}", "block-mysql-data-access", MYSQL_FILE)
    assert mysql.run(guest, f"{escape} cat /bin/probe-read") == (0, "ok\n")


CHROOT = ("/usr/bin/python3 -c \"import os; os.chroot('{root}'); "
          "print(open('{path}', '{mode}').read() if '{mode}' == 'r' else open('{path}', '{mode}').write('x'))\"")


def test_chroot_changes_no_path(guest: GuestVM, applied: dict[str, Any], mysql: Container) -> None:
    """After chroot /usr/bin, /probe-target is /usr/bin/probe-target (= /bin/probe-target): read-only."""
    denied_with(guest, mysql, CHROOT.format(root="/usr/bin", path="/probe-target", mode="w"),
                "file-integrity-monitoring", "/usr/bin/probe-target")
    assert mysql.run(guest, CHROOT.format(root="/usr/bin", path="/probe-read", mode="r")) == (0, "ok\n\n")
    denied_with(guest, mysql, CHROOT.format(root="/var/lib", path="/mysql/any-file", mode="r"),
                "block-mysql-data-access", MYSQL_FILE)
    assert guest.run("cat /bin/probe-target", check=True).stdout == "original\n"


def test_chroot_in_a_user_namespace_without_capabilities(guest: GuestVM, applied: dict[str, Any],
                                                         mysql: Container) -> None:
    command = f"{NOBODY} unshare -Ur " + CHROOT.format(root="/var/lib", path="/mysql/any-file", mode="r")
    denied_with(guest, mysql, command, "block-mysql-data-access", MYSQL_FILE)
    neighbour = f"{NOBODY} unshare -Ur " + CHROOT.format(root="/usr/bin", path="/probe-read", mode="r")
    assert mysql.run(guest, neighbour) == (0, "ok\n\n")


def stacked(n: int) -> str:
    return (f"unshare -m sh -c 'mkdir -p /tmp/stack{n}; i=0; while [ $i -lt {n} ]; do "
            f"mount -t tmpfs s{n} /tmp/stack{n} || exit 9; i=$((i+1)); done; "
            f"echo x > /tmp/stack{n}/f && cat /tmp/stack{n}/f'")


def test_140_stacked_mounts_fail_closed(guest: GuestVM, applied: dict[str, Any], mysql: Container) -> None:
    """The far walk cannot reach the root through 140 mounts: the scope's strictest rule (mysql's Block,
    which has no readOnly) decides, with an alert that says the path was incomplete. Since mounts are
    decided at their target, the mount that would stack beyond the walk's reach is itself refused."""
    denied_with(guest, mysql, stacked(140), "block-mysql-data-access", "/", incomplete=True)
    assert mysql.run(guest, stacked(100)) == (0, "x\n")


def test_a_path_deeper_than_the_walk_fails_closed(guest: GuestVM, applied: dict[str, Any],
                                                  mysql: Container) -> None:
    deep130 = "/tmp/deep130" + "/d" * 130 + "/f"
    deep100 = "/tmp/deep100" + "/d" * 100 + "/f"
    denied_with(guest, mysql, f"cat {deep130}", "block-mysql-data-access", "/", incomplete=True)
    assert mysql.run(guest, f"cat {deep100}") == (0, "deep\n")
    assert guest.run(f"cat {deep130}").stdout == "deep\n"  # the host scope has no rules


def test_an_unregistered_container_gets_every_container_policy(guest: GuestVM, applied: dict[str, Any]) -> None:
    """A non-host mount namespace nobody registered: the union of the container policies (mysql's too)."""
    read_alerts(guest)
    result = guest.run(f"unshare -m cat {MYSQL_FILE}")
    assert result.returncode != 0 and "Operation not permitted" in result.stderr
    alerts = [a for a in read_alerts(guest) if a["Resource"] == MYSQL_FILE]
    assert [(a["ContainerName"], a["PolicyName"]) for a in alerts][:1] == [("", "block-mysql-data-access")]


# -- confinement (scope_guard): what no container may do, whatever its policy -----------------------

def confined(guest: GuestVM, container: Container, command: str, lsm: str, resource: str | None = None) -> None:
    """`command` fails in the container, and the alert is scope_guard's own (no policy decided it)."""
    read_alerts(guest)
    code, out = container.run(guest, command)
    assert code != 0, (command, out)
    alerts = [a for a in read_alerts(guest) if a["PolicyName"] == "ContainerConfinement"]
    assert any(a["Data"] == f"lsm={lsm}" and a["ContainerName"] == "mysql" and a["Action"] == "Block"
               and (resource is None or a["Resource"] == resource) for a in alerts), (command, out, alerts)


# setns(pidfd of PID 1, CLONE_NEWNS) through libc (os.setns is Python 3.12's)
SETNS_BY_PIDFD = (f"{PY} -c 'import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
                  "sys.exit(os.strerror(ctypes.get_errno()) if libc.setns(os.pidfd_open(1), 0x20000) else 0)'")


@pytest.mark.parametrize(("reach", "lsm", "resource"), [
    ("nsenter --mount=/proc/1/ns/mnt true", "PTRACE_ACCESS", "pid=1"),  # the VM's mount namespace
    (SETNS_BY_PIDFD, "PTRACE_ACCESS", "pid=1"),  # ... through a pidfd
    ("ls /proc/1/root/run/", "PTRACE_ACCESS", "pid=1"),  # PID 1's root: systemd's and warden's sockets
    ("bpftool map list", "BPF", None),  # its own programs would write warden's maps
    ("echo '|/tmp/x' > /proc/sys/kernel/core_pattern", "SYSCTL_WRITE", None),  # a host-run helper
    ("insmod /lib/modules/$(uname -r)/kernel/drivers/net/dummy.ko", "KERNEL_LOAD", None),
])
def test_a_container_cannot_reach_outside_its_scope(guest: GuestVM, applied: dict[str, Any], mysql: Container,
                                                    reach: str, lsm: str, resource: str | None) -> None:
    confined(guest, mysql, reach, lsm, resource)


def test_confinement_leaves_the_container_itself_and_the_host_alone(guest: GuestVM, applied: dict[str, Any],
                                                                     mysql: Container) -> None:
    assert mysql.run(guest, "ls /proc/self/root/ >/dev/null && cat /proc/self/environ >/dev/null")[0] == 0
    assert mysql.run(guest, "cat /proc/sys/kernel/core_pattern")[0] == 0  # reading a sysctl
    # a sysctl of the container's own namespace, as runtimes set a pod's from its spec
    assert mysql.run(guest, "unshare -n sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'")[0] == 0
    assert "|/tmp/x" not in guest.run("cat /proc/sys/kernel/core_pattern", check=True).stdout
    assert guest.run("ls /proc/1/root/run/ >/dev/null && bpftool prog list >/dev/null").returncode == 0
    assert guest.run("lsmod | grep -q '^dummy ' || modprobe dummy").returncode == 0  # the host may load it


REGISTER_AS_WEB = textwrap.dedent("""
    import sys
    from pathlib import Path
    from bpf.kernel.engine import Engine, EngineStateError
    from bpf.policy.files import load_policy_paths

    pid, pid_ns, mnt_ns = map(int, sys.argv[1:4])
    engine = Engine()
    engine.load_or_adopt(load_policy_paths([Path(p) for p in sys.argv[4:]]))  # the module's policies
    try:
        engine.register_container("web", {"app": "web"}, pid_ns, mnt_ns, pid)
    except EngineStateError as exc:
        print(f"refused: {exc}")
    else:
        print("registered")
""")


def test_a_container_process_in_fresh_namespaces_is_never_registered_as_another_container(
        guest: GuestVM, applied: dict[str, Any], mysql: Container) -> None:
    """The mysql container's root makes itself fresh namespaces and gets them registered as a container
    with weaker rules (a uid-0 client of the control socket): the registration is refused, the task keeps
    mysql's scope."""
    mysql.run(guest, "setsid unshare -m -p -f --mount-proc sleep 100007 >/dev/null 2>&1 &")
    found = ""
    for _ in range(100):
        found = guest.run("pgrep -f '^sleep 100007'").stdout.strip()
        if found:
            break
        time.sleep(0.1)
    pid = int(found.split()[0])
    ns = [int(guest.run(f"stat -Lc %i /proc/{pid}/ns/{kind}", check=True).stdout) for kind in ("pid", "mnt")]
    script = guest.write_shared("register-as-web.py", REGISTER_AS_WEB)
    out = guest.run(f"cd {REPO_ROOT} && {PY} {script} {pid} {ns[0]} {ns[1]} {SEED} {FILELESS}", check=True,
                    timeout=240).stdout
    assert "refused: register: pid" in out and "already belongs to container scope" in out, out
    task_scope = guest.write_shared("task-scope.py", TASK_SCOPE)
    status = json.loads(guest.run(f"{REPO_ROOT}/.venv/bin/warden engine status --json", check=True).stdout)
    assert int(guest.run(f"cd {REPO_ROOT} && {PY} {task_scope} {pid}", check=True).stdout) == \
        status["scopes"]["mysql"]["id"]
    assert "web" not in status["scopes"]
    guest.run(f"kill {pid}")


# -- no second path by mounting (threat-model.md, "Mounts") ------------------------------------------

AS_ROOT = ""  # root of the container, in its own mount namespace
IN_USERNS = "unshare -Urm "  # user + mount namespaces: container root, or anyone, without capabilities
AS_NOBODY = f"{NOBODY} unshare -Urm "


def mount_denied(guest: GuestVM, container: Container, command: str, policy: str, resource: str, kind: str,
                 incomplete: bool = False) -> None:
    alert = denied_with(guest, container, command, policy, resource, incomplete=incomplete)
    assert f"mount={kind}" in alert["Data"], alert


@pytest.mark.parametrize("prefix", [AS_ROOT, IN_USERNS, AS_NOBODY], ids=["root", "userns", "nobody-userns"])
def test_a_bind_mount_of_protected_data_is_refused(guest: GuestVM, applied: dict[str, Any], mysql: Container,
                                                   prefix: str) -> None:
    """A bind's source is a string the kernel resolves after the hook: from a container scope whose rules
    protect anything, every bind (and every MS_MOVE) is refused, alerted with the scope's strictest rule
    and the target; a tmpfs at the same unprotected place is allowed."""
    mount_denied(guest, mysql, f"{prefix}mount --bind /var/lib/mysql /tmp/mnt-target", "block-mysql-data-access",
                 "/tmp/mnt-target", "bind")
    mount_denied(guest, mysql, f"{prefix}mount --rbind /var/lib /tmp/mnt-target", "block-mysql-data-access",
                 "/tmp/mnt-target", "bind")
    if prefix != AS_ROOT:  # (as root, the neighbour's mount would stay in the container's namespace)
        neighbour = (f"{prefix}sh -c 'mount -t tmpfs t /tmp/mnt-target && echo x > /tmp/mnt-target/f "
                     "&& cat /tmp/mnt-target/f'")
        assert mysql.run(guest, neighbour) == (0, "x\n")
    assert mysql.run(guest, f"cat {MYSQL_FILE}")[0] != 0


def test_an_overlay_with_protected_data_as_lowerdir_is_refused(guest: GuestVM, applied: dict[str, Any],
                                                               mysql: Container) -> None:
    options = "lowerdir=/var/lib/mysql,upperdir=/tmp/ov/upper,workdir=/tmp/ov/work"
    for prefix in (AS_ROOT, IN_USERNS):
        mount_denied(guest, mysql, f"{prefix}mount -t overlay ov -o {options} /tmp/mnt-target",
                     "block-mysql-data-access", "/tmp/mnt-target", "with-source")


@pytest.mark.parametrize("prefix", [AS_ROOT, IN_USERNS], ids=["root", "userns"])
def test_a_mount_over_or_above_a_protected_directory_is_refused(guest: GuestVM, applied: dict[str, Any],
                                                                mysql: Container, prefix: str) -> None:
    """A tmpfs over /usr/bin (readOnly: the mount is a write there) or over /var/lib (a directory above
    mysql's Block rule: the mount would hide it behind a tree of the attacker's) is refused."""
    mount_denied(guest, mysql, f"{prefix}mount -t tmpfs t /usr/bin", "file-integrity-monitoring", "/usr/bin",
                 "at-path")
    mount_denied(guest, mysql, f"{prefix}mount -t tmpfs t /var/lib", "block-mysql-data-access", "/var/lib", "at-path")
    mount_denied(guest, mysql, f"{prefix}mount -t tmpfs t /var/lib/mysql", "block-mysql-data-access",
                 "/var/lib/mysql", "at-path")
    assert mysql.run(guest, f"{IN_USERNS}sh -c 'mount -t tmpfs t /tmp/mnt-target && echo ok'") == (0, "ok\n")


@pytest.mark.parametrize("prefix", [AS_ROOT, IN_USERNS], ids=["root", "userns"])
def test_a_detached_tree_fails_closed(guest: GuestVM, applied: dict[str, Any], mysql: Container, prefix: str) -> None:
    """open_tree(OPEN_TREE_CLONE) has no LSM hook: the copy's paths start at its own root. A walk that ends
    in a detached tree is incomplete (the scope's strictest rule decides, the resource is "/"), so no
    file is read through any detached tree in a scope with a Block rule; attaching one anywhere is
    refused at move_mount (its source is unknown). An attached tmpfs moved between unprotected places is
    allowed."""
    mount_denied_read = f"{prefix}{HELPER} clone-read /var/lib/mysql any-file"
    denied_with(guest, mysql, mount_denied_read, "block-mysql-data-access", "/", incomplete=True)
    mount_denied(guest, mysql, f"{prefix}{HELPER} clone-attach /var/lib/mysql /tmp/mnt-target",
                 "block-mysql-data-access", "/tmp/mnt-target", "detached-tree")
    moved = f"{IN_USERNS}sh -c 'mount -t tmpfs t /tmp/mnt-a && {HELPER} move /tmp/mnt-a /tmp/mnt-b'"
    assert mysql.run(guest, moved) == (0, "moved\n")
    over_bin = f"{IN_USERNS}sh -c 'mount -t tmpfs t /tmp/mnt-a && {HELPER} move /tmp/mnt-a /usr/bin'"
    mount_denied(guest, mysql, over_bin, "file-integrity-monitoring", "/usr/bin", "at-path")


def test_pivot_root_is_refused(guest: GuestVM, applied: dict[str, Any], mysql: Container) -> None:
    """A new root changes what every path means: refused to a container's code in a scope with rules
    (a runtime's own pivot_root, before it execs the entrypoint, is its set-up and passes)."""
    command = (f"{IN_USERNS}sh -c 'mount -t tmpfs t /tmp/mnt-pr && mkdir /tmp/mnt-pr/old "
               f"&& {HELPER} pivot /tmp/mnt-pr /tmp/mnt-pr/old'")
    mount_denied(guest, mysql, command, "block-mysql-data-access", "/tmp/mnt-pr", "pivot-root")


# -- fileless exec (KubeArmor's filelessExec preset) ---------------------------------------------------


def fileless(kind: str) -> str:
    """Exec of a copy of echo with no path on disk: a memfd (memfd_create + fexecve), or a file deleted
    while held open (its descriptor executed)."""
    body = ("import os, sys\n"
            "data = open('/usr/bin/echo', 'rb').read()\n"
            "if sys.argv[1] == 'memfd':\n"
            "    fd = os.memfd_create('payload', 0)\n"
            "    os.write(fd, data)\n"
            "else:\n"
            "    with open('/tmp/del-echo', 'wb') as f:\n"
            "        f.write(data)\n"
            "    os.chmod('/tmp/del-echo', 0o755)\n"
            "    fd = os.open('/tmp/del-echo', os.O_RDONLY)\n"
            "    os.unlink('/tmp/del-echo')\n"
            "try:\n"
            "    os.execve(fd, ['echo', 'ran'], {})\n"
            "except OSError as exc:\n"
            "    sys.exit(exc.strerror)\n")
    return f"/usr/bin/python3 -c {shlex.quote(body)} {kind}"


@pytest.mark.parametrize(("kind", "resource"), [("memfd", "memfd:payload"), ("deleted", "/tmp/del-echo")])
def test_fileless_exec_is_refused_under_the_preset(guest: GuestVM, applied: dict[str, Any], mysql: Container,
                                                   kind: str, resource: str) -> None:
    """mysql's policy has filelessExec Block: the exec of a memfd or of a deleted file is refused and alerted
    (KubeArmor's resource: memfd:NAME); the host scope, without the preset, runs the same; an exec of
    echo from its path runs in mysql."""
    alert = denied_with(guest, mysql, fileless(kind), "fileless-exec-block", resource)
    assert alert["Operation"] == "Process" and "lsm=EXEC_MEMFD" in alert["Data"], alert
    result = guest.run(fileless(kind))
    assert (result.returncode, result.stdout) == (0, "ran\n"), result
    assert mysql.run(guest, "/usr/bin/echo ran") == (0, "ran\n")
# An unregistered container (no hook ran: CoCo's agent policy leaves guest_hook_path empty) in a cgroup
# of its own, as a runtime puts it; the test bed's shell is in a systemd service's cgroup.
ROGUE = "mkdir -p /sys/fs/cgroup/rogue && echo $$ > /sys/fs/cgroup/rogue/cgroup.procs && exec unshare -m {}"


def test_an_unregistered_container_is_confined_and_a_host_service_is_not(guest: GuestVM,
                                                                         applied: dict[str, Any]) -> None:
    read_alerts(guest)
    for reach, lsm in (("ls /proc/1/root/run/", "PTRACE_ACCESS"), ("bpftool prog list", "BPF")):
        result = guest.run(f"sh -c {shlex.quote(ROGUE.format(reach))}")
        assert result.returncode != 0, (reach, result)
        alerts = [a for a in read_alerts(guest) if a["PolicyName"] == "ContainerConfinement"]
        assert any(a["Data"] == f"lsm={lsm}" and a["ContainerName"] == "" for a in alerts), (reach, alerts)
        # the same from a service's cgroup with a private mount namespace: a host service
        assert guest.run(f"unshare -m {reach} >/dev/null").returncode == 0, reach


# -- what file_permission remembers (bpf/progs/warden_held.h) -----------------------------------------


def test_a_host_process_entering_the_container_takes_its_rules_for_a_file_it_already_read(
        guest: GuestVM, applied: dict[str, Any], mysql: Container) -> None:
    """A host process reads mysql's data through /proc/<pid>/root (the host scope has no rules), then joins
    the container's mount namespace: the same descriptor is now read in mysql's scope, and refused. What
    the task remembered of its reads holds only in the namespaces it was found in."""
    read_alerts(guest)
    reader = HeldRead.start(guest, "host-enters", f"/proc/{mysql.pid}/root{MYSQL_FILE}",
                            setns=(f"/proc/{mysql.pid}/ns/mnt",))
    assert reader.before == ["ok", "ok", "ok"]
    assert reader.after() == "EPERM"
    alerts = [a for a in read_alerts(guest) if a["PolicyName"] == "block-mysql-data-access"]
    assert any(a["ContainerName"] == "mysql" and a["Resource"] == MYSQL_FILE and "lsm=FILE_PERMISSION" in a["Data"]
               for a in alerts), alerts


REREGISTER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from bpf.kernel.engine import Engine
    from bpf.policy.files import load_policy_paths

    app, pid_ns, mnt_ns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    engine = Engine()
    engine.load_or_adopt(load_policy_paths([Path(p) for p in sys.argv[4:]]))  # the module's policies
    engine.register_container("mysql", {"app": app}, pid_ns, mnt_ns)
""")


def test_a_registration_ends_what_was_remembered_under_the_container_s_old_rules(
        guest: GuestVM, applied: dict[str, Any], mysql: Container) -> None:
    """mysql's namespaces registered again as app=web (no policy of the seed's selects it): a process in the
    container reads the data file, allowed, and keeps its descriptor. Registered as app=mysql again,
    block-mysql-data-access applies to that descriptor's next read."""
    ns = [guest.run(f"stat -Lc %i /proc/{mysql.pid}/ns/{kind}", check=True).stdout.strip() for kind in ("pid", "mnt")]
    script = guest.write_shared("reregister.py", REREGISTER)

    def register(app: str) -> None:
        guest.run(f"cd {REPO_ROOT} && {PY} {script} {app} {ns[0]} {ns[1]} {SEED} {FILELESS}", check=True, timeout=240)

    register("web")
    try:
        reader = HeldRead.start(guest, "reregistered", MYSQL_FILE, launch=f"nsenter -t {mysql.pid} -m --")
        assert reader.before == ["ok", "ok", "ok"]
    finally:
        register("mysql")
    assert reader.after() == "EPERM"
    denied_with(guest, mysql, f"cat {MYSQL_FILE}", "block-mysql-data-access", MYSQL_FILE)
