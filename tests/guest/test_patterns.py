"""matchPatterns enforced by BPF-LSM on the real 6.1 kernel, in container scopes.

Real KubeArmor policies from ../shared/kubearmor-corpus (read unchanged at test time; CI has the corpus, so
there a missing corpus fails the test), and our own equivalents in tests/data/policies/patterns (every
glob form: `*`, `**`, `?`, `[...]`, `{a,b}`; Block and Audit; readOnly + ownerOnly; file and process),
so that a fresh clone still covers all of it. Each case shows the denial (or the audit alert), the
allowed neighbour that a slightly different path is, and the alert's policy name.

One guest for the module. Containers are mount + pid namespaces registered with the engine:
- "c1", labels container=ubuntu-1, app=rhel8: the corpus' ksp-ubuntu-1-file-pattern-block (`/etc/*hado?`),
  ksp-ubuntu-1-file-pattern-owner-readonly-block (`/home/user1/secret_data*`, ownerOnly + readOnly) and
  ksp-block-stig-v-230487-telnet-server-binary (process `/**/*telnet-server*`);
- "c2", labels app=redhat: ksp-stig-v-230456-detect-chmod-process (process `/**/chmod`, Audit);
- "pat-own": our equivalents.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guest.held import HeldRead
from tests.guest.vm import REPO_ROOT, GuestVM

OWN = f"{REPO_ROOT}/tests/data/policies/patterns"
CORPUS_FILES = (
    "KubeArmor__examples__multiubuntu__security-policies__ksp-ubuntu-1-file-pattern-block.yaml",
    "KubeArmor__examples__multiubuntu__security-policies__ksp-ubuntu-1-file-pattern-owner-readonly-block.yaml",
    "policy-templates__stigs__system__ksp-block-stig-v-230487-telnet-server-binary.yaml",
    "policy-templates__stigs__system__ksp-stig-v-230456-detect-chmod-process.yaml",
)
CONTAINERS = {"c1": {"container": "ubuntu-1", "app": "rhel8"}, "c2": {"app": "redhat"}, "pat-own": {}}


def corpus_dir() -> Path | None:
    """../shared/kubearmor-corpus beside the checkout (a worktree may sit one level deeper)."""
    override = os.environ.get("WARDEN_KUBEARMOR_CORPUS")
    candidates = [Path(override)] if override else []
    candidates += [Path(REPO_ROOT).parent / "shared" / "kubearmor-corpus",
                   Path(REPO_ROOT).parent.parent / "shared" / "kubearmor-corpus"]
    return next((c for c in candidates if (c / "MANIFEST.tsv").is_file()), None)


LOADER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from bpf.kernel.engine import Engine
    from bpf.policy.files import load_policy_paths

    containers = json.loads(sys.argv[1])
    engine = Engine()
    engine.load_or_adopt(load_policy_paths([Path(p) for p in sys.argv[2:]]))
    digests = {c["name"]: engine.register_container(c["name"], c["labels"], c["pid_ns"], c["mnt_ns"])
               for c in containers}
    print(json.dumps({"digests": digests, "health": engine.health()}))
""")

READ_ALERTS = textwrap.dedent("""
    import json
    from bpf.kernel.engine import Engine
    for alert in Engine().read_alerts():
        print(json.dumps(alert.to_dict()))
""")

SETUP = """
set -e
mkdir -p /home/user1 /srv/data /srv/a/b /srv/cache /opt/tools /usr/local/bin
echo s > /etc/xhadoo; echo s > /etc/xhadooo
echo k > /home/user1/secret_data1; echo k > /home/user1/public_data
chown 1000:1000 /home/user1/secret_data1 /home/user1/public_data
echo k > /srv/data/secret_data2; chown 1000:1000 /srv/data/secret_data2
echo k > /srv/a/b/server.key; echo k > /srv/a/b/server.keys; echo k > /srv/top.key
echo t > /srv/cache/1a.tmp; echo t > /srv/cache/a1.tmp
for n in my-telnet-server-x telnet-client; do cp /bin/true /usr/local/bin/$n; done
for n in nc ncat netcat; do cp /bin/true /opt/tools/$n; done
for d in / /opt/tools/ /srv/a/b/; do cp /bin/true ${d}xname-blocked; cp /bin/true ${d}xname-blocked2; done
"""


