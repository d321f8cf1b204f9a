"""The control socket: newline-delimited JSON over AF_UNIX stream, root only (mode 0600).

Requests (one JSON object per line):

    {"op": "status"}
    {"op": "reload"}                                       re-read the configured update bundle
    {"op": "register", "id": ID, "pid": PID, "name": NAME,       the container's init pid and the
     "pod_name": P, "pod_namespace": NS}                      CRI container name; pod_* optional,
                                                              informational (alerts, logs) only
    {"op": "unregister", "id": ID}

No labels and no namespace ids travel in a request: labels come from the signed bundle's `pod`
(trust.identity), namespaces are read by the supervisor from /proc/<pid>/ns (supervisor.registry),
so a client can name a container but cannot choose which signed rules it gets.

Replies (one line each): {"ok": true, ...} or {"ok": false, "error": "<one line>", "retry": bool};
`retry` true means "not now" (the supervisor is not READY yet), which the hook waits out.

Trust boundary: the socket is 0600 in a 0700 directory, and every connection's SO_PEERCRED uid
must be 0 (the kernel records the credentials of whoever called connect(2); a root process that
hands its connected socket to another lends it what root could do anyway), and the peer's cgroup
(cgroup v2, the `0::` line of /proc/<pid>/cgroup) must match `control_allowed_cgroups`. The
default, `/` and `/system.slice/*.service`, admits what connects in real boot graphs and the test
bed: the OCI hook, which kata-agent forks in its own cgroup (`/system.slice/kata-agent.service` in
Kata's and cloud-api-adaptor's pod VMs, `/` when kata-agent is init), `warden status` from a
service (warden.service's own ExecReload, a test bed's command agent). It refuses a container's
processes, root or not: kata-agent puts containers in `/system.slice/kata_agent-<id>.scope`
(systemd driver) or `/<id>` / the OCI `linux.cgroupsPath` (cgroupfs driver; kata-containers
src/agent/rustjail/src/container.rs), and login sessions (`/user.slice/...`). The pid is the
connecting process's (SO_PEERCRED); Linux 6.1 has no SO_PEERPIDFD, so a peer that exits and
whose pid is reused in time is read as the new process (see threat-model.md). The bytes are still
parsed as untrusted: a message is bounded (MAX_MESSAGE_BYTES,
else an error reply and the connection is closed), a silent client is dropped after a timeout, the
number of concurrent connections is bounded, and every malformed request gets an error reply,
never an exception in the server.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
import socket
import socketserver
import stat
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from initdata import strict_json
from initdata.errors import GateError, printable

log = logging.getLogger("warden.control")

MAX_MESSAGE_BYTES = 64 * 1024
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 16
MAX_REQUESTS_PER_CONNECTION = 64
MAX_NAME_CHARS = 253
CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,253}")
REQUIRED_PEER_UID = 0
# Patterns of cgroup v2 paths, `*` matching within one path component (fnmatch on each component).
DEFAULT_ALLOWED_CGROUPS: tuple[str, ...] = ("/", "/system.slice/*.service")
MAX_PROC_CGROUP_BYTES = 64 * 1024
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ProtocolError(Exception):
    """A request is malformed. The message goes back to the client as the error reply."""


@dataclass(frozen=True)
class StatusRequest:
    pass


@dataclass(frozen=True)
class ReloadRequest:
    pass


@dataclass(frozen=True)
class RegisterRequest:
    container_id: str
    pid: int  # the container's init process, as the runtime reports it
    name: str  # CRI container name (host-written: trust.identity picks among the signed names with it)
    pod_name: str = ""  # informational only
    pod_namespace: str = ""  # informational only


@dataclass(frozen=True)
class UnregisterRequest:
    container_id: str


Request = StatusRequest | ReloadRequest | RegisterRequest | UnregisterRequest


@dataclass(frozen=True)
class Reply:
    ok: bool
    body: Mapping[str, Any] = field(default_factory=dict, hash=False)
    error: str = ""
    retry: bool = False

    def to_line(self) -> bytes:
        data: dict[str, Any] = {"ok": self.ok, **self.body}
        if not self.ok:
            data["error"] = " ".join(self.error.split())
            data["retry"] = self.retry
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def failure(cls, error: str, *, retry: bool = False) -> Reply:
        return cls(ok=False, error=error, retry=retry)


def _pid(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 < value < 2**22:
        raise ProtocolError(f"pid: {str(value)[:40]!r} is not a process id other than 1")
    return value


def _text(value: Any, key: str, *, optional: bool) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS or not value.isprintable():
        raise ProtocolError(f"{key}: must be a printable string of 1..{MAX_NAME_CHARS} characters")
    return value


def _container_id(value: Any) -> str:
    if not isinstance(value, str) or not CONTAINER_ID.fullmatch(value):
        raise ProtocolError(f"id: {str(value)[:80]!r} is not a container id")
    return value


def parse_request(line: bytes) -> Request:
    """One line of bytes -> a typed request, or ProtocolError saying what is wrong."""
    try:
        data = strict_json.loads(line, origin="request", field="request", error=GateError)
    except GateError as exc:
        raise ProtocolError(f"request is {exc.problem}") from None
    if not isinstance(data, dict):
        raise ProtocolError("request must be a JSON object")
    op = data.get("op")
    allowed: dict[str, set[str]] = {
        "status": {"op"},
        "reload": {"op"},
        "register": {"op", "id", "pid", "name", "pod_name", "pod_namespace"},
        "unregister": {"op", "id"},
    }
    if op not in allowed:
        raise ProtocolError(f"op: {str(op)[:40]!r} is not one of {', '.join(sorted(allowed))}")
    unknown = sorted(set(data) - allowed[op])
    if unknown:
        raise ProtocolError(f"{unknown[0][:40]}: unknown field for op {op}")
    if op == "status":
        return StatusRequest()
    if op == "reload":
        return ReloadRequest()
    container_id = _container_id(data.get("id"))
    if op == "unregister":
        return UnregisterRequest(container_id)
    return RegisterRequest(
        container_id=container_id,
        pid=_pid(data.get("pid")),
        name=_text(data.get("name", container_id), "name", optional=False),
        pod_name=_text(data.get("pod_name"), "pod_name", optional=True),
        pod_namespace=_text(data.get("pod_namespace"), "pod_namespace", optional=True),
    )


RequestHandler = Callable[[Request], Reply]


def _read_line(conn: socket.socket, buffer: bytearray, *, deadline: float | None = None) -> bytes | None:
    """The next line (without the newline), None at EOF; ProtocolError if over the size bound;
    TimeoutError once `deadline` (monotonic) passes, however the bytes trickle in."""
    while True:
        newline = buffer.find(b"\n")
        if newline >= 0:
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            if len(line) > MAX_MESSAGE_BYTES:
                raise ProtocolError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
            return line
        if len(buffer) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request deadline passed")
            conn.settimeout(left)
        chunk = conn.recv(65536)
        if not chunk:
            if buffer.strip():
                line = bytes(buffer)
                buffer.clear()
                return line  # a last request without its newline is still answered
            return None
        buffer.extend(chunk)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    # listen(2)'s backlog: connections the kernel queues before the accept thread takes them. socketserver's
    # default, 5, is less than a burst of hooks and status calls; a burst up to MAX_CONNECTIONS queues, and
    # a client finding the queue full waits for room (see `connect`) instead of failing.
    request_queue_size = MAX_CONNECTIONS
    request_handler: RequestHandler
    slots: threading.BoundedSemaphore
    required_uid: int
    allowed_cgroups: tuple[str, ...] | None
    proc_root: Path


def peer_cgroup(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The cgroup v2 path of process `pid` (the `0::` line), or None if it has none or is gone."""
    try:
        with (proc_root / str(pid) / "cgroup").open("rb") as handle:
            raw = handle.read(MAX_PROC_CGROUP_BYTES)
    except OSError:
        return None
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def cgroup_allowed(cgroup: str, patterns: tuple[str, ...]) -> bool:
    """Does the cgroup path match one pattern, component by component (so `*` never spans a `/`)?"""
    parts = _components(cgroup)
    for pattern in patterns:
        wanted = _components(pattern)
        if len(wanted) == len(parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, wanted, strict=True)):
            return True
    return False


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of whoever connected, as the kernel recorded them at connect(2)."""
    return _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        conn: socket.socket = self.request
        peer_pid, peer_uid, _gid = peer_credentials(conn)
        if peer_uid != self.server.required_uid:
            log.warning("control: refused a connection from pid %d uid %d (only uid %d may connect)",
                        peer_pid, peer_uid, self.server.required_uid)
            self._send(conn, Reply.failure(f"uid {peer_uid} may not use the control socket"))
            return
        allowed = self.server.allowed_cgroups
        if allowed is not None:
            cgroup = peer_cgroup(peer_pid, self.server.proc_root)
            if cgroup is None or not cgroup_allowed(cgroup, allowed):
                shown = "no cgroup v2 membership" if cgroup is None else f"cgroup {printable(cgroup)}"
                log.warning("control: refused a connection from pid %d in %s (control_allowed_cgroups: %s)",
                            peer_pid, shown, ", ".join(allowed))
                self._send(conn, Reply.failure(f"pid {peer_pid} in {shown} may not use the control socket "
                                               f"(control_allowed_cgroups: {', '.join(allowed)})"))
                return
        if not self.server.slots.acquire(blocking=False):
            self._send(conn, Reply.failure("too many connections", retry=True))
            return
        try:
            self._serve(conn)
        finally:
            self.server.slots.release()

    def _send(self, conn: socket.socket, reply: Reply) -> bool:
        try:
            conn.sendall(reply.to_line())
        except OSError:
            return False
        return True

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(READ_TIMEOUT_S)
        buffer = bytearray()
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            try:
                line = _read_line(conn, buffer, deadline=time.monotonic() + READ_TIMEOUT_S)
            except ProtocolError as exc:
                self._send(conn, Reply.failure(str(exc)))
                return  # the rest of an oversized message cannot be framed: drop the connection
            except TimeoutError:
                self._send(conn, Reply.failure(f"no complete request within {READ_TIMEOUT_S:g}s"))
                return
            except OSError:
                return
            if line is None:
                return
            if not line.strip():
                continue
            try:
                request = parse_request(line)
            except ProtocolError as exc:
                log.info("control: refused a request: %s", exc)
                reply = Reply.failure(str(exc))
            else:
                try:
                    reply = self.server.request_handler(request)
                except Exception as exc:  # the handler's bug must not take the server down
                    log.exception("control: handler failed on %s", type(request).__name__)
                    reply = Reply.failure(f"internal error: {type(exc).__name__}")
            if not self._send(conn, reply):
                return


class ControlServer:
    """The listening socket plus its accept thread; `close()` stops both and removes the socket."""

    def __init__(
        self,
        path: Path,
        handler: RequestHandler,
        *,
        required_uid: int = REQUIRED_PEER_UID,
        allowed_cgroups: tuple[str, ...] | None = DEFAULT_ALLOWED_CGROUPS,
        proc_root: Path = Path("/proc"),
    ) -> None:
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._remove_stale()
        old_umask = os.umask(0o177)  # the socket is created 0600: never a window with wider access
        try:
            self._server = _Server(str(path), _Connection)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._server.request_handler = handler
        self._server.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._server.required_uid = required_uid
        self._server.allowed_cgroups = allowed_cgroups  # None: no cgroup check (configured off)
        self._server.proc_root = proc_root
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="warden-control", daemon=True
        )

    def _remove_stale(self) -> None:
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ProtocolError(f"{self.path} exists and is not a socket; refusing to replace it")
        self.path.unlink()  # left by a supervisor that was killed: nobody listens on it

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class ControlUnavailable(Exception):
    """Nothing listens on the control socket (the supervisor is not running)."""


def connect(path: Path, timeout: float) -> socket.socket:
    """A socket connected to the control socket at `path`, waiting up to `timeout` seconds for room in the
    listener's queue; then the socket has `timeout` for each send and receive.

    connect(2) on AF_UNIX does not complete asynchronously: on a non-blocking socket (what settimeout()
    makes) it fails at once with EAGAIN while the listener's queue is full, as it is for a moment when
    several clients connect before the accept thread runs. A blocking connect waits for room, bounded by
    SO_SNDTIMEO (net/unix/af_unix.c unix_stream_connect)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        seconds = int(timeout)  # a zero timeval would mean "wait forever": at least 1 µs
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("@ll", seconds, max(1, int((timeout - seconds) * 1_000_000))))
        try:
            conn.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlUnavailable(f"{path}: nothing listening ({exc.strerror})") from None
        except PermissionError as exc:  # not root: the socket is 0600 in a 0700 directory
            raise ControlUnavailable(f"{path}: cannot connect ({exc.strerror}); only root may") from None
        except BlockingIOError:
            raise ControlUnavailable(f"{path}: the supervisor's queue stayed full for {timeout:g}s") from None
        conn.settimeout(timeout)
    except BaseException:
        conn.close()
        raise
    return conn


