"""`warden hook`: OCI state parsing, the register message, ack waiting, failing closed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.control import (
    ControlServer,
    ProtocolError,
    RegisterRequest,
    Reply,
    Request,
    UnregisterRequest,
    parse_request,
)
from supervisor.hook import (
    HookError,
    Stage,
    infer_stage,
    parse_state,
    register_message,
    run_hook,
)

REPO = Path(__file__).resolve().parents[1]
WARDEN = REPO / ".venv" / "bin" / "warden"


def state(**overrides: object) -> bytes:
    data: dict[str, object] = {"ociVersion": "1.0.2", "id": "abc123", "status": "created", "pid": os.getpid(),
                               "bundle": "/run/bundle", "annotations": {}}
    data.update(overrides)
    return json.dumps(data).encode()


class Supervisor:
    """A control-socket peer that says "not ready" a few times, then acknowledges."""

    def __init__(self, not_ready: int = 0, refuse: bool = False) -> None:
        self.not_ready = not_ready
        self.refuse = refuse
        self.requests: list[Request] = []

    def __call__(self, request: Request) -> Reply:
        self.requests.append(request)
        if self.not_ready > 0:
            self.not_ready -= 1
            return Reply.failure("supervisor is not ready (phase attesting)", retry=True)
        if self.refuse:
            return Reply.failure("engine refused abc123: map full")
        return Reply(ok=True, body={"ruleset": "sha256:feed"})


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "warden.sock"


def serve(path: Path, peer: Supervisor) -> ControlServer:
    srv = ControlServer(path, peer)
    srv.start()
    return srv


@pytest.fixture
def ready(sock: Path) -> Iterator[Supervisor]:
    peer = Supervisor()
    srv = serve(sock, peer)
    yield peer
    srv.close()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"{not json", "not JSON (Expecting property name"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "must be a JSON object"),
        (json.dumps({"ociVersion": "1.0.2", "status": "created", "bundle": "/b"}).encode(), "'id'"),
        (state(pid="12"), "'pid'"),
        (state(pid=-4), "'pid'"),
        (state(pid=True), "'pid'"),
        (state(annotations={"a": 1}), "'annotations'"),
        (state(bundle=""), "'bundle'"),
    ],
)
def test_malformed_state_is_refused_with_the_field(raw: bytes, message: str) -> None:
    with pytest.raises(HookError) as caught:
        parse_state(raw)
    assert message in str(caught.value)
    assert str(caught.value).startswith("stdin:")


def test_the_name_comes_from_annotations_and_labels_are_never_sent() -> None:
    """Issue 15 item 1: labels select rules, so they come from the signed bundle, not annotations."""
    parsed = parse_state(state(annotations={"io.kubernetes.cri.container-name": "mysql",
                                            "io.katacontainers.warden.labels": "app=mysql-but-not-quite",
                                            "io.kubernetes.cri.sandbox-name": "db-0",
                                            "io.kubernetes.cri.sandbox-namespace": "prod"}))
    assert parsed.name == "mysql"
    message = register_message(parsed)
    assert message == {"op": "register", "id": "abc123", "pid": os.getpid(), "name": "mysql",
                       "pod_name": "db-0", "pod_namespace": "prod"}
    assert parse_state(state(annotations={"io.kubernetes.container.name": "crio-name"})).name == "crio-name"
    assert parse_state(state()).name == "abc123"


def test_pod_and_namespace_for_alerts_come_from_the_cri_annotations() -> None:
    parsed = parse_state(state(annotations={"io.kubernetes.cri.container-name": "mysql",
                                            "io.kubernetes.cri.sandbox-name": "mysql-0",
                                            "io.kubernetes.cri.sandbox-namespace": "db"}))
    assert (parsed.pod, parsed.namespace) == ("mysql-0", "db")
    message = register_message(parsed)
    assert (message["pod_name"], message["pod_namespace"], message["name"]) == ("mysql-0", "db", "mysql")
    assert parse_request(json.dumps(message).encode()) == RegisterRequest(
        "abc123", message["pid"], "mysql", pod_name="mysql-0", pod_namespace="db")
    crio = parse_state(state(annotations={"io.kubernetes.pod.name": "p", "io.kubernetes.pod.namespace": "n"}))
    assert (crio.pod, crio.namespace) == ("p", "n")
    assert (parse_state(state()).pod, parse_state(state()).namespace) == ("", "")  # none: empty, not invented
    assert "pod_name" not in register_message(parse_state(state()))
    with pytest.raises(ProtocolError, match="pod_namespace: must be a printable string"):
        parse_request(json.dumps({**message, "pod_namespace": "a\nb"}).encode())


def test_stage_is_inferred_from_status_for_kata_guest_hooks() -> None:
    assert infer_stage(parse_state(state(status="stopped", pid=None))) is Stage.POSTSTOP
    assert infer_stage(parse_state(state(status="creating"))) is Stage.CREATE_RUNTIME


def test_register_waits_for_the_ack(sock: Path, ready: Supervisor) -> None:
    line = run_hook(state(annotations={"io.kubernetes.cri.container-name": "web"}), stage=Stage.CREATE_RUNTIME,
                    socket_path=sock, timeout_s=5)
    assert "registered abc123 as 'web'" in line and "sha256:feed" in line
    request = ready.requests[0]
    assert isinstance(request, RegisterRequest)
    assert request.pid == os.getpid() and request.name == "web"


def test_not_ready_is_waited_out(sock: Path) -> None:
    peer = Supervisor(not_ready=3)
    srv = serve(sock, peer)
    try:
        run_hook(state(), stage=None, socket_path=sock, timeout_s=5)
    finally:
        srv.close()
    assert len(peer.requests) == 4


def test_no_supervisor_fails_closed_after_the_timeout(sock: Path) -> None:
    started = time.monotonic()
    with pytest.raises(HookError, match=r"within 0.5s .*nothing listening.*failing closed"):
        run_hook(state(), stage=Stage.PRESTART, socket_path=sock, timeout_s=0.5)
    assert 0.4 < time.monotonic() - started < 3


def test_supervisor_never_ready_fails_closed(sock: Path) -> None:
    srv = serve(sock, Supervisor(not_ready=10**6))
    try:
        with pytest.raises(HookError, match=r"not ready .*failing closed"):
            run_hook(state(), stage=Stage.CREATE_RUNTIME, socket_path=sock, timeout_s=0.5)
    finally:
        srv.close()


def test_a_refusal_fails_at_once(sock: Path) -> None:
    srv = serve(sock, Supervisor(refuse=True))
    try:
        started = time.monotonic()
        with pytest.raises(HookError, match="refused register of abc123: engine refused"):
            run_hook(state(), stage=Stage.CREATE_RUNTIME, socket_path=sock, timeout_s=10)
        assert time.monotonic() - started < 2
    finally:
        srv.close()


def test_poststop_unregisters_by_id(sock: Path, ready: Supervisor) -> None:
    assert run_hook(state(status="stopped", pid=None), stage=None, socket_path=sock, timeout_s=5) == \
        "unregistered abc123"
    assert isinstance(ready.requests[0], UnregisterRequest)


def test_poststop_with_crun_pid_zero_unregisters(sock: Path, ready: Supervisor) -> None:
    assert run_hook(state(status="stopped", pid=0), stage=None, socket_path=sock, timeout_s=5) == \
        "unregistered abc123"


def test_pid_zero_of_a_running_container_is_refused(sock: Path) -> None:
    with pytest.raises(HookError, match="'pid' is 0, not a positive integer"):
        run_hook(state(pid=0), stage=None, socket_path=sock, timeout_s=1)


def test_create_stage_on_a_stopped_container_is_an_error(sock: Path) -> None:
    with pytest.raises(HookError, match="already stopped"):
        run_hook(state(status="stopped"), stage=Stage.CREATE_RUNTIME, socket_path=sock, timeout_s=1)


def test_cli_malformed_state_one_line_exit_1(sock: Path) -> None:
    result = subprocess.run([WARDEN, "hook", "--stage", "createRuntime", "--socket", str(sock), "--timeout", "1"],
                            input=b"{\"ociVersion\": ", capture_output=True, timeout=60)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("warden hook: stdin: OCI state: not JSON")


def test_cli_usage_error_exit_2() -> None:
    result = subprocess.run([WARDEN, "hook", "--stage", "poststart"], input=b"", capture_output=True, timeout=60)
    assert result.returncode == 2


def test_the_hook_command_imports_neither_the_gate_nor_the_engine() -> None:
    """`warden hook` runs on every container start: it loads the control protocol, not warden's bulk."""
    code = ("import sys\nfrom supervisor.cli import main\n"
            "code = main(['hook', '--stage', 'poststop', '--socket', '/nonexistent', '--timeout', '0.1'])\n"
            "heavy = [m for m in ('trust.gate', 'bpf.kernel.engine', 'bpf.policy.compiler', 'cryptography', 'yaml') "
            "if m in sys.modules]\n"
            "print(code, heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], input=b"", capture_output=True, check=True).stdout
    assert out.decode().strip() == "1 []"
