"""A unary ttrpc server on a unix socket, for the attestation-agent and CDH stand-ins.

Server side of containerd/ttrpc PROTOCOL.md (10-byte header: length u32 BE, stream id u32 BE, type
u8, flags u8; request 1, response 2), the way ttrpc-rust (guest-components' server) answers: one
Response per Request on the request's stream id; an unknown method gets status NOT_FOUND
"/<service>/<method> is not supported" (ttrpc-rust's generated default). The framing is written
here independently of attest.ttrpc (the client), so the two meet only on the wire; the protobuf
messages come from attest.protos, whose encodings tests/test_attest_ttrpc.py checks byte for byte.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from attest.protos import TtrpcResponse, decode_request, encode_response, prepare

CODE_NOT_FOUND = 5
CODE_INTERNAL = 13
MAX_LENGTH = 4 << 20


class RpcStatus(Exception):
    """Raised by a method: the call ends with this google.rpc.Status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Method = Callable[[bytes], bytes]


def _read(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class TtrpcServer:
    """Serves `methods[(service, method)]` on `path` until close()."""

    def __init__(self, path: Path, methods: Mapping[tuple[str, str], Method]) -> None:
        # Ready to answer before listening, as the upstream (Rust) servers are: with protobuf imported at
        # the first request, a slow first answer under emulation made the client retry an extend.
        prepare()
        self.path = path
        self.methods = dict(methods)
        self.calls: list[tuple[str, str]] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve_connection(self.request)

        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # like ttrpc-aa's clean_previous_sock_file
        self._server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self._server.daemon_threads = True
        os.chmod(path, 0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def start(self) -> TtrpcServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def _serve_connection(self, conn: socket.socket) -> None:
        while True:
            header = _read(conn, 10)
            if header is None:
                return
            length, stream_id, message_type, _flags = struct.unpack(">IIBB", header)
            if length > MAX_LENGTH:
                return  # ttrpc-rust drops a connection announcing an oversized message
            data = _read(conn, length)
            if data is None or message_type != 1:
                return
            request = decode_request(data)
            self.calls.append((request.service, request.method))
            method = self.methods.get((request.service, request.method))
            try:
                if method is None:
                    raise RpcStatus(CODE_NOT_FOUND, f"/{request.service}/{request.method} is not supported")
                response = TtrpcResponse(0, "", method(request.payload))
            except RpcStatus as status:
                response = TtrpcResponse(status.code, status.message, b"")
            body = encode_response(response)
            conn.sendall(struct.pack(">IIBB", len(body), stream_id, 2, 0) + body)
