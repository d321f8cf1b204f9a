"""Issue 15 items 1 and 10: which signed rules apply to a container, and who may register one.

Pod identity (labels, namespace, container names) comes from the signed bundle's `pod`; the host's
annotations can only pick among the signed container names, and a container that cannot be
identified gets the union of every policy that could apply to it, never none. The control socket
takes registrations from uid 0 only, for processes whose namespaces are a container's, and never
relabels a registered scope.

The kernel side (the scope in the BPF maps) cannot load on this host kernel; the engine here
records what it was asked. tests/guest/test_supervisor_service.py checks the same path with the real
engine, unit and crun.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from bpf.policy.compiler import ContainerScope, PodUnionScope, compile
from bpf.policy.yaml_loader import parse_policy_text
from initdata.bundle import PodIdentity, parse_payload, parse_pod
from initdata.errors import MalformedBundle
from supervisor.control import ControlServer, RegisterRequest, Reply, call
from supervisor.registry import ContainerRegistry, NotAContainer, container_namespaces
from tests.data.initdata.factory import FIXTURE_NOW, make_envelope, signing_key
from trust.identity import Named, Union, identify, policies_for_pod, selects

POLICIES = parse_policy_text(textwrap.dedent("""\
    apiVersion: security.kubearmor.com/v1
    kind: KubeArmorPolicy
    metadata: {name: block-mysql-data-access}
    spec:
      selector: {matchLabels: {app: mysql}}
      file: {matchDirectories: [{dir: /var/lib/mysql/, recursive: true}]}
      action: Block
    ---
    apiVersion: security.kubearmor.com/v1
    kind: KubeArmorPolicy
    metadata: {name: sidecar-only, namespace: prod}
    spec:
      selector: {matchLabels: {app: mysql, kubearmor.io/container.name: sidecar}}
      file: {matchPaths: [{path: /etc/sidecar.conf}]}
      action: Block
    ---
    apiVersion: security.kubearmor.com/v1
    kind: KubeArmorPolicy
    metadata: {name: other-namespace, namespace: staging}
    spec:
      selector: {matchLabels: {app: mysql}}
      file: {matchPaths: [{path: /etc/staging}]}
      action: Block
    ---
    apiVersion: security.kubearmor.com/v1
    kind: KubeArmorPolicy
    metadata: {name: web-only}
    spec:
      selector: {matchLabels: {app: web}}
      file: {matchPaths: [{path: /etc/web}]}
      action: Block
    """), origin="policies.yaml")

# The test's own namespaces stand for the VM's (PID 1's links are not readable on this host; the
# guest supervisor reads PID 1's with CAP_SYS_PTRACE).
HOST = os.getpid()
POD = PodIdentity(namespace="prod", labels=MappingProxyType({"app": "mysql"}), containers=("mysql", "sidecar"))


def names(policies: Any) -> set[str]:
    return {p.name for p in policies}


def applying(identity: Named | Union, pod: PodIdentity | None) -> set[str]:
    return {p.name for p in POLICIES if selects(p, identity, pod)}


def test_a_signed_container_name_gets_its_rules_with_the_signed_labels() -> None:
    assert identify(POD, "mysql") == Named("mysql")
    assert applying(Named("mysql"), POD) == {"block-mysql-data-access"}
    assert applying(Named("sidecar"), POD) == {"block-mysql-data-access", "sidecar-only"}


def test_an_unknown_name_gets_the_union_never_none() -> None:
    """The issue's attack: the host renames or relabels the mysql container; it still gets the mysql rules."""
    for reported in ("mysql-but-not-quite", "web", "x" * 300):
        identity = identify(POD, reported)
        assert isinstance(identity, Union)
        assert applying(identity, POD) == {"block-mysql-data-access", "sidecar-only"}


def test_without_a_signed_pod_every_container_policy_applies() -> None:
    identity = identify(None, "mysql")
    assert isinstance(identity, Union)
    assert applying(identity, None) == {"block-mysql-data-access", "sidecar-only", "other-namespace", "web-only"}


def test_a_policy_of_another_namespace_does_not_apply() -> None:
    assert names(policies_for_pod(POLICIES, POD)) == {"block-mysql-data-access", "sidecar-only", "web-only"}
    assert names(policies_for_pod(POLICIES, None)) == names(POLICIES)  # unknown namespace: keep all


