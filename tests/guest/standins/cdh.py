"""Confidential Data Hub stand-in: `api.GetResourceService/GetResource` on the CDH's ttrpc socket.

Upstream (confidential-containers/guest-components): the CDH listens on
unix:///run/confidential-containers/cdh.sock (confidential-data-hub/hub/src/bin/config: the ttrpc
default) and answers GetResource {ResourcePath: "kbs:///<repo>/<type>/<tag>"} with the resource's
bytes (hub/protos/api.proto); api-server-rest's GET /cdh/resource/<repo>/<type>/<tag> is the same call
(api-server-rest/src/cdh.rs). Behind it the KBS serves resources from its repository; trustee's
local-filesystem backend keeps them as files <dir>/<repo>/<type>/<tag>, which is what this stand-in
reads (no attestation: the KBS would release the resource to this TEE only after attesting it).
A missing resource or a malformed path is status INTERNAL, as the CDH answers a failed fetch.

Run in the guest: `python -m tests.guest.standins.cdh --resources DIR`.
"""

from __future__ import annotations

import argparse
import re
import signal
import threading
from pathlib import Path

from attest.protos import CDH_GET_RESOURCE, CDH_RESOURCE_SERVICE, decode, encode
from tests.guest.standins.ttrpc_server import CODE_INTERNAL, RpcStatus, TtrpcServer

DEFAULT_SOCKET = "unix:///run/confidential-containers/cdh.sock"
_RESOURCE = re.compile(r"kbs://[^/]*/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)")


class CdhStandin:
    def __init__(self, resources: Path) -> None:
        self.resources = resources
        self.fetched: list[str] = []

    def get_resource(self, payload: bytes) -> bytes:
        path = str(decode("api.GetResourceRequest", payload).ResourcePath)  # type: ignore[attr-defined]
        self.fetched.append(path)
        match = _RESOURCE.fullmatch(path)
        if match is None or any(part in (".", "..") for part in match.groups()):
            raise RpcStatus(CODE_INTERNAL, f"[CDH] [ERROR]: get resource failed: malformed {path!r}")
        file = self.resources.joinpath(*match.groups())
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise RpcStatus(CODE_INTERNAL, f"[CDH] [ERROR]: get resource failed: {exc.strerror}") from None
        return encode("api.GetResourceResponse", Resource=data)

    def server(self, socket_address: str = DEFAULT_SOCKET) -> TtrpcServer:
        return TtrpcServer(Path(socket_address.removeprefix("unix://")),
                           {(CDH_RESOURCE_SERVICE, CDH_GET_RESOURCE): self.get_resource})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=DEFAULT_SOCKET)
    parser.add_argument("--resources", type=Path, required=True, help="<dir>/<repo>/<type>/<tag> files")
    args = parser.parse_args()
    server = CdhStandin(args.resources).server(args.socket)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.close).start())
    server.serve_forever()


if __name__ == "__main__":
    main()
