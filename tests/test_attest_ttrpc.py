"""ttrpc framing and the attestation-agent / CDH over their own sockets.

The wire format is pinned by hand-made bytes (containerd/ttrpc PROTOCOL.md and request.proto, the
field numbers of guest-components' attestation-agent.proto and api.proto), so a change in how the
`protobuf` package or attest.protos encodes shows here. The servers are the stand-ins of
tests/guest/standins (their framing written independently of attest.ttrpc), on real unix sockets.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from attest.aa import AAEL_DOMAIN, AAEL_OPERATION, AttestationAgentSource, TtrpcAttestationAgent, record_ruleset_digest
from attest.cdh import ResourceUri, TtrpcCdh, parse_resource_uri, resource_source
from attest.protos import TtrpcRequest, TtrpcResponse, decode_response, encode, encode_request, encode_response
from attest.tee import Tee, fit_to_field
from attest.ttrpc import HEADER, TtrpcClient, TtrpcStatusError, TtrpcUnavailable, frame, socket_path
from initdata.document import parse_initdata
from initdata.errors import AttestationAgentError, BundleExpired, GateError, RollbackRefused, SignatureThresholdNotMet
from supervisor.aael import AaelRecorder
from supervisor.config import GateConfig
from supervisor.control import Reply
from supervisor.gate_inputs import gate_initdata, gate_update
from supervisor.kbs_updates import KbsPoller
from tests.data.initdata.factory import FIXTURE_NOW, HERE, KEYS, make_envelope, signing_key
from tests.guest.standins.attestation_agent import AttestationAgentStandin, eventlog_enabled
from tests.guest.standins.cdh import CdhStandin
from tests.guest.standins.ttrpc_server import TtrpcServer

EVIDENCE = Path(__file__).parent / "data" / "evidence"
FIXTURE_INITDATA = parse_initdata((HERE / "initdata-v1.toml").read_bytes(), origin="initdata-v1.toml")
ROOT = os.getuid()


def _string(field: int, text: bytes) -> bytes:
    return bytes([field << 3 | 2, len(text)]) + text


# --- the wire format --------------------------------------------------------------------------------


def test_request_frame_bytes() -> None:
    payload = encode("attestation_agent.GetEvidenceRequest", RuntimeData=b"nonce")
    assert payload == b"\x0a\x05nonce"  # RuntimeData = 1, bytes
    body = encode_request(TtrpcRequest("attestation_agent.AttestationAgentService", "GetEvidence", payload,
                                       timeout_nano=1))
    assert body == (_string(1, b"attestation_agent.AttestationAgentService") + _string(2, b"GetEvidence")
                    + _string(3, payload) + b"\x20\x01")  # timeout_nano = 4, varint
    assert frame(1, 1, body) == struct.pack(">IIBB", len(body), 1, 1, 0) + body
    assert HEADER.size == 10


def test_message_field_numbers() -> None:
    assert encode("attestation_agent.ExtendRuntimeMeasurementRequest", Domain="d", Operation="o",
                  Content="c") == b"\x0a\x01d\x12\x01o\x1a\x01c"
    # proto3 `optional uint64 RegisterIndex = 4`: an explicit 0 is still sent
    assert encode("attestation_agent.ExtendRuntimeMeasurementRequest", RegisterIndex=0) == b"\x20\x00"
    assert encode("api.GetResourceRequest", ResourcePath="kbs:///a/b/c") == _string(1, b"kbs:///a/b/c")
    assert encode("attestation_agent.GetTeeTypeResponse", tee="tdx") == _string(1, b"tdx")


def test_response_status_bytes() -> None:
    # Response{status=1 {code=1, message=2}, payload=2}
    assert encode_response(TtrpcResponse(13, "no", b"")) == b"\x0a\x06\x08\x0d\x12\x02no"
    assert decode_response(b"\x12\x03abc") == TtrpcResponse(0, "", b"abc")
    assert decode_response(b"\x0a\x02\x08\x05") == TtrpcResponse(5, "", b"")


def test_socket_addresses() -> None:
    assert socket_path("unix:///run/x.sock") == "/run/x.sock"
    for bad in ("unix://run/x.sock", "http://127.0.0.1:1", "unix:///a\0b"):
        with pytest.raises(AttestationAgentError, match="address"):
            socket_path(bad)


# --- the attestation-agent over ttrpc -----------------------------------------------------------------


@pytest.fixture
def aa(tmp_path: Path) -> Iterator[tuple[AttestationAgentStandin, str]]:
    standin = AttestationAgentStandin(enable_eventlog=True, eventlog=tmp_path / "eventlog")
    address = f"unix://{tmp_path}/aa/attestation-agent.sock"
    server = standin.server(address).start()
    try:
        yield standin, address
    finally:
        server.close()


def test_evidence_tee_and_event_log(aa: tuple[AttestationAgentStandin, str]) -> None:
    standin, address = aa
    agent = TtrpcAttestationAgent(address, peer_uid=ROOT)
    assert agent.tee_type() == "sample"
    evidence = json.loads(agent.get_evidence(b"runtime-data"))
    assert evidence == {"svn": "1", "report_data": "cnVudGltZS1kYXRh"}
    record_ruleset_digest("sha256:" + "ab" * 32, bundle_version=3, client=agent)
    lines = standin.eventlog.read_text().splitlines()
    assert lines == ["INIT sha256/" + "0" * 64,
                     f'{AAEL_DOMAIN} {AAEL_OPERATION} {{"bundle_version":3,"ruleset":"sha256:{"ab" * 32}"}}']


def test_agent_errors_are_status_errors(tmp_path: Path) -> None:
    disabled = AttestationAgentStandin(enable_eventlog=False, eventlog=tmp_path / "eventlog")
    server = disabled.server(f"unix://{tmp_path}/aa.sock").start()
    try:
        agent = TtrpcAttestationAgent(f"unix://{tmp_path}/aa.sock", peer_uid=ROOT)
        with pytest.raises(TtrpcStatusError, match=r"code 13: \[ERROR:attestation-agent\] AA extend") as caught:
            agent.extend_runtime_measurement("d", "o", "c")
        assert caught.value.code == 13
        assert not disabled.eventlog.exists()
        client = TtrpcClient(f"unix://{tmp_path}/aa.sock", peer_uid=ROOT)
        not_supported = r"code 5: /attestation_agent\.AttestationAgentService/GetToken is not supported"
        with pytest.raises(TtrpcStatusError, match=not_supported):
            client.call("attestation_agent.AttestationAgentService", "GetToken", b"")
    finally:
        server.close()
    aa_toml = tmp_path / "aa.toml"
    aa_toml.write_text("[eventlog_config]\nenable_eventlog = true\n")
    assert eventlog_enabled(aa_toml) and not eventlog_enabled(None)


def test_gate_through_the_agents_socket(tmp_path: Path) -> None:
    standin = AttestationAgentStandin(enable_eventlog=False, evidence=(EVIDENCE / "tdx.json").read_bytes(), tee="tdx")
    address = f"unix://{tmp_path}/aa.sock"
    server = standin.server(address).start()
    try:
        source = AttestationAgentSource(TtrpcAttestationAgent(address, peer_uid=ROOT))
        assert source.available() and source.tee_detected()
        measurement = source.measure()
        assert measurement.tee is Tee.TDX
        assert measurement.value == fit_to_field(FIXTURE_INITDATA.digest, 48)
        assert measurement.detail.startswith(address)
        config = GateConfig(trust_dir=KEYS, threshold=2, state_dir=None, measurement_sources=("attestation-agent",),
                            attestation_agent_url=address)
        assert isinstance(config.aa_client(), TtrpcAttestationAgent)
    finally:
        server.close()
    # peer check: the stand-in runs as us; demanding another uid refuses the socket before any call
    other = TtrpcAttestationAgent(address, peer_uid=ROOT + 4242)
    server = standin.server(address).start()
    try:
        with pytest.raises(TtrpcUnavailable, match=f"runs as uid {ROOT}, not {ROOT + 4242}"):
            other.tee_type()
        assert AttestationAgentSource(other).available() is False
    finally:
        server.close()
    del config


def test_nothing_listening(tmp_path: Path) -> None:
    with pytest.raises(TtrpcUnavailable, match="nothing listens"):
        TtrpcAttestationAgent(f"unix://{tmp_path}/none.sock").tee_type()


def _raw_server(path: Path, reply: bytes, *, hold_s: float = 0.0) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(reply)
        time.sleep(hold_s)
        conn.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("reply", "hold_s", "problem"),
    [
        (struct.pack(">IIBB", 5 << 20, 1, 2, 0), 0.0, "announces 5242880 bytes, more than"),
        (struct.pack(">IIBB", 10, 1, 2, 0) + b"abc", 0.0, "connection closed after 3 of 10 bytes"),
        (struct.pack(">IIBB", 10, 1, 2, 0) + b"abc", 3.0, "deadline exceeded"),
        (struct.pack(">IIBB", 0, 3, 2, 0), 0.0, "frame type 2 on stream 3"),
        (struct.pack(">IIBB", 2, 1, 2, 0) + b"\x0a\xff", 0.0, "not a ttrpc.Response"),
    ],
)
def test_bounded_reads_and_deadline(tmp_path: Path, reply: bytes, hold_s: float, problem: str) -> None:
    thread = _raw_server(tmp_path / "raw.sock", reply, hold_s=hold_s)
    started = time.monotonic()
    with pytest.raises(AttestationAgentError, match=problem):
        TtrpcClient(f"unix://{tmp_path}/raw.sock", timeout=0.5, peer_uid=ROOT).call("s", "m", b"")
    assert time.monotonic() - started < 2.0  # the total deadline holds whatever the server does
    thread.join(timeout=5)


# --- the AAEL record after READY ------------------------------------------------------------------------


def test_recorder_waits_for_the_agent_to_come_up(tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/aa.sock"
    recorder = AaelRecorder(lambda: TtrpcAttestationAgent(address, peer_uid=ROOT), wait_initial_s=0.05,
                            wait_max_s=0.2)
    started = time.monotonic()
    recorder.record("sha256:" + "11" * 32, 2)
    assert time.monotonic() - started < 0.1  # never waits for the agent
    deadline = time.monotonic() + 5
    while recorder.snapshot()["attempts"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    early = recorder.snapshot()
    assert early["recorded"] is False and early["attempts"] >= 2 and "nothing listens" in early["last_error"]
    standin = AttestationAgentStandin(enable_eventlog=True, eventlog=tmp_path / "eventlog")
    server = standin.server(address).start()
    try:
        while not recorder.snapshot()["recorded"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert recorder.recorded("sha256:" + "11" * 32) is True
        assert recorder.recorded("sha256:" + "22" * 32) is None
        assert standin.eventlog.read_text().count(AAEL_OPERATION) == 1
        recorder.record("sha256:" + "22" * 32, 3)  # a reload: the new RuleSet is recorded too
        while not recorder.recorded("sha256:" + "22" * 32) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert standin.eventlog.read_text().splitlines()[-1].endswith('{"bundle_version":3,"ruleset":"sha256:'
                                                                      + "22" * 32 + '"}')
    finally:
        recorder.stop()
        server.close()


# --- KBS updates through the CDH ---------------------------------------------------------------------------


def test_resource_uris() -> None:
    assert parse_resource_uri("kbs:///default/warden/bundle") == ResourceUri("default", "warden", "bundle")
    for bad in ("kbs://default/warden/bundle", "kbs:///a/b", "kbs:///a/../b", "kbs:///a/b/c/d", "http://x/a/b/c"):
        with pytest.raises(AttestationAgentError, match="resource"):
            parse_resource_uri(bad)
    assert isinstance(resource_source("unix:///run/confidential-containers/cdh.sock"), TtrpcCdh)


def test_kbs_poller_gates_new_bundles(tmp_path: Path) -> None:
    keys = [signing_key("owner-ed25519"), signing_key("owner-p384")]
    config = GateConfig(trust_dir=KEYS, threshold=2, state_dir=None, measurement_sources=("sample",),
                        insecure_allow_sample=True)
    current = [gate_initdata(FIXTURE_INITDATA, config, now=FIXTURE_NOW)]
    resource = tmp_path / "resources" / "default" / "warden" / "bundle"
    resource.parent.mkdir(parents=True)
    cdh = CdhStandin(tmp_path / "resources")
    server = cdh.server(f"unix://{tmp_path}/cdh.sock").start()
    outcomes: list[str] = []

    def apply(envelope: bytes, origin: str) -> Reply:  # what Supervisor.apply_update does, minus the kernel
        try:
            new = gate_update(envelope, current[0], config, origin=origin, now=FIXTURE_NOW)
        except GateError as exc:
            outcomes.append(type(exc).__name__)
            return Reply.failure(str(exc))
        outcomes.append(f"v{new.bundle_version}")
        current[0] = new
        return Reply(ok=True, body={"bundle_version": new.bundle_version})

    poller = KbsPoller(TtrpcCdh(f"unix://{tmp_path}/cdh.sock", peer_uid=ROOT),
                       parse_resource_uri("kbs:///default/warden/bundle"), 60, apply)
    try:
        poller.poll_once()  # nothing there yet
        assert "get resource failed" in poller.snapshot()["last_poll_error"] and outcomes == []
        resource.write_bytes(make_envelope(keys, version=2).to_json())
        poller.poll_once()
        poller.poll_once()  # the same bytes: not gated again
        assert outcomes == ["v2"]
        resource.write_bytes(make_envelope(keys, version=1).to_json())
        poller.poll_once()
        resource.write_bytes(make_envelope([signing_key("owner-ed25519")], version=3).to_json())
        poller.poll_once()
        resource.write_bytes(make_envelope(keys, version=4, expires=FIXTURE_NOW - timedelta(days=1)).to_json())
        poller.poll_once()
        assert outcomes == ["v2", RollbackRefused.__name__, SignatureThresholdNotMet.__name__, BundleExpired.__name__]
        assert current[0].bundle_version == 2
        snapshot = poller.snapshot()
        assert snapshot["polls"] == 6 and snapshot["last_result"]["ok"] is False
        assert cdh.fetched == ["kbs:///default/warden/bundle"] * 6
    finally:
        server.close()


def test_standin_server_is_a_real_socket(tmp_path: Path) -> None:
    server = TtrpcServer(tmp_path / "x.sock", {}).start()
    try:
        assert oct((tmp_path / "x.sock").stat().st_mode & 0o777) == "0o600"
    finally:
        server.close()
    assert not (tmp_path / "x.sock").exists()


def test_the_type_and_label_numbers_are_descriptor_protos() -> None:
    """attest.protos names them as numbers so that protobuf is imported only with the first message."""
    from google.protobuf import descriptor_pb2

    from attest import protos

    f = descriptor_pb2.FieldDescriptorProto
    assert (protos._STRING, protos._BYTES, protos._INT32, protos._INT64, protos._UINT64, protos._MESSAGE,
            protos._OPTIONAL) == (f.TYPE_STRING, f.TYPE_BYTES, f.TYPE_INT32, f.TYPE_INT64, f.TYPE_UINT64,
                                  f.TYPE_MESSAGE, f.LABEL_OPTIONAL)
