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


@pytest.fixture(scope="module")
def applied(guest: GuestVM) -> Iterator[None]:
    guest.run("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf", check=True)
    prepare = (f"echo original > {VICTIM} && "
               f"{PY} -c \"import os; os.setxattr('{VICTIM}', 'security.capability', {CAPABILITY_XATTR})\"")
    guest.run(prepare, check=True)
    applied = guest.run(f"cd {REPO_ROOT} && {WARDEN} engine apply --no-gate {' '.join(POLICIES)}", timeout=300)
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