def call(path: Path, message: Mapping[str, Any] | bytes, *, timeout: float = READ_TIMEOUT_S) -> dict[str, Any]:
    """Send one request, return the parsed reply object. ControlUnavailable if nobody listens.

    `timeout` bounds the whole exchange (connect, send, every recv together), not each socket call:
    a peer trickling one byte at a time cannot make it last longer (TimeoutError).
    """
    line = message if isinstance(message, bytes) else json.dumps(dict(message)).encode()
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{path}: no complete reply within {timeout:g}s")
        return left

    with connect(path, timeout) as conn:
        conn.settimeout(remaining())
        conn.sendall(line.rstrip(b"\n") + b"\n")
        buffer = bytearray()
        while b"\n" not in buffer:
            conn.settimeout(remaining())
            chunk = conn.recv(65536)
            if not chunk:
                break
            buffer.extend(chunk)
            if len(buffer) > 4 * MAX_MESSAGE_BYTES:
                raise ControlUnavailable(f"{path}: reply larger than {4 * MAX_MESSAGE_BYTES} bytes")
    text = bytes(buffer).split(b"\n", 1)[0]
    if not text:
        raise ControlUnavailable(f"{path}: the supervisor closed the connection without a reply")
    try:
        reply = strict_json.loads(text, origin=str(path), field="reply", error=GateError)
    except GateError as exc:
        raise ControlUnavailable(str(exc)) from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ControlUnavailable(f"{path}: the reply is not a warden reply object")
    return reply