def in_container(guest: GuestVM, pid: int, command: str, uid: int | None = None) -> tuple[int, str]:
    wrapped = command if uid is None else f"setpriv --reuid={uid} --regid={uid} --clear-groups sh -c '{command}'"
    result = guest.run(f"nsenter -t {pid} -m -p -- sh -c {json.dumps(wrapped)}")
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def containers(guest: GuestVM) -> Iterator[dict[str, int]]:
    guest.run("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf", check=True)
    guest.run(SETUP, check=True)
    pids: dict[str, int] = {}
    for i, name in enumerate(CONTAINERS):
        guest.run(f"setsid unshare -m -p -f --mount-proc sleep {200001 + i} >/dev/null 2>&1 &", check=True)
        for _ in range(100):
            found = guest.run(f"pgrep -f '^sleep {200001 + i}'")
            if found.returncode == 0:
                pids[name] = int(found.stdout.split()[0])
                break
            time.sleep(0.1)
        assert name in pids, f"container {name} did not start"
    yield pids
    for pid in pids.values():
        guest.run(f"kill {pid}")


@pytest.fixture(scope="module")
def loaded(guest: GuestVM, containers: dict[str, int]) -> dict[str, Any]:
    corpus = corpus_dir()
    paths = [OWN] + ([str(corpus / f) for f in CORPUS_FILES] if corpus else [])
    spec = []
    for name, labels in CONTAINERS.items():
        pid = containers[name]
        pid_ns = int(guest.run(f"stat -Lc %i /proc/{pid}/ns/pid", check=True).stdout)
        mnt_ns = int(guest.run(f"stat -Lc %i /proc/{pid}/ns/mnt", check=True).stdout)
        spec.append({"name": name, "labels": labels, "pid_ns": pid_ns, "mnt_ns": mnt_ns})
    script = guest.write_shared("patterns-loader.py", LOADER)
    # WARDEN_BPF_DIR (bpf.kernel.objects) reaches the guest's engine too: how a deliberately broken build
    # is shown to fail these tests.
    objects = os.environ.get("WARDEN_BPF_DIR")
    env = f"WARDEN_BPF_DIR={objects} " if objects else ""
    done = guest.run(f"cd {REPO_ROOT} && {env}{guest.venv_python} {script} '{json.dumps(spec)}' {' '.join(paths)}",
                     timeout=300)
    if done.returncode != 0:  # name the verifier's complaint, which the engine's one line may not hold
        why = guest.run(f"for o in file_guard exec_guard; do bpftool -d prog loadall {REPO_ROOT}/build/bpf/$o.bpf.o "
                        f"/sys/fs/bpf/why-$o 2>&1 | grep -B12 'processed [0-9]* insns' | tail -14; done",
                        timeout=600)
        pytest.fail(done.stdout + done.stderr + why.stdout)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["corpus"] = corpus is not None
    guest.python(READ_ALERTS)  # start the alert checks from an empty ring
    return result


def alerts(guest: GuestVM) -> list[dict[str, Any]]:
    return [json.loads(line) for line in guest.python(READ_ALERTS, check=True).stdout.splitlines()]


def test_loaded_and_healthy(loaded: dict[str, Any]) -> None:
    assert loaded["health"] == []
    assert set(loaded["digests"]) == set(CONTAINERS)


def test_own_file_patterns(guest: GuestVM, loaded: dict[str, Any], containers: dict[str, int]) -> None:
    pid = containers["pat-own"]
    denied = ["cat /etc/xhadoo", "cat /etc/shadow",  # `*` and `?`
              "cat /srv/cache/1a.tmp",  # [0-9]?
              "cat /srv/data/secret_data2",  # ownerOnly + readOnly: root is not the owner
              ]
    for command in denied:
        code, out = in_container(guest, pid, command)
        assert code != 0 and "Operation not permitted" in out, (command, out)
    allowed = ["cat /etc/xhadooo",  # one byte more than `?`
               "cat /etc/passwd", "cat /srv/cache/a1.tmp", "cat /srv/a/b/server.keys",
               "cat /srv/a/b/server.key"]  # Audit: allowed, alerted
    for command in allowed:
        code, out = in_container(guest, pid, command)
        assert code == 0, (command, out)
    # the owner may read, not write
    assert in_container(guest, pid, "cat /srv/data/secret_data2", uid=1000)[0] == 0
    code, out = in_container(guest, pid, "echo x >> /srv/data/secret_data2", uid=1000)
    assert code != 0 and "Operation not permitted" in out, out
    # outside the container the same paths are not restricted
    assert guest.run("cat /etc/xhadoo /srv/cache/1a.tmp").returncode == 0
    seen = {(a["PolicyName"], a["Resource"], a["Action"]) for a in alerts(guest) if a["ContainerName"] == "pat-own"}
    assert ("own-file-star-question-block", "/etc/xhadoo", "Block") in seen
    assert ("own-file-star-question-block", "/etc/shadow", "Block") in seen
    assert ("own-file-doublestar-audit", "/srv/a/b/server.key", "Audit") in seen
    assert ("own-file-owner-readonly-block", "/srv/data/secret_data2", "Block") in seen
    assert not any(r in ("/etc/xhadooo", "/srv/a/b/server.keys", "/srv/top.key", "/srv/cache/a1.tmp")
                   for _, r, _ in seen), seen