def test_the_compiler_union_scope_matches_the_trust_rule() -> None:
    union = compile(policies_for_pod(POLICIES, POD), PodUnionScope(POD.labels))
    named = compile(policies_for_pod(POLICIES, POD), ContainerScope("mysql", POD.labels))
    union_paths = {r.path for r in union.file}
    assert "/var/lib/mysql/" in union_paths and "/etc/sidecar.conf" in union_paths
    assert "/etc/web" not in union_paths and "/etc/staging" not in union_paths
    assert {r.path for r in named.file} == {"/var/lib/mysql/"}
    everything = compile(POLICIES, PodUnionScope(None))
    assert {r.path for r in everything.file} == {"/var/lib/mysql/", "/etc/sidecar.conf", "/etc/staging",
                                                       "/etc/web"}


# -- the signed pod in the bundle and the CLI ----------------------------------------------------


def test_pod_round_trips_through_a_signed_payload() -> None:
    envelope = make_envelope([signing_key("owner-ed25519")])
    assert parse_payload(json.loads(envelope.to_json()) and envelope.payload, origin="b").pod is None
    from initdata.bundle import build_payload
    from tests.data.initdata.factory import FIXTURE_EXPIRES, policy_files

    payload = build_payload(version=1, expires=FIXTURE_EXPIRES, policies=policy_files(), pod=POD)
    assert parse_payload(payload, origin="b").pod == POD
    assert FIXTURE_NOW < FIXTURE_EXPIRES


@pytest.mark.parametrize(("pod", "field"), [
    ({"namespace": "Prod", "labels": {}, "containers": ["a"]}, "namespace"),
    ({"namespace": "prod", "labels": {"a,b": "c"}, "containers": ["a"]}, "labels"),
    ({"namespace": "prod", "labels": {"app": "x=y"}, "containers": ["a"]}, "labels"),
    ({"namespace": "prod", "labels": {}, "containers": []}, "containers"),
    ({"namespace": "prod", "labels": {}, "containers": ["a", "a"]}, "containers"),
    ({"namespace": "prod", "labels": {}, "containers": ["A_b"]}, "containers[0]"),
    ({"namespace": "prod", "containers": ["a"], "serviceAccount": "x"}, "serviceAccount"),
])
def test_malformed_pods_are_refused(pod: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedBundle, match=re.escape(f"payload.pod.{field}")):
        parse_pod(pod, origin="b")


def test_bundle_sign_takes_a_pod_manifest(tmp_path: Path) -> None:
    from tests.data.initdata.factory import KEYS
    from tests.data.initdata.factory import POLICIES as POLICY_DIR

    manifest = tmp_path / "pod.yaml"
    manifest.write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: Pod
        metadata: {name: db-0, namespace: prod, labels: {app: mysql}}
        spec:
          initContainers: [{name: init-db, image: busybox}]
          containers: [{name: mysql, image: mysql}, {name: sidecar, image: envoy}]
        """))
    out = tmp_path / "bundle.json"
    warden = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "warden"
    subprocess.run([warden, "bundle", "sign", str(POLICY_DIR), "--key", str(KEYS / "owner-ed25519.key"),
                    "--version", "3", "--expires", "+30d", "--pod", str(manifest), "-o", str(out)],
                   check=True, capture_output=True)
    import base64

    payload = json.loads(base64.b64decode(json.loads(out.read_text())["payload"]))
    assert payload["pod"] == {"namespace": "prod", "labels": {"app": "mysql"},
                              "containers": ["init-db", "mysql", "sidecar"]}


# -- the registry: namespaces from /proc, the container rule, no relabelling -----------------------


class RecordingEngine:
    """Records register_container calls (the host kernel cannot load the LSM programs)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Mapping[str, str], int, int, str]] = []
        self.first_pids: list[int | None] = []  # the process the engine records the scope on (task storage)

    def register_container(self, name: str, labels: Mapping[str, str], pid_ns: int, mnt_ns: int,
                           pid: int | None = None, *, kind: str = "container", identity: object = None) -> str:
        self.calls.append((name, dict(labels), pid_ns, mnt_ns, kind))
        self.first_pids.append(pid)
        return f"sha256:{len(self.calls):064x}"


