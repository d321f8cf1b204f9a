"""A unary ttrpc client over a unix socket: how guest-components' agents are really reached.

Wire format (containerd/ttrpc PROTOCOL.md, channel.go): every message is a 10-byte header, then
data. Header: data length u32 big-endian (at most 4 MiB), stream id u32 big-endian (odd for client
streams), message type u8 (1 request, 2 response, 3 data), flags u8. A unary call is one request
frame carrying a protobuf `ttrpc.Request` {service, method, payload, timeout_nano, metadata} and one
response frame carrying `ttrpc.Response` {status (google.rpc.Status), payload} on the same stream
(attest.protos has the messages). The Rust server guest-components uses (ttrpc-rust) speaks the same
format; the services register under `<proto package>.<service>` and the method name.

What this client adds, since the socket's other end decides what the gate and the event log see:
- `connect_unix` checks the peer with SO_PEERCRED (uid 0 by default: the attestation-agent and the
  CDH run as root in the pod VM; an unprivileged process that bound the path first is refused);
- one connection per call, a total deadline over connect, send and receive (each socket operation
  gets what is left), and reads bounded by the announced length, itself bounded by 4 MiB.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from attest.protos import ProtoDecodeError, TtrpcRequest, decode_response, encode_request
from initdata.errors import AttestationAgentError

HEADER = struct.Struct(">IIBB")  # length, stream id, type, flags
MESSAGE_REQUEST = 1
MESSAGE_RESPONSE = 2
MESSAGE_DATA = 3
MAX_DATA_BYTES = 4 * 1024 * 1024  # PROTOCOL.md: "The maximum data length is 4MB"
UNIX_PREFIX = "unix://"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class TtrpcUnavailable(AttestationAgentError):
    """Nothing (or nothing we accept) listens on the socket yet: worth trying again later."""


class TtrpcStatusError(AttestationAgentError):
    """The server answered the call with a non-OK google.rpc.Status."""

    def __init__(self, origin: str, field: str, problem: str, *, code: int) -> None:
        super().__init__(origin, field, problem)
        self.code = code


def socket_path(address: str) -> str:
    """`unix:///run/x.sock` or `/run/x.sock` -> `/run/x.sock`; anything else is not a unix socket address."""
    path = address[len(UNIX_PREFIX):] if address.startswith(UNIX_PREFIX) else address
    if not path.startswith("/") or "\0" in path:
        raise AttestationAgentError(address, "address", "is not unix:///<absolute path>")
    return path


def _remaining(deadline: float, origin: str, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise AttestationAgentError(origin, what, "deadline exceeded")
    return left


def connect_unix(path: str, *, deadline: float, peer_uid: int | None = 0) -> socket.socket:
    """A connected stream socket to `path` whose peer runs as `peer_uid` (None: any peer)."""
    origin = UNIX_PREFIX + path
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(_remaining(deadline, origin, "connect"))
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise TtrpcUnavailable(origin, "connect", f"nothing listens ({exc.strerror})") from None
        except TimeoutError:
            raise TtrpcUnavailable(origin, "connect", "timed out") from None
        except OSError as exc:
            raise AttestationAgentError(origin, "connect", exc.strerror or str(exc)) from None
        if peer_uid is not None:
            _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            if uid != peer_uid:
                raise TtrpcUnavailable(origin, "peer", f"runs as uid {uid}, not {peer_uid}: not the expected server")
        return sock
    except BaseException:
        sock.close()
        raise


def _recv_exact(sock: socket.socket, size: int, *, deadline: float, origin: str) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        sock.settimeout(_remaining(deadline, origin, "response"))
        try:
            chunk = sock.recv(min(size - got, 65536))
        except TimeoutError:
            raise AttestationAgentError(origin, "response", "deadline exceeded") from None
        except OSError as exc:
            raise AttestationAgentError(origin, "response", exc.strerror or str(exc)) from None
        if not chunk:
            raise AttestationAgentError(origin, "response", f"connection closed after {got} of {size} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def frame(stream_id: int, message_type: int, data: bytes, flags: int = 0) -> bytes:
    if len(data) > MAX_DATA_BYTES:
        raise ValueError(f"ttrpc data of {len(data)} bytes exceeds {MAX_DATA_BYTES}")
    return HEADER.pack(len(data), stream_id, message_type, flags) + data


def read_frame(sock: socket.socket, *, deadline: float, origin: str, limit: int = MAX_DATA_BYTES
               ) -> tuple[int, int, int, bytes]:
    """(stream id, type, flags, data) of the next frame; the length is checked before anything is read."""
    length, stream_id, message_type, flags = HEADER.unpack(
        _recv_exact(sock, HEADER.size, deadline=deadline, origin=origin))
    if length > min(limit, MAX_DATA_BYTES):
        raise AttestationAgentError(origin, "response", f"announces {length} bytes, more than {limit}")
    return stream_id, message_type, flags, _recv_exact(sock, length, deadline=deadline, origin=origin)


@dataclass(frozen=True)
class TtrpcClient:
    """Unary calls to one ttrpc server. `timeout` bounds each whole call."""

    address: str  # unix:///path
    timeout: float = 2.0
    peer_uid: int | None = 0
    max_response_bytes: int = MAX_DATA_BYTES

    @property
    def path(self) -> str:
        return socket_path(self.address)

    def call(self, service: str, method: str, payload: bytes) -> bytes:
        """The response payload of `service/method(payload)`, or an AttestationAgentError subclass."""
        origin = f"{self.address} {service}/{method}"
        deadline = time.monotonic() + self.timeout
        request = encode_request(TtrpcRequest(service, method, payload, timeout_nano=int(self.timeout * 1e9)))
        stream_id = 1
        with connect_unix(self.path, deadline=deadline, peer_uid=self.peer_uid) as sock:
            sock.settimeout(_remaining(deadline, origin, "request"))
            try:
                sock.sendall(frame(stream_id, MESSAGE_REQUEST, request))
            except (TimeoutError, OSError) as exc:
                raise AttestationAgentError(origin, "request", f"cannot send ({exc})") from None
            got_id, message_type, _flags, data = read_frame(
                sock, deadline=deadline, origin=origin, limit=self.max_response_bytes)
        if got_id != stream_id or message_type != MESSAGE_RESPONSE:
            raise AttestationAgentError(origin, "response",
                                        f"frame type {message_type} on stream {got_id}, expected a response on 1")
        try:
            response = decode_response(data)
        except ProtoDecodeError as exc:
            raise AttestationAgentError(origin, "response", str(exc)) from None
        if response.code != 0:
            raise TtrpcStatusError(origin, "status", f"code {response.code}: {response.message}", code=response.code)
        return response.payload