def test_own_process_patterns(guest: GuestVM, loaded: dict[str, Any], containers: dict[str, int]) -> None:
    pid = containers["pat-own"]
    for binary in ("/usr/local/bin/my-telnet-server-x", "/opt/tools/nc", "/opt/tools/ncat"):
        code, out = in_container(guest, pid, binary)
        assert code != 0 and "Operation not permitted" in out, (binary, out)
    for binary in ("/usr/local/bin/telnet-client", "/opt/tools/netcat"):
        assert in_container(guest, pid, binary)[0] == 0, binary
    assert in_container(guest, pid, "chmod 0644 /srv/top.key")[0] == 0  # Audit
    assert guest.run("/usr/local/bin/my-telnet-server-x").returncode == 0  # not in the container
    seen = {(a["PolicyName"], a["Resource"], a["Action"]) for a in alerts(guest) if a["ContainerName"] == "pat-own"}
    assert ("own-process-block", "/usr/local/bin/my-telnet-server-x", "Block") in seen
    assert ("own-process-block", "/opt/tools/ncat", "Block") in seen
    assert any(p == "own-process-audit" and r.endswith("/chmod") and a == "Audit" for p, r, a in seen), seen


def test_execname(guest: GuestVM, loaded: dict[str, Any], containers: dict[str, int]) -> None:
    # execname xname-blocked: the name at any depth, the root's directory included; not a longer name.
    pid = containers["pat-own"]
    for binary in ("/xname-blocked", "/opt/tools/xname-blocked", "/srv/a/b/xname-blocked"):
        code, out = in_container(guest, pid, binary)
        assert code != 0 and "Operation not permitted" in out, (binary, out)
    for binary in ("/xname-blocked2", "/opt/tools/xname-blocked2"):
        assert in_container(guest, pid, binary)[0] == 0, binary
    assert guest.run("/opt/tools/xname-blocked").returncode == 0  # not in the container
    seen = {(a["PolicyName"], a["Resource"], a["Action"]) for a in alerts(guest) if a["ContainerName"] == "pat-own"}
    assert ("own-process-execname", "/xname-blocked", "Block") in seen
    assert ("own-process-execname", "/srv/a/b/xname-blocked", "Block") in seen


def test_corpus_policies(guest: GuestVM, loaded: dict[str, Any], containers: dict[str, int]) -> None:
    # A test that cannot run here fails, never skips: the corpus is beside every checkout CI runs.
    assert loaded["corpus"], "../shared/kubearmor-corpus is not beside this checkout"
    c1, c2 = containers["c1"], containers["c2"]
    code, out = in_container(guest, c1, "cat /etc/xhadoo")
    assert code != 0 and "Operation not permitted" in out, out
    assert in_container(guest, c1, "cat /etc/xhadooo")[0] == 0
    code, out = in_container(guest, c1, "cat /home/user1/secret_data1")  # root is not its owner
    assert code != 0 and "Operation not permitted" in out, out
    assert in_container(guest, c1, "cat /home/user1/secret_data1", uid=1000)[0] == 0
    assert in_container(guest, c1, "cat /home/user1/public_data")[0] == 0
    code, out = in_container(guest, c1, "/usr/local/bin/my-telnet-server-x")
    assert code != 0 and "Operation not permitted" in out, out
    assert in_container(guest, c1, "/usr/local/bin/telnet-client")[0] == 0
    assert in_container(guest, c2, "chmod 0644 /srv/top.key")[0] == 0  # Audit only
    assert in_container(guest, c2, "cat /etc/xhadoo")[0] == 0  # c1's policy, not c2's
    seen = {(a["ContainerName"], a["PolicyName"], a["Resource"], a["Action"]) for a in alerts(guest)}
    assert ("c1", "ksp-ubuntu-1-file-pattern-block", "/etc/xhadoo", "Block") in seen
    assert ("c1", "ksp-ubuntu-1-file-pattern-owner-readonly-block", "/home/user1/secret_data1", "Block") in seen
    assert ("c1", "ksp-block-stig-v-230487-telnet-server-binary", "/usr/local/bin/my-telnet-server-x",
            "Block") in seen
    assert any(c == "c2" and p == "ksp-audit-stig-v-230456-detect-chmod-process" and r.endswith("/chmod")
               and a == "Audit" for c, p, r, a in seen), seen