@pytest.fixture
def container_pid() -> Iterator[int]:
    """A real process in new pid and mount namespaces (what crun gives a container's init)."""
    process = subprocess.Popen(["unshare", "--pid", "--mount", "--fork", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
            if children and os.readlink(f"/proc/{children[0]}/ns/pid") != os.readlink(f"/proc/{HOST}/ns/pid"):
                yield int(children[0])
                break
            time.sleep(0.05)
        else:
            raise AssertionError("unshare did not start a process in new namespaces")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def request(pid: int, name: str = "mysql", container_id: str = "c1") -> RegisterRequest:
    return RegisterRequest(container_id=container_id, pid=pid, name=name)


def test_a_container_is_registered_with_the_signed_labels(tmp_path: Path, container_pid: int) -> None:
    registry, engine = ContainerRegistry(tmp_path / "containers.json", host_pid=HOST), RecordingEngine()
    reply = registry.register(engine, request(container_pid), POD)  # type: ignore[arg-type]
    assert reply.ok, reply.error
    pid_ns, mnt_ns = container_namespaces(container_pid, host_pid=HOST)
    assert engine.calls == [("mysql", {"app": "mysql"}, pid_ns, mnt_ns, "container")]
    assert engine.first_pids == [container_pid]


def test_an_unlisted_name_is_registered_as_the_union(tmp_path: Path, container_pid: int) -> None:
    registry, engine = ContainerRegistry(tmp_path / "containers.json", host_pid=HOST), RecordingEngine()
    assert registry.register(engine, request(container_pid, name="mysql-but-not-quite"), POD).ok  # type: ignore[arg-type]
    assert engine.calls[0][1] == {"app": "mysql"} and engine.calls[0][4] == "container-union"
    registry2, engine2 = ContainerRegistry(tmp_path / "c2.json", host_pid=HOST), RecordingEngine()
    assert registry2.register(engine2, request(container_pid), None).ok  # type: ignore[arg-type]
    assert engine2.calls[0][4] == "container-union-all"


def test_a_second_register_cannot_relabel(tmp_path: Path, container_pid: int, caplog: pytest.LogCaptureFixture) -> None:
    registry, engine = ContainerRegistry(tmp_path / "containers.json", host_pid=HOST), RecordingEngine()
    first = registry.register(engine, request(container_pid), POD)  # type: ignore[arg-type]
    assert first.ok
    again = registry.register(engine, request(container_pid), POD)  # type: ignore[arg-type]
    assert again.ok and again.body["ruleset"] == first.body["ruleset"]  # a retried hook is answered
    for changed in (request(container_pid, name="sidecar"), request(container_pid, container_id="c2"),
                    request(container_pid, name="web")):
        reply = registry.register(engine, changed, POD)  # type: ignore[arg-type]
        assert not reply.ok and "not relabelled" in reply.error
    assert len(engine.calls) == 1
    assert "would relabel" in caplog.text


def test_a_host_process_cannot_be_registered(tmp_path: Path) -> None:
    registry, engine = ContainerRegistry(tmp_path / "containers.json", host_pid=HOST), RecordingEngine()
    reply = registry.register(engine, request(os.getpid()), POD)  # type: ignore[arg-type]
    assert not reply.ok and "host's pid namespace" in reply.error
    assert engine.calls == []
    with pytest.raises(NotAContainer, match="cannot read"):
        container_namespaces(2**22 + 12345, host_pid=HOST)


def test_only_a_new_mount_namespace_is_not_enough(tmp_path: Path) -> None:
    process = subprocess.Popen(["unshare", "--mount", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{process.pid}/ns/mnt") == os.readlink(f"/proc/{HOST}/ns/mnt"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(NotAContainer, match="host's pid namespace"):
            container_namespaces(process.pid, host_pid=HOST)
    finally:
        process.kill()
        process.wait()


# -- item 10: SO_PEERCRED ----------------------------------------------------------------------


def test_a_non_root_peer_is_refused_even_if_the_socket_mode_is_wrong() -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="warden-peercred-"))  # pytest's base dir is 0700: nobody cannot reach it
    seen: list[Any] = []
    server = ControlServer(tmp_path / "warden.sock", lambda r: seen.append(r) or Reply(ok=True))
    server.start()
    try:
        os.chmod(tmp_path, 0o755)
        os.chmod(tmp_path / "warden.sock", 0o666)  # a mistake the uid check must still catch
        script = textwrap.dedent(f"""
            import os, socket
            os.setgid(65534); os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect({str(tmp_path / 'warden.sock')!r})
            print(s.recv(4096).decode().strip())  # refused at accept, before any request is read
            """)
        result = subprocess.run(["python3", "-c", script], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"ok": False, "error": "uid 65534 may not use the control socket",
                                             "retry": False}
        assert seen == []
        assert call(tmp_path / "warden.sock", {"op": "status"})["ok"]  # root still may
    finally:
        server.close()
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_peer_credentials_are_the_connecting_process(tmp_path: Path) -> None:
    from supervisor.control import peer_credentials

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())
