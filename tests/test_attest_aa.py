"""The attestation-agent source and client against a fake api-server-rest on loopback.

The fake serves the recorded evidence in tests/data/evidence (TDX quote v4, SNP report, sample),
records POST /aa/aael, and serves CDH resources.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from attest.aa import (
    AAEL_DOMAIN,
    AAEL_OPERATION,
    AttestationAgentClient,
    AttestationAgentSource,
    measurement_from_evidence,
    record_ruleset_digest,
)
from attest.tee import Tee, fit_to_field
from initdata.document import parse_initdata
from initdata.errors import AttestationAgentError, InsecureSourceRefused, MeasurementMismatch, MeasurementUnavailable
from supervisor.config import GateConfig
from supervisor.gate_inputs import gate_initdata, gate_update
from tests.data.initdata.factory import FIXTURE_NOW, HERE, KEYS, make_envelope, make_initdata, signing_key, snp_report
from tests.guest.standins.attestation_agent import with_runtime_data

EVIDENCE = Path(__file__).parent / "data" / "evidence"
FIXTURE_INITDATA = parse_initdata((HERE / "initdata-v1.toml").read_bytes(), origin="initdata-v1.toml")


@dataclass
class FakeAgent:
    evidence: bytes = b""
    tee: str = "tdx"
    aael_success: bool = True
    evidence_status: int = 200
    resources: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    events: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    replay: bool = False  # serve the evidence as recorded, without our nonce (a replayed quote)


def _handler(agent: FakeAgent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            agent.requests.append(f"GET {self.path}")
            url = urlsplit(self.path)
            if url.path == "/info":
                self._send(200, json.dumps({"version": "fake", "tee": agent.tee, "additional_tees": []}).encode())
            elif url.path == "/aa/evidence":
                if "runtime_data" not in parse_qs(url.query):
                    self._send(400, b"runtime_data is required")
                elif agent.evidence_status != 200:
                    self._send(agent.evidence_status, b"Attestation Feature Not Enabled", "text/plain")
                else:
                    runtime_data = parse_qs(url.query)["runtime_data"][0].encode()
                    try:
                        body = agent.evidence if agent.replay else with_runtime_data(agent.evidence, runtime_data)
                    except (ValueError, KeyError):
                        body = agent.evidence  # malformed on purpose: served as is
                    self._send(200, body, "application/octet-stream")
            elif url.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://192.0.2.1/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif url.path.startswith("/cdh/resource/") and url.path[len("/cdh/resource/") :] in agent.resources:
                self._send(200, agent.resources[url.path[len("/cdh/resource/") :]], "application/octet-stream")
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            agent.requests.append(f"POST {self.path}")
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            if self.path == "/aa/aael":
                agent.events.append(body)
                answer = {"success": "true"} if agent.aael_success else {"success": "false", "message": "off"}
                self._send(200, json.dumps(answer).encode())
            else:
                self._send(404, b"not found", "text/plain")

    return Handler


@pytest.fixture
def fake_agent() -> Iterator[FakeAgent]:
    agent = FakeAgent()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(agent))
    agent.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


def aa_config(url: str, **changes: object) -> GateConfig:
    values: dict[str, object] = {
        "trust_dir": KEYS,
        "threshold": 2,
        "state_dir": None,
        "measurement_sources": ("attestation-agent",),
        "attestation_agent_url": url,
    }
    values.update(changes)
    return GateConfig(**values)  # type: ignore[arg-type]


# --- evidence per TEE ---------------------------------------------------------------------------------


def test_recorded_tdx_evidence(fake_agent: FakeAgent) -> None:
    fake_agent.evidence = (EVIDENCE / "tdx.json").read_bytes()
    source = AttestationAgentSource(AttestationAgentClient(fake_agent.url))
    assert source.available()
    measurement = source.measure()
    assert measurement.tee is Tee.TDX
    assert measurement.value == fit_to_field(FIXTURE_INITDATA.digest, 48)
    assert any(r.startswith("GET /aa/evidence?runtime_data=") for r in fake_agent.requests)


def test_recorded_snp_evidence(fake_agent: FakeAgent) -> None:
    fake_agent.evidence = (EVIDENCE / "snp.json").read_bytes()
    measurement = AttestationAgentSource(AttestationAgentClient(fake_agent.url)).measure()
    assert measurement.tee is Tee.SNP
    assert measurement.value == FIXTURE_INITDATA.digest
    document = json.loads(fake_agent.evidence)
    report = base64.b64decode(document["attestation_report"])
    assert len(report) == 0x4A0 and report[0xC0:0xE0] == FIXTURE_INITDATA.digest


def test_snp_evidence_in_serde_object_form() -> None:
    report = {"version": 3, "host_data": list(b"\x11" * 32), "report_data": [0] * 64}
    measurement = measurement_from_evidence(
        json.dumps({"attestation_report": report, "cert_chain": None}).encode(), origin="aa", source="attestation-agent"
    )
    assert measurement.value == b"\x11" * 32
    with pytest.raises(MeasurementUnavailable, match="host_data: is not 32 byte values"):
        measurement_from_evidence(b'{"attestation_report": {"host_data": [1, 2]}}', origin="aa", source="aa")


@pytest.mark.parametrize("tee", ["tdx", "snp"])
def test_gate_through_the_attestation_agent(fake_agent: FakeAgent, tee: str) -> None:
    fake_agent.evidence = (EVIDENCE / f"{tee}.json").read_bytes()
    verified = gate_initdata(FIXTURE_INITDATA, aa_config(fake_agent.url), now=FIXTURE_NOW)  # sources from config
    assert verified.measurement_source == "attestation-agent"
    assert verified.tee == tee
    assert verified.insecure is False
    assert verified.bundle_version == 1


def test_gate_through_the_attestation_agent_detects_other_initdata(fake_agent: FakeAgent) -> None:
    fake_agent.evidence = (EVIDENCE / "tdx.json").read_bytes()
    other = parse_initdata(make_initdata(make_envelope([signing_key("owner-ed25519")])), origin="other.toml")
    with pytest.raises(MeasurementMismatch) as caught:
        gate_initdata(other, aa_config(fake_agent.url, threshold=1), now=FIXTURE_NOW)
    assert caught.value.field == "MRCONFIGID"
    assert "(TDX quote)" in caught.value.origin


def test_sample_evidence_is_insecure(fake_agent: FakeAgent) -> None:
    fake_agent.evidence = (EVIDENCE / "sample.json").read_bytes()
    fake_agent.tee = "sample"
    with pytest.raises(InsecureSourceRefused):
        gate_initdata(FIXTURE_INITDATA, aa_config(fake_agent.url), now=FIXTURE_NOW)
    verified = gate_initdata(FIXTURE_INITDATA, aa_config(fake_agent.url, insecure_allow_sample=True), now=FIXTURE_NOW)
    assert verified.insecure is True
    assert verified.status_line().startswith("INSECURE")


@pytest.mark.parametrize(
    ("evidence", "problem"),
    [
        (b"not json", "evidence: not JSON"),
        (b"[]", "evidence: is not a JSON object"),
        (b'{"quote": 5}', "evidence.quote: missing or not a base64"),
        (b'{"quote": "***"}', "evidence.quote: is not valid base64"),
        (b'{"quote": "AAAA"}', "quote: 3 bytes is too short"),
        (b'{"attestation_report": "AAAA"}', "report: 3 bytes, expected 1184"),
        (b'{"tpm_quote": {}}', "unsupported evidence (fields: tpm_quote)"),
    ],
)
def test_malformed_evidence(fake_agent: FakeAgent, evidence: bytes, problem: str) -> None:
    fake_agent.evidence = evidence
    fake_agent.replay = True  # served byte for byte as given
    with pytest.raises(MeasurementUnavailable) as caught:
        AttestationAgentSource(AttestationAgentClient(fake_agent.url)).measure()
    assert problem in str(caught.value)


def test_attestation_feature_disabled(fake_agent: FakeAgent) -> None:
    fake_agent.evidence_status = 404
    with pytest.raises(MeasurementUnavailable, match="HTTP 404 Attestation Feature Not Enabled"):
        AttestationAgentSource(AttestationAgentClient(fake_agent.url)).measure()


def test_unreachable_agent(closed_port_url: str) -> None:
    source = AttestationAgentSource(AttestationAgentClient(closed_port_url, timeout=0.5, attempts=2))
    assert source.available() is False
    with pytest.raises(MeasurementUnavailable, match="no listening socket on loopback port"):
        source.measure()
    with pytest.raises(MeasurementUnavailable, match="no source is present"):
        gate_initdata(FIXTURE_INITDATA, aa_config(closed_port_url), now=FIXTURE_NOW)


def test_proxy_variables_are_ignored(fake_agent: FakeAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert AttestationAgentClient(fake_agent.url).info()["tee"] == "tdx"


# --- runtime measurement (AAEL) ------------------------------------------------------------------------


def test_record_ruleset_digest(fake_agent: FakeAgent) -> None:
    digest = "sha256:" + "12" * 32
    record_ruleset_digest(digest, bundle_version=4, client=AttestationAgentClient(fake_agent.url))
    assert fake_agent.events == [
        {
            "domain": AAEL_DOMAIN,
            "operation": AAEL_OPERATION,
            "content": '{"bundle_version":4,"ruleset":"' + digest + '"}',
        }
    ]
    for event in fake_agent.events:
        assert " " not in event["domain"] + event["operation"] and "\n" not in event["content"]


def test_record_ruleset_digest_reports_failure(fake_agent: FakeAgent, closed_port_url: str) -> None:
    fake_agent.aael_success = False
    with pytest.raises(AttestationAgentError, match="success: the attestation-agent did not record it"):
        record_ruleset_digest("sha256:" + "00" * 32, client=AttestationAgentClient(fake_agent.url))
    assert len(fake_agent.events) == 1
    client = AttestationAgentClient(closed_port_url, timeout=0.5, attempts=1)
    with pytest.raises(AttestationAgentError, match="unreachable"):
        record_ruleset_digest("sha256:" + "00" * 32, client=client)


# --- updates from the Confidential Data Hub ---------------------------------------------------------------


def test_update_from_cdh_resource(fake_agent: FakeAgent) -> None:
    fake_agent.evidence = (EVIDENCE / "snp.json").read_bytes()
    current = gate_initdata(FIXTURE_INITDATA, aa_config(fake_agent.url), now=FIXTURE_NOW)
    newer = make_envelope([signing_key("owner-ed25519"), signing_key("owner-p384")], version=2).to_json()
    fake_agent.resources["warden/bundle/latest"] = newer
    client = AttestationAgentClient(fake_agent.url)
    fetched = client.resource("warden", "bundle", "latest")
    assert fetched == newer
    origin = "cdh warden/bundle/latest"
    updated = gate_update(fetched, current, aa_config(fake_agent.url), origin=origin, now=FIXTURE_NOW)
    assert updated.bundle_version == 2
    with pytest.raises(AttestationAgentError, match="HTTP 404"):
        client.resource("warden", "bundle", "missing")
    with pytest.raises(AttestationAgentError, match="is not a path segment"):
        client.resource("..", "bundle", "latest")


def test_snp_report_fixture_matches_layout() -> None:
    report = snp_report(b"\xaa" * 32, b"nonce")
    assert report[0x50:0x55] == b"nonce"
    assert int.from_bytes(report[0:4], "little") == 3


def test_oversized_evidence_is_refused() -> None:
    huge = b'{"quote": "' + b"A" * (4 * 1024 * 1024) + b'"}'
    with pytest.raises(MeasurementUnavailable, match="evidence: larger than 4194304 bytes"):
        measurement_from_evidence(huge, origin="aa", source="attestation-agent")


def test_sample_fallback_depends_on_what_the_agent_reports(fake_agent: FakeAgent) -> None:
    from attest.detect import first_measurement
    from attest.sample import SampleSource

    fake_agent.evidence_status = 404  # api-server-rest without the attestation feature
    sources = [AttestationAgentSource(AttestationAgentClient(fake_agent.url)), SampleSource()]
    fake_agent.tee = "tdx"  # a TEE is there and its evidence cannot be read: fail closed
    with pytest.raises(MeasurementUnavailable, match=r"attestation-agent: .*HTTP 404"):
        first_measurement(sources)
    fake_agent.tee = "sample"  # the agent found no TEE either: sample may be used
    assert first_measurement(sources).insecure is True


def test_redirects_are_not_followed(fake_agent: FakeAgent) -> None:
    with pytest.raises(AttestationAgentError, match="HTTP 302"):
        AttestationAgentClient(fake_agent.url, timeout=1.0).request("GET", "/redirect")
