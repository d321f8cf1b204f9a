"""Issue 14's ways around the rules that do not go through open or exec, each tried as root in a
container would, after `warden engine apply` with the applying process gone.

One guest for the module. Before the policy: victims in /bin and /srv/app/secrets, and holders that
keep descriptors (a /bin file open for writing, a secret open for reading, a raw socket) across the
apply. Then `warden engine apply --no-gate` of the seed's file-integrity and raw-socket policies plus
tests/data/policies/bypass (secrets blocked, /usr/bin/id blocked), the CLI exits, and every attack
runs in an unregistered mount namespace (the rules for every container). Each must fail with EPERM
and leave an alert naming the right policy and resource; the neighbour of each (the same operation
on an unprotected object) must still work.
"""

from __future__ import annotations

import json
import os
import shlex
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.guest.vm import REPO_ROOT, GuestVM

PY = f"{REPO_ROOT}/.venv/bin/python"
WARDEN = f"{REPO_ROOT}/.venv/bin/warden"
POLICIES = [f"{REPO_ROOT}/tests/data/policies/seed/file-integrity-monitoring.yaml",
            f"{REPO_ROOT}/tests/data/policies/seed/net-raw-block.yaml",
            f"{REPO_ROOT}/tests/data/policies/bypass"]
FIM = "file-integrity-monitoring"
VICTIM = "/bin/warden-victim"  # /usr/bin/warden-victim on a merged-/usr root
NEIGHBOUR = "/tmp/warden-neighbour"
SECRET = "/srv/app/secrets/key"
SECRETS_POLICY = "block-app-secrets"

READ_ALERTS = textwrap.dedent("""
    import json
    from bpf.kernel.engine import Engine
    for alert in Engine().read_alerts():
        print(json.dumps(alert.to_dict()))
""")

# vfs_cap_data, revision 2, effective, permitted = CAP_NET_RAW: what `setcap cap_net_raw+ep` writes
CAPABILITY_XATTR = "b'\\x01\\x00\\x00\\x02' + (1 << 13).to_bytes(4, 'little') + bytes(12)"


@dataclass(frozen=True)
class Outcome:
    code: int
    output: str

    @property
    def refused(self) -> bool:
        return self.code != 0 and "EPERM" in self.output


def attack(guest: GuestVM, code: str) -> Outcome:
    """Run Python `code` as root in a fresh, unregistered mount namespace; an OSError prints its errno name."""
    script = textwrap.dedent("""
        import errno, fcntl, os, socket, struct, sys
        try:
        {body}
        except OSError as exc:
            print(errno.errorcode.get(exc.errno, exc.errno), exc)
            sys.exit(1)
    """).format(body=textwrap.indent(textwrap.dedent(code), "    "))
    path = guest.write_shared(f"attack-{abs(hash(code))}.py", script)
    result = guest.run(f"unshare -m -- {PY} {path}")
    return Outcome(result.returncode, result.stdout + result.stderr)


