"""The protobuf messages warden exchanges over ttrpc, described here and encoded by `protobuf`.

No generated code: the descriptors are built below with descriptor_pb2 from the wire contracts, and
message classes come from our own DescriptorPool. Names, field numbers and types are copied from:

- containerd/ttrpc `request.proto` (generated as request.pb.go): ttrpc.Request {service=1 string,
  method=2 string, payload=3 bytes, timeout_nano=4 int64, metadata=5 repeated KeyValue},
  ttrpc.Response {status=1 Status, payload=2 bytes}, ttrpc.KeyValue {key=1, value=2};
  google.rpc.Status {code=1 int32, message=2 string, details=3 repeated Any (left unknown here)};
- confidential-containers/guest-components `attestation-agent/protos/attestation-agent.proto`
  (package attestation_agent, service AttestationAgentService): GetEvidenceRequest {RuntimeData=1
  bytes}, GetEvidenceResponse {Evidence=1 bytes}, ExtendRuntimeMeasurementRequest {Domain=1,
  Operation=2, Content=3 string, optional uint64 RegisterIndex=4}, ExtendRuntimeMeasurementResponse
  {}, GetTeeTypeRequest {}, GetTeeTypeResponse {tee=1 string};
- guest-components `confidential-data-hub/hub/protos/api.proto` (package api, service
  GetResourceService): GetResourceRequest {ResourcePath=1 string}, GetResourceResponse {Resource=1
  bytes}.

The ttrpc method names the servers register (attestation_agent_ttrpc.rs, api_ttrpc.rs) are the
`SERVICE`/`METHOD` constants. tests/test_attest_ttrpc.py checks encodings against hand-made bytes.

The descriptors are built, and `protobuf` imported, on the first message: importing protobuf is a
noticeable part of the supervisor's start under emulation, and only the attestation-agent and CDH
clients need it (after READY, or in a gate configured to ask the attestation-agent).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.descriptor import Descriptor
    from google.protobuf.message import Message

AA_SERVICE = "attestation_agent.AttestationAgentService"
AA_GET_EVIDENCE = "GetEvidence"
AA_EXTEND_RUNTIME_MEASUREMENT = "ExtendRuntimeMeasurement"
AA_GET_TEE_TYPE = "GetTeeType"
CDH_RESOURCE_SERVICE = "api.GetResourceService"
CDH_GET_RESOURCE = "GetResource"

# descriptor.proto's FieldDescriptorProto.Type and .Label numbers (stable: they are on the wire of every
# descriptor), so that the specifications below need no protobuf import.
_STRING, _BYTES, _INT32, _INT64, _UINT64, _MESSAGE = 9, 12, 5, 3, 4, 11
_OPTIONAL = 1

# (file name, package, messages: name -> [(field name, number, type, extra)], dependencies); extra is the
# type name and whether it repeats for a message field, "optional" for a proto3 optional one.
_FILES: tuple[tuple[str, str, dict[str, list[tuple[str, int, int, Any]]], tuple[str, ...]], ...] = (
    ("warden/google_rpc_status.proto", "google.rpc", {"Status": [
        ("code", 1, _INT32, None), ("message", 2, _STRING, None)]}, ()),
    ("warden/ttrpc_request.proto", "ttrpc", {
        "KeyValue": [("key", 1, _STRING, None), ("value", 2, _STRING, None)],
        "Request": [("service", 1, _STRING, None), ("method", 2, _STRING, None), ("payload", 3, _BYTES, None),
                    ("timeout_nano", 4, _INT64, None), ("metadata", 5, _MESSAGE, (".ttrpc.KeyValue", True))],
        "Response": [("status", 1, _MESSAGE, (".google.rpc.Status", False)), ("payload", 2, _BYTES, None)],
    }, ("warden/google_rpc_status.proto",)),
    ("warden/attestation_agent.proto", "attestation_agent", {
        "GetEvidenceRequest": [("RuntimeData", 1, _BYTES, None)],
        "GetEvidenceResponse": [("Evidence", 1, _BYTES, None)],
        "ExtendRuntimeMeasurementRequest": [("Domain", 1, _STRING, None), ("Operation", 2, _STRING, None),
                                            ("Content", 3, _STRING, None),
                                            ("RegisterIndex", 4, _UINT64, "optional")],
        "ExtendRuntimeMeasurementResponse": [],
        "GetTeeTypeRequest": [],
        "GetTeeTypeResponse": [("tee", 1, _STRING, None)],
    }, ()),
    ("warden/cdh_api.proto", "api", {
        "GetResourceRequest": [("ResourcePath", 1, _STRING, None)],
        "GetResourceResponse": [("Resource", 1, _BYTES, None)],
    }, ()),
)


def _file(name: str, package: str, messages: dict[str, list[tuple[str, int, int, Any]]],
          deps: tuple[str, ...]) -> descriptor_pb2.FileDescriptorProto:
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3", dependency=list(deps))
    for message_name, fields in messages.items():
        message = proto.message_type.add(name=message_name)
        for field_name, number, kind, extra in fields:
            field = message.field.add(name=field_name, number=number, type=kind, label=_OPTIONAL,
                                      json_name=field_name)
            if kind == _MESSAGE:
                field.type_name, repeated = extra
                if repeated:
                    field.label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
            elif extra == "optional":  # proto3 `optional`: presence through a synthetic oneof
                field.proto3_optional = True
                field.oneof_index = len(message.oneof_decl)
                message.oneof_decl.add(name=f"_{field_name}")
    return proto


@dataclass(frozen=True)
class _Protobuf:
    """What this module uses of protobuf, imported and built once."""

    pool: descriptor_pool.DescriptorPool
    message_class: Callable[[Descriptor], type[Message]]
    decode_error: type[Exception]


_PROTOBUF_LOCK = threading.Lock()


@functools.cache
def _load_protobuf() -> _Protobuf:
    from google.protobuf import descriptor_pool, message_factory
    from google.protobuf.message import DecodeError

    pool = descriptor_pool.DescriptorPool()
    for spec in _FILES:
        pool.Add(_file(*spec))
    return _Protobuf(pool, message_factory.GetMessageClass, DecodeError)


def _protobuf() -> _Protobuf:
    # One thread imports protobuf and builds the pool; the others wait for it, so that the pool is built
    # once: the AAEL recorder and the KBS poller send their first messages at about the same time.
    with _PROTOBUF_LOCK:
        return _load_protobuf()


def prepare() -> None:
    """Import protobuf and build the messages now: a server does it before it listens, so that its first
    answer is not later than the others (a client that times out and retries would repeat the call)."""
    _protobuf()


def message_class(full_name: str) -> type[Message]:
    """The message class of one of the messages above, e.g. "attestation_agent.GetEvidenceRequest"."""
    protobuf = _protobuf()
    return protobuf.message_class(protobuf.pool.FindMessageTypeByName(full_name))


class ProtoDecodeError(ValueError):
    """Bytes that are not the expected protobuf message."""


def encode(full_name: str, **fields: Any) -> bytes:
    """One message, serialized (deterministically: the same fields always give the same bytes)."""
    return message_class(full_name)(**fields).SerializeToString(deterministic=True)


def decode(full_name: str, data: bytes) -> Message:
    message = message_class(full_name)()
    try:
        message.ParseFromString(data)
    except (_protobuf().decode_error, RecursionError) as exc:
        raise ProtoDecodeError(f"not a {full_name}: {exc}") from None
    return message


# -- the ttrpc envelope -------------------------------------------------------------------------


@dataclass(frozen=True)
class TtrpcRequest:
    service: str
    method: str
    payload: bytes
    timeout_nano: int = 0
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TtrpcResponse:
    code: int  # google.rpc.Code; 0 = OK
    message: str
    payload: bytes


def encode_request(request: TtrpcRequest) -> bytes:
    return encode("ttrpc.Request", service=request.service, method=request.method, payload=request.payload,
                  timeout_nano=request.timeout_nano,
                  metadata=[{"key": k, "value": v} for k, v in request.metadata])


def decode_request(data: bytes) -> TtrpcRequest:
    m: Any = decode("ttrpc.Request", data)
    return TtrpcRequest(m.service, m.method, bytes(m.payload), m.timeout_nano,
                        tuple((kv.key, kv.value) for kv in m.metadata))


def encode_response(response: TtrpcResponse) -> bytes:
    status = {"code": response.code, "message": response.message} if response.code else None
    return encode("ttrpc.Response", status=status, payload=response.payload)


def decode_response(data: bytes) -> TtrpcResponse:
    m: Any = decode("ttrpc.Response", data)
    return TtrpcResponse(m.status.code, m.status.message, bytes(m.payload))


def field_value(full_name: str, data: bytes, name: str) -> Any:
    """One field of a decoded message (bytes fields as bytes)."""
    value = getattr(decode(full_name, data), name)
    return bytes(value) if isinstance(value, bytes | bytearray) else value


def has_field(message: Message, name: str) -> bool:
    return bool(message.HasField(name))