LONG_DIR = "/srv/long/" + "/".join(["d" * 60] * 5)  # 315 bytes: past the pattern walk's 255


def test_a_path_too_long_for_the_pattern_walk_fails_closed(guest: GuestVM, loaded: dict[str, Any],
                                                          containers: dict[str, int]) -> None:
    """No pattern names it, but the kernel could not match the path against them: the scope's strictest
    rule (a Block) decides, alerted; a scope without file patterns and the host still read it."""
    guest.run(f"mkdir -p {LONG_DIR} && echo x > {LONG_DIR}/plain.txt", check=True)
    alerts(guest)
    code, out = in_container(guest, containers["pat-own"], f"cat {LONG_DIR}/plain.txt")
    assert code != 0 and "Operation not permitted" in out, out
    assert in_container(guest, containers["c2"], f"cat {LONG_DIR}/plain.txt")[0] == 0
    assert guest.run(f"cat {LONG_DIR}/plain.txt").returncode == 0
    # the alert holds the root side of the path, the part that fit, and says it is truncated
    seen = [a for a in alerts(guest) if a["ContainerName"] == "pat-own"]
    denied = [a for a in seen if a["Resource"].startswith("/srv/long/") and "truncated=true" in a["Data"]]
    assert denied and denied[0]["Action"] == "Block", seen


def test_an_owner_only_allow_is_decided_at_every_read(guest: GuestVM, loaded: dict[str, Any],
                                                      containers: dict[str, int]) -> None:
    """The owner (uid 1000) reads /srv/data/secret_data2 through a descriptor it keeps; the file is given to
    root; the next read through the same descriptor is refused (ownerOnly). An allow that asked whose the
    file is is never remembered (bpf/progs/warden_held.h), unlike /srv/cache/a1.tmp's, a path-only one,
    whose reads keep working."""
    launch = f"nsenter -t {containers['pat-own']} -m -p -- setpriv --reuid=1000 --regid=1000 --clear-groups"
    owner = HeldRead.start(guest, "owner", "/srv/data/secret_data2", launch=launch)
    neighbour = HeldRead.start(guest, "path-only", "/srv/cache/a1.tmp", launch=launch)
    assert owner.before == neighbour.before == ["ok", "ok", "ok"]
    guest.run("chown 0:0 /srv/data/secret_data2", check=True)
    try:
        assert owner.after() == "EPERM"
    finally:
        guest.run("chown 1000:1000 /srv/data/secret_data2", check=True)
    assert neighbour.after() == "ok"
    seen = {(a["PolicyName"], a["Resource"], a["Data"].split()[0]) for a in alerts(guest)
            if a["ContainerName"] == "pat-own"}
    assert ("own-file-owner-readonly-block", "/srv/data/secret_data2", "lsm=FILE_PERMISSION") in seen, seen


def test_an_audited_file_alerts_at_every_open_and_not_at_every_read(guest: GuestVM, loaded: dict[str, Any],
                                                                    containers: dict[str, int]) -> None:
    """Three opens of /srv/a/b/server.key (own-file-doublestar-audit), each read twice, from one process: the
    kernel hands the same struct file back to each open, but a remembered allow that alerted is not
    reused at an open. Reads through an open descriptor do not alert again."""
    alerts(guest)
    script = guest.write_shared("audited-opens.py", "for _ in range(3):\n"
                                "    with open('/srv/a/b/server.key', 'rb', buffering=0) as f:\n"
                                "        f.read(1)\n        f.read(1)\n")
    code, out = in_container(guest, containers["pat-own"], f"/usr/bin/python3 {script}")
    assert code == 0, out
    hooks = [a["Data"].split()[0] for a in alerts(guest)
             if a["ContainerName"] == "pat-own" and a["Resource"] == "/srv/a/b/server.key"]
    assert hooks == ["lsm=FILE_OPEN"] * 3, hooks