def read_alerts(guest: GuestVM) -> list[dict[str, Any]]:
    out = guest.python(READ_ALERTS, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def alerted(guest: GuestVM, policy: str, resource_end: str, data: str) -> list[dict[str, Any]]:
    """The alerts since the last read for `policy` on a resource ending in `resource_end` from hook `data`."""
    return [a for a in read_alerts(guest) if a["PolicyName"] == policy and a["Resource"].endswith(resource_end)
            and a["Data"].startswith(f"lsm={data}") and a["Result"] == "Permission denied"
            and a["Action"] == "Block"]


# Opened in a container's namespace before the policy, used after it when /tmp/holder.go appears.
HOLDER = textwrap.dedent("""
    import errno, json, os, socket, time
    held = {
        "write-bin": os.open(%(victim)r, os.O_WRONLY),
        "read-secret": os.open(%(secret)r, os.O_RDONLY),
        "read-neighbour": os.open("/etc/hostname", os.O_RDONLY),
    }
    socks = {
        "sendto-raw-icmp": socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
        "sendto-packet-dgram": socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0),
        "sendto-udp-neighbour": socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
    }
    open("/tmp/holder.ready", "w").close()
    while not os.path.exists("/tmp/holder.go"):
        time.sleep(0.05)
    def attempt(fn):
        try:
            fn()
            return "ok"
        except OSError as exc:
            return errno.errorcode.get(exc.errno, str(exc.errno))
    out = {
        "write-bin": attempt(lambda: os.write(held["write-bin"], b"x")),
        "read-secret": attempt(lambda: os.read(held["read-secret"], 1)),
        "read-neighbour": attempt(lambda: os.read(held["read-neighbour"], 1)),
        # the neighbour's allow, now remembered, is the descriptor's own: not the secret's
        "read-secret-again": attempt(lambda: os.read(held["read-secret"], 1)),
        "sendto-raw-icmp": attempt(lambda: socks["sendto-raw-icmp"].sendto(b"\\x08" + bytes(7), ("127.0.0.1", 0))),
        "sendto-packet-dgram": attempt(lambda: socks["sendto-packet-dgram"].sendto(
            bytes(28), ("lo", 0x0800, 0, 0, bytes(6)))),
        "sendto-udp-neighbour": attempt(lambda: socks["sendto-udp-neighbour"].sendto(b"x", ("127.0.0.1", 9))),
    }
    with open("/tmp/holder.out", "w") as f:
        json.dump(out, f)
""")


@pytest.fixture(scope="module")
def applied(guest: GuestVM) -> Iterator[None]:
    guest.run("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf", check=True)
    prepare = (f"echo original > {VICTIM} && mkdir -p /srv/app/secrets /srv/other && echo key > {SECRET} && "
               "echo readme > /srv/app/readme && "
               f"{PY} -c \"import os; os.setxattr('{VICTIM}', 'security.capability', {CAPABILITY_XATTR})\"")
    guest.run(prepare, check=True)
    holder = guest.write_shared("holder.py", HOLDER % {"victim": VICTIM, "secret": SECRET})
    guest.run(f"setsid unshare -m -- {PY} {holder} > /tmp/holder.log 2>&1 &", check=True)
    guest.run("for i in $(seq 200); do [ -e /tmp/holder.ready ] && exit 0; sleep 0.1; done; cat /tmp/holder.log; "
              "exit 1", check=True)
    # WARDEN_BPF_DIR (objects built with one check broken on purpose) reaches the guest's apply too
    objects = f"WARDEN_BPF_DIR={shlex.quote(os.environ['WARDEN_BPF_DIR'])} " if "WARDEN_BPF_DIR" in os.environ else ""
    applied = guest.run(f"cd {REPO_ROOT} && {objects}{WARDEN} engine apply --no-gate {' '.join(POLICIES)}",
                        timeout=300)
    assert applied.returncode == 0, applied
    assert guest.run(f"pgrep -f {shlex.quote('warden engine apply')}").returncode != 0, "the CLI must be gone"
    read_alerts(guest)  # start from an empty ring buffer
    yield


# -- 1. readOnly means the bytes and the metadata -------------------------------------------------


METADATA_CHANGES = {
    "utimensat": ("os.utime({p}, (0, 0))", "FILE_SETATTR"),
    "touch-now": ("os.utime({p})", "FILE_SETATTR"),
    "setxattr-capability": ("os.setxattr({p}, 'security.capability', " + CAPABILITY_XATTR + ")", "FILE_SETXATTR"),
    "setxattr-trusted": ("os.setxattr({p}, 'trusted.warden', b'x')", "FILE_SETXATTR"),
    "chmod": ("os.chmod({p}, 0o4755)", "FILE_CHMOD"),
    "chown": ("os.chown({p}, 1000, 1000)", "FILE_CHOWN"),
    "truncate": ("os.truncate({p}, 0)", "FILE_TRUNCATE"),
    "setflags-immutable": ("fd = os.open({p}, os.O_RDONLY)\n"
                           "fcntl.ioctl(fd, 0x40086602, struct.pack('l', 0x10))", "FILE_IOCTL"),
    "setflags-32bit-number": ("fd = os.open({p}, os.O_RDONLY)\n"
                              "fcntl.ioctl(fd, 0x40046602, struct.pack('i', 0x10))", "FILE_IOCTL"),
    "fssetxattr": ("fd = os.open({p}, os.O_RDONLY)\n"
                   "fcntl.ioctl(fd, 0x401c5820, struct.pack('IIIII8x', 0x8, 0, 0, 0, 0))", "FILE_IOCTL"),
}


@pytest.mark.parametrize("change", sorted(METADATA_CHANGES))
def test_read_only_metadata_is_refused_and_alerted(guest: GuestVM, applied: None, change: str) -> None:
    code, hook = METADATA_CHANGES[change]
    outcome = attack(guest, code.format(p=repr(VICTIM)))
    assert outcome.refused, outcome
    assert alerted(guest, FIM, "/bin/warden-victim", hook), f"no {hook} alert for {change}"


@pytest.mark.parametrize("change", sorted(c for c in METADATA_CHANGES if "32bit" not in c and "fssetxattr" not in c))
def test_read_only_metadata_neighbours_still_work(guest: GuestVM, applied: None, change: str) -> None:
    code, _ = METADATA_CHANGES[change]
    neighbour = f"{NEIGHBOUR}-{change}"  # a file of its own: setflags-immutable would stop the next change
    outcome = attack(guest, f"open({neighbour!r}, 'w').write('n')\n" + code.format(p=repr(neighbour)))
    assert outcome.code == 0, outcome


def test_removexattr_of_file_capabilities_is_refused(guest: GuestVM, applied: None) -> None:
    outcome = attack(guest, f"os.removexattr({VICTIM!r}, 'security.capability')")
    assert outcome.refused, outcome
    assert alerted(guest, FIM, "/bin/warden-victim", "FILE_REMOVEXATTR")
    assert "security.capability" in guest.run(f"getfattr -d -m - {VICTIM} 2>&1 || "
                                              f"{PY} -c \"import os; print(os.listxattr('{VICTIM}'))\"").stdout


# -- 2. renaming a directory above a protected path -----------------------------------------------


def test_renaming_an_ancestor_of_a_protected_path_is_refused(guest: GuestVM, applied: None) -> None:
    assert attack(guest, f"open({SECRET!r}).read()").refused  # the rule itself holds
    read_alerts(guest)
    for old, new in (("/srv/app", "/srv/x"), ("/srv", "/srv2")):
        outcome = attack(guest, f"os.rename({old!r}, {new!r})")
        assert outcome.refused, (old, outcome)
        assert alerted(guest, SECRETS_POLICY, old, "FILE_RENAME"), old
    # the exchange moves the target: an empty directory swapped with /srv/app is refused too
    exchange = ("import ctypes\nos.mkdir('/tmp/swap')\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "if libc.renameat2(-100, b'/tmp/swap', -100, b'/srv/app', 2):\n"
                "    raise OSError(ctypes.get_errno(), 'renameat2')")
    assert attack(guest, exchange).refused
    assert alerted(guest, SECRETS_POLICY, "/srv/app", "FILE_RENAME")
    assert guest.run(f"cat {SECRET}").stdout.strip() == "key"


def test_renames_beside_a_protected_path_still_work(guest: GuestVM, applied: None) -> None:
    for old, new in (("/srv/other", "/srv/other2"), ("/srv/app/readme", "/srv/app/readme2")):
        outcome = attack(guest, f"os.rename({old!r}, {new!r})")
        assert outcome.code == 0, (old, outcome)


# -- 3. descriptors opened before the policy ------------------------------------------------------


@pytest.fixture(scope="module")
def held(guest: GuestVM, applied: None) -> dict[str, str]:
    read_alerts(guest)
    guest.run("touch /tmp/holder.go", check=True)
    guest.run("for i in $(seq 300); do [ -s /tmp/holder.out ] && exit 0; sleep 0.1; done; cat /tmp/holder.log; "
              "exit 1", check=True)
    result: dict[str, str] = json.loads(guest.run("cat /tmp/holder.out", check=True).stdout)
    return result


def test_descriptors_held_from_before_the_policy_are_rechecked(guest: GuestVM, held: dict[str, str]) -> None:
    assert held["write-bin"] == "EPERM" and held["read-secret"] == held["read-secret-again"] == "EPERM", held
    assert held["read-neighbour"] == "ok", held
    alerts = read_alerts(guest)
    by = {(a["PolicyName"], a["Data"].split()[0]) for a in alerts if a["Result"] == "Permission denied"}
    assert (FIM, "lsm=FILE_PERMISSION") in by, alerts
    assert (SECRETS_POLICY, "lsm=FILE_PERMISSION") in by, alerts
    assert any(a["Resource"] == SECRET for a in alerts), alerts
    assert guest.run(f"cat {VICTIM}").stdout.strip() == "original"


def test_sockets_held_from_before_the_policy_are_rechecked(guest: GuestVM, held: dict[str, str]) -> None:
    assert held["sendto-raw-icmp"] == "EPERM" and held["sendto-packet-dgram"] == "EPERM", held
    assert held["sendto-udp-neighbour"] == "ok", held


# -- 5. `raw` is every socket that crafts or sniffs packets ---------------------------------------


PACKET_SOCKETS = {
    "inet-raw": "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
    "inet6-raw": "socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)",
    "packet-raw": "socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)",
    "packet-dgram": "socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)",
    "sock-packet": "socket.socket(socket.AF_INET, 10, 0x0300)",  # SOCK_PACKET, ETH_P_ALL
}


@pytest.mark.parametrize("kind", sorted(PACKET_SOCKETS))
def test_every_packet_crafting_socket_is_raw(guest: GuestVM, applied: None, kind: str) -> None:
    read_alerts(guest)
    outcome = attack(guest, PACKET_SOCKETS[kind])
    assert outcome.refused, outcome
    alerts = [a for a in read_alerts(guest) if a["PolicyName"] == "net-raw-block"]
    assert alerts and alerts[0]["Operation"] == "Network" and alerts[0]["Data"] == "lsm=SOCKET_CREATE", alerts


def test_ordinary_sockets_and_netlink_still_work(guest: GuestVM, applied: None) -> None:
    for code in ("socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect_ex(('127.0.0.1', 9))",
                 "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))",
                 "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)",
                 "socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)"):
        outcome = attack(guest, code)
        assert outcome.code == 0, (code, outcome)


# -- 4. exec around a process rule ----------------------------------------------------------------

LDSO = "/lib64/ld-linux-x86-64.so.2"


def test_a_blocked_binary_mapped_by_the_loader_is_refused(guest: GuestVM, applied: None) -> None:
    read_alerts(guest)
    direct = guest.run("unshare -m -- /usr/bin/id")
    assert direct.returncode != 0 and "not permitted" in direct.stderr, direct
    loader = guest.run(f"unshare -m -- {LDSO} /usr/bin/id")
    assert loader.returncode != 0 and "uid=" not in loader.stdout, loader
    alerts = [a for a in read_alerts(guest) if a["PolicyName"] == "block-id" and a["Resource"] == "/usr/bin/id"]
    assert {a["Data"] for a in alerts} >= {"lsm=SECURITY_BPRM_CHECK", "lsm=FILE_MMAP"}, alerts
    # mapped read-only, then made executable: refused at mprotect
    mprotect = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "libc.mmap.restype = ctypes.c_void_p\n"
                "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, "
                "ctypes.c_long]\n"
                "libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]\n"
                "fd = os.open({p!r}, os.O_RDONLY)\n"
                "addr = libc.mmap(None, 4096, 1, 2, fd, 0)\n"  # PROT_READ, MAP_PRIVATE
                "if libc.mprotect(addr, 4096, 5):\n"  # PROT_READ | PROT_EXEC
                "    raise OSError(ctypes.get_errno(), 'mprotect')")
    outcome = attack(guest, mprotect.format(p="/usr/bin/id"))
    assert outcome.refused, outcome
    assert attack(guest, mprotect.format(p="/usr/bin/true")).code == 0
    neighbour = guest.run(f"unshare -m -- {LDSO} /usr/bin/true")
    assert neighbour.returncode == 0, neighbour
