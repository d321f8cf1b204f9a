"""Resources from the Confidential Data Hub: a newer policy bundle kept in the KBS.

A resource is named `kbs:///<repository>/<type>/<tag>` (guest-components
`confidential-data-hub/hub/protos/api.proto` GetResourceRequest.ResourcePath; the empty host means
the KBS the CDH is configured with). Two ways to ask for it:
- the CDH's own ttrpc socket, unix:///run/confidential-containers/cdh.sock: `api.GetResourceService`
  / `GetResource` (`TtrpcCdh`);
- api-server-rest, GET http://127.0.0.1:8006/cdh/resource/<repository>/<type>/<tag>, which makes the
  same call with ResourcePath "kbs://" + "/<repository>/<type>/<tag>" (api-server-rest/src/cdh.rs;
  attest.aa.AttestationAgentClient.resource).

What comes back is untrusted bytes: the caller gates it like any update (signatures, version,
expiry, object digests). The KBS only releases it to an attested TEE, which is its business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from attest.aa import MAX_RESPONSE_BYTES, AttestationAgentClient
from attest.protos import CDH_GET_RESOURCE, CDH_RESOURCE_SERVICE, ProtoDecodeError, encode, field_value
from attest.ttrpc import TtrpcClient
from initdata.errors import AttestationAgentError, GateError
from initdata.rollback import parse_kbs_uri

DEFAULT_CDH_SOCKET = "unix:///run/confidential-containers/cdh.sock"


@dataclass(frozen=True)
class ResourceUri:
    repository: str
    kind: str
    tag: str

    def __str__(self) -> str:
        return f"kbs:///{self.repository}/{self.kind}/{self.tag}"


def parse_resource_uri(text: str, *, origin: str = "kbs resource") -> ResourceUri:
    # One grammar for every kbs:/// URI we read (initdata.rollback.parse_kbs_uri).
    try:
        return ResourceUri(*parse_kbs_uri(text, origin=origin, field="resource"))
    except GateError as exc:
        raise AttestationAgentError(exc.origin, exc.field, exc.problem) from None


class ResourceSource(Protocol):
    @property
    def origin(self) -> str: ...

    def get_resource(self, uri: ResourceUri) -> bytes:
        """The resource's bytes, or AttestationAgentError."""
        ...


@dataclass(frozen=True)
class TtrpcCdh:
    address: str = DEFAULT_CDH_SOCKET
    timeout: float = 5.0
    peer_uid: int | None = 0

    @property
    def origin(self) -> str:
        return self.address

    def get_resource(self, uri: ResourceUri) -> bytes:
        client = TtrpcClient(self.address, timeout=self.timeout, peer_uid=self.peer_uid,
                             max_response_bytes=MAX_RESPONSE_BYTES)
        data = client.call(CDH_RESOURCE_SERVICE, CDH_GET_RESOURCE, encode("api.GetResourceRequest",
                                                                          ResourcePath=str(uri)))
        try:
            resource: bytes = field_value("api.GetResourceResponse", data, "Resource")
        except ProtoDecodeError as exc:
            raise AttestationAgentError(self.address, "response", str(exc)) from None
        return resource


@dataclass(frozen=True)
class RestCdh:
    base_url: str = "http://127.0.0.1:8006"
    timeout: float = 5.0

    @property
    def origin(self) -> str:
        return self.base_url

    def get_resource(self, uri: ResourceUri) -> bytes:
        return AttestationAgentClient(self.base_url, timeout=self.timeout).resource(uri.repository, uri.kind, uri.tag)


def resource_source(address: str, *, timeout: float = 5.0) -> ResourceSource:
    """unix://... -> the CDH's ttrpc socket; http(s)://... -> api-server-rest."""
    if address.startswith("unix://"):
        return TtrpcCdh(address, timeout=timeout)
    return RestCdh(address, timeout=timeout)
