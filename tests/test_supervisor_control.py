"""The control socket protocol over a real AF_UNIX socket: replies, bounds, garbage, permissions."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import control
from supervisor.control import (
    ControlServer,
    ControlUnavailable,
    ProtocolError,
    RegisterRequest,
    Reply,
    Request,
    StatusRequest,
    UnregisterRequest,
    call,
    parse_request,
)

REGISTER = {"op": "register", "id": "c0ffee", "pid": 4242, "name": "mysql", "pod_name": "db-0",
            "pod_namespace": "prod"}


class Recorder:
    def __init__(self) -> None:
        self.requests: list[Request] = []

    def __call__(self, request: Request) -> Reply:
        self.requests.append(request)
        if isinstance(request, StatusRequest):
            return Reply(ok=True, body={"status": {"phase": "ready"}})
        if isinstance(request, RegisterRequest) and request.name == "explode":
            raise RuntimeError("handler bug")
        return Reply(ok=True, body={"seen": type(request).__name__})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, Recorder]]:
    path = tmp_path / "run" / "warden.sock"
    recorder = Recorder()
    srv = ControlServer(path, recorder)
    srv.start()
    yield path, recorder
    srv.close()


def raw_exchange(path: Path, data: bytes, *, shutdown: bool = True) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(path))
        with contextlib.suppress(BrokenPipeError):
            conn.sendall(data)
        if shutdown:
            conn.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return [json.loads(line) for line in b"".join(chunks).splitlines() if line]


def test_socket_is_0600_and_requests_are_dispatched_typed(server: tuple[Path, Recorder]) -> None:
    path, recorder = server
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert call(path, {"op": "status"}) == {"ok": True, "status": {"phase": "ready"}}
    assert call(path, REGISTER)["ok"]
    assert call(path, {"op": "unregister", "id": "c0ffee"})["ok"]
    register = recorder.requests[1]
    assert isinstance(register, RegisterRequest)
    assert (register.name, register.pid, register.pod_name, register.pod_namespace) == ("mysql", 4242, "db-0", "prod")
    assert isinstance(recorder.requests[2], UnregisterRequest)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"\xff\xfe garbage", "not JSON"),
        (b"{\"op\": ", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{\"op\": \"rm -rf\"}", "op:"),
        (b"{\"op\": \"status\", \"extra\": 1}", "extra: unknown field"),
        (json.dumps({**REGISTER, "pid": -1}).encode(), "pid:"),
        (json.dumps({**REGISTER, "pid": 1}).encode(), "pid:"),
        (json.dumps({**REGISTER, "pid": True}).encode(), "pid:"),
        (json.dumps({**REGISTER, "id": "../etc"}).encode(), "id:"),
        # Labels and namespace ids are no longer a client's to give (issue 15 items 1 and 10).
        (json.dumps({**REGISTER, "labels": {"app": "mysql"}}).encode(), "labels: unknown field"),
        (json.dumps({**REGISTER, "pid_ns": 4026532001}).encode(), "pid_ns: unknown field"),
        (b"[" * 100_000 + b"]" * 100_000, "larger than"),
    ],
)
def test_garbage_gets_an_error_reply_and_the_server_lives_on(
    server: tuple[Path, Recorder], line: bytes, error: str
) -> None:
    path, recorder = server
    replies = raw_exchange(path, line + b"\n")
    assert len(replies) == 1
    assert replies[0]["ok"] is False
    assert error in str(replies[0]["error"])
    assert replies[0]["retry"] is False
    assert call(path, {"op": "status"})["ok"]
    assert not any(isinstance(r, RegisterRequest) for r in recorder.requests)


def test_oversized_message_without_newline_is_cut_off(server: tuple[Path, Recorder]) -> None:
    path, _ = server
    replies = raw_exchange(path, b"x" * (control.MAX_MESSAGE_BYTES + 10), shutdown=False)
    assert replies and "larger than" in str(replies[0]["error"])


def test_silent_client_is_dropped_after_the_timeout(
    server: tuple[Path, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = server
    monkeypatch.setattr(control, "READ_TIMEOUT_S", 0.3)
    replies = raw_exchange(path, b"{\"op\": \"sta", shutdown=False)
    assert "no complete request" in str(replies[0]["error"])


def test_several_requests_on_one_connection_and_a_handler_bug(server: tuple[Path, Recorder]) -> None:
    path, _ = server
    lines = b"\n".join([b'{"op":"status"}', b"", json.dumps({**REGISTER, "name": "explode"}).encode(),
                        b'{"op":"reload"}']) + b"\n"
    replies = raw_exchange(path, lines)
    assert [r["ok"] for r in replies] == [True, False, True]
    assert replies[1]["error"] == "internal error: RuntimeError"


def test_concurrent_clients(server: tuple[Path, Recorder]) -> None:
    path, _ = server
    results: list[bool] = []

    def client() -> None:
        results.append(bool(call(path, {"op": "status"})["ok"]))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 8


def test_a_burst_of_clients_queues_before_the_accept_thread_runs(tmp_path: Path) -> None:
    # What made test_concurrent_clients fail under load: clients connecting faster than the accept thread
    # runs found socketserver's 5-deep listen queue full, and a connect with a timeout failed at once (EAGAIN).
    # Here the accept thread has not started at all while MAX_CONNECTIONS clients connect.
    path = tmp_path / "warden.sock"
    srv = ControlServer(path, Recorder())
    conns = [control.connect(path, 2.0) for _ in range(control.MAX_CONNECTIONS)]
    try:
        srv.start()
        for conn in conns:
            conn.sendall(b'{"op": "status"}\n')
        for conn in conns:
            assert json.loads(conn.recv(65536).split(b"\n")[0])["ok"] is True
    finally:
        for conn in conns:
            conn.close()
        srv.close()


def test_a_full_queue_is_waited_out_then_reported(tmp_path: Path) -> None:
    path = tmp_path / "busy.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(0)  # room for one queued connection; nobody accepts
        queued = control.connect(path, 1.0)
        try:
            with pytest.raises(ControlUnavailable, match=r"queue stayed full for 0\.2s"):
                call(path, {"op": "status"}, timeout=0.2)
            # Room appears while a client waits: the wait ends in a connection, not an error.
            accepter = threading.Thread(target=lambda: listener.accept()[0].close())
            accepter.start()
            waiting = control.connect(path, 10.0)
            accepter.join()
            waiting.close()
        finally:
            queued.close()


def test_stale_socket_is_replaced_but_a_regular_file_is_not(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()  # a socket file nobody listens on, as a killed supervisor leaves it
    srv = ControlServer(stale, Recorder())
    srv.start()
    try:
        assert call(stale, {"op": "status"})["ok"]
    finally:
        srv.close()
    regular = tmp_path / "regular"
    regular.write_text("not a socket")
    with pytest.raises(ProtocolError, match="not a socket"):
        ControlServer(regular, Recorder())


def test_call_without_a_server(tmp_path: Path) -> None:
    with pytest.raises(ControlUnavailable, match="nothing listening"):
        call(tmp_path / "absent.sock", {"op": "status"})


def test_parse_request_defaults_the_name_to_the_id() -> None:
    request = parse_request(json.dumps({k: v for k, v in REGISTER.items() if k != "name"}).encode())
    assert isinstance(request, RegisterRequest)
    assert request.name == "c0ffee"


# -- the peer's cgroup (issue 15 item 10: SO_PEERCRED uid 0 and the expected cgroup) ----------------


def test_cgroup_patterns_match_component_by_component() -> None:
    default = control.DEFAULT_ALLOWED_CGROUPS
    assert control.cgroup_allowed("/system.slice/kata-agent.service", default)
    assert control.cgroup_allowed("/system.slice/warden-testbed-agent.service", default)
    assert control.cgroup_allowed("/", default)  # kata-agent as init
    # Where kata-agent puts containers (rustjail container.rs): systemd driver, cgroupfs default,
    # a Kubernetes cgroupsPath; and a login session.
    for cgroup in ("/system.slice/kata_agent-c0ffee.scope", "/c0ffee", "/kubepods/besteffort/pod1/c0ffee",
                   "/user.slice/user-0.slice/session-1.scope", "/system.slice/kata-agent.service/child",
                   "/system.slice/x.service/../y.service"):
        assert not control.cgroup_allowed(cgroup, default), cgroup
    # `*` never spans a `/`.
    assert not control.cgroup_allowed("/system.slice/a/b.service", ("/system.slice/*.service",))
    assert control.cgroup_allowed("/system.slice/kata-agent.service", ("/system.slice/kata-agent.service",))


def serve_with(tmp_path: Path, **options: object) -> tuple[ControlServer, Path]:
    path = tmp_path / "run" / "warden.sock"
    srv = ControlServer(path, Recorder(), **options)  # type: ignore[arg-type]
    srv.start()
    return srv, path


def test_the_real_peers_cgroup_is_checked(tmp_path: Path) -> None:
    """A real connection; the kernel's SO_PEERCRED pid; that process's real /proc/<pid>/cgroup."""
    own = control.peer_cgroup(os.getpid())
    assert own is not None and own.startswith("/")
    srv, path = serve_with(tmp_path, allowed_cgroups=(own,))
    try:
        assert call(path, {"op": "status"})["ok"]
    finally:
        srv.close()
    srv, path = serve_with(tmp_path, allowed_cgroups=("/system.slice/kata-agent.service",))
    try:
        reply = call(path, {"op": "status"})
    finally:
        srv.close()
    assert reply == {"ok": False, "retry": False, "error": (
        f"pid {os.getpid()} in cgroup {own} may not use the control socket "
        "(control_allowed_cgroups: /system.slice/kata-agent.service)")}


def test_a_peer_in_a_container_scope_or_without_cgroup_v2_is_refused(tmp_path: Path) -> None:
    """The same real connection, the peer's cgroup file read from a /proc tree the test writes."""
    proc = tmp_path / "proc"
    (proc / str(os.getpid())).mkdir(parents=True)
    cgroup_file = proc / str(os.getpid()) / "cgroup"
    for text, ok, shown in [
        ("0::/system.slice/kata-agent.service\n", True, ""),
        ("12:pids:/\n0::/system.slice/kata_agent-c0ffee.scope\n", False,
         "cgroup /system.slice/kata_agent-c0ffee.scope"),
        ("4:memory:/x\n1:name=systemd:/\n", False, "no cgroup v2 membership"),  # cgroup v1 only
    ]:
        cgroup_file.write_text(text)
        srv, path = serve_with(tmp_path, proc_root=proc)
        try:
            reply = call(path, {"op": "status"})
        finally:
            srv.close()
        assert reply["ok"] is ok, reply
        if not ok:
            assert reply["error"] == (f"pid {os.getpid()} in {shown} may not use the control socket "
                                      "(control_allowed_cgroups: /, /system.slice/*.service)")
    cgroup_file.unlink()  # the peer is gone (or its /proc entry unreadable): refused, not waved through
    srv, path = serve_with(tmp_path, proc_root=proc)
    try:
        assert "no cgroup v2 membership" in call(path, {"op": "status"})["error"]
    finally:
        srv.close()


def test_no_cgroup_check_only_when_configured_off(tmp_path: Path) -> None:
    from supervisor.config import parse_config

    assert parse_config({}, origin="c").control_allowed_cgroups == control.DEFAULT_ALLOWED_CGROUPS
    assert parse_config({"control_allowed_cgroups": None}, origin="c").control_allowed_cgroups is None
    assert parse_config({"control_allowed_cgroups": ["/system.slice/kata-agent.service"]},
                        origin="c").control_allowed_cgroups == ("/system.slice/kata-agent.service",)
    for bad in ([], ["relative.service"], ["/a/../b"], "/", [1]):
        with pytest.raises(Exception, match="control_allowed_cgroups: "):
            parse_config({"control_allowed_cgroups": bad}, origin="c")
    proc = tmp_path / "proc"
    proc.mkdir()  # no entry for our pid at all: only an explicit null lets it through
    srv, path = serve_with(tmp_path, proc_root=proc, allowed_cgroups=None)
    try:
        assert call(path, {"op": "status"})["ok"]
    finally:
        srv.close()
