"""The attestation-agent: over its own ttrpc socket (default) or guest-components' api-server-rest.

Two transports, one interface (`AttestationAgentApi`):
- ttrpc (`TtrpcAttestationAgent`, address unix:///run/confidential-containers/attestation-agent/
  attestation-agent.sock, the default of guest-components `attestation-agent/src/bin/ttrpc-aa/main.rs`):
  `attestation_agent.AttestationAgentService` GetEvidence, ExtendRuntimeMeasurement, GetTeeType
  (`attestation-agent/protos/attestation-agent.proto`; attest.protos, attest.ttrpc). This is the one
  that is there in both pod VMs: api-server-rest runs in the pod network namespace in peer pods and
  its /aa/* feature is off by default.
- REST (`AttestationAgentClient`, an http(s) URL), the api-server-rest endpoints below.

ExtendRuntimeMeasurement needs `[eventlog_config] enable_eventlog = true` in the AA's aa.toml;
without it the AA answers "Extend eventlog not enabled when launching!" (attestation-agent/src/lib.rs).

REST endpoints used (base http://127.0.0.1:8006, loopback only):
- GET  /info                                  -> {"tee": ..., ...}   (cheap reachability probe)
- GET  /aa/evidence?runtime_data=<str>        -> evidence JSON of the primary attester
- POST /aa/aael {domain, operation, content}  -> {"success": "true"} when the event was recorded
- GET  /cdh/resource/<repo>/<type>/<tag>      -> resource bytes (a newer bundle, for updates)

Who answers matters (issue 15 item 4): any local uid can listen on a loopback port the real AA is
not holding. So evidence from this REST path counts as a measurement only when
- the URL is loopback and the socket listening on it belongs to uid 0 (its owner in
  /proc/net/tcp{,6}, checked before and after the request: `check_loopback_listener`), and
- the evidence carries the fresh nonce we sent as runtime_data in its report data (TDX quote
  REPORTDATA, SNP report REPORT_DATA: the AA zero-pads runtime_data to 64 bytes, guest-components
  attestation-agent/attester/src/{tdx,snp}/mod.rs), so a recorded quote cannot be replayed.
The quote's signature is not verified here (the relying party does that): a root process that
forges a whole quote is inside the TCB anyway. The attestation-agent over its root-owned unix
socket with a peer check (attest/ttrpc.py, another branch) is the preferred transport.
Requests never go through a proxy (HTTP_PROXY must not redirect a loopback call), redirects are not
followed, and every response is size-bounded.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from attest.base import Measurement
from attest.protos import (
    AA_EXTEND_RUNTIME_MEASUREMENT,
    AA_GET_EVIDENCE,
    AA_GET_TEE_TYPE,
    AA_SERVICE,
    ProtoDecodeError,
    encode,
    field_value,
)
from attest.snp import hostdata_from_report
from attest.tdx import mrconfigid_from_quote
from attest.tee import Tee
from attest.ttrpc import TtrpcClient
from initdata import strict_json
from initdata.errors import AttestationAgentError, GateError, MeasurementUnavailable

DEFAULT_AA_SOCKET = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
DEFAULT_AA_REST_URL = "http://127.0.0.1:8006"
DEFAULT_AA_URL = DEFAULT_AA_SOCKET
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # TDX evidence carries the CC event log
AAEL_DOMAIN = "github.com/coco-warden"  # AAEL: domain and operation must not contain whitespace
AAEL_OPERATION = "EnforcePolicy"


class _Transient(Exception):
    """Connection refused / timeout: worth one more try. Never escapes this module."""


class AttestationAgentApi(Protocol):
    """What warden asks the attestation-agent, whichever transport carries it."""

    @property
    def origin(self) -> str: ...

    def tee_type(self, *, timeout: float | None = None) -> str:
        """The AA's primary attester ("tdx", "snp", ..., "sample" for none); a cheap reachability probe."""
        ...

    def get_evidence(self, runtime_data: bytes) -> bytes: ...

    def extend_runtime_measurement(
        self, domain: str, operation: str, content: str, register_index: int | None = None
    ) -> None:
        """Record one AAEL event; AttestationAgentError unless the AA says it was recorded."""
        ...


@dataclass(frozen=True)
class TtrpcAttestationAgent:
    """The AA's own ttrpc API on its unix socket."""

    address: str = DEFAULT_AA_SOCKET
    timeout: float = 2.0
    peer_uid: int | None = 0

    @property
    def origin(self) -> str:
        return self.address

    def _client(self, timeout: float | None = None) -> TtrpcClient:
        return TtrpcClient(self.address, timeout=self.timeout if timeout is None else timeout,
                           peer_uid=self.peer_uid, max_response_bytes=MAX_RESPONSE_BYTES)

    def _field(self, message: str, data: bytes, name: str) -> Any:
        try:
            return field_value(message, data, name)
        except ProtoDecodeError as exc:
            raise AttestationAgentError(self.address, "response", str(exc)) from None

    def tee_type(self, *, timeout: float | None = None) -> str:
        data = self._client(timeout).call(AA_SERVICE, AA_GET_TEE_TYPE, encode("attestation_agent.GetTeeTypeRequest"))
        return str(self._field("attestation_agent.GetTeeTypeResponse", data, "tee"))

    def get_evidence(self, runtime_data: bytes) -> bytes:
        request = encode("attestation_agent.GetEvidenceRequest", RuntimeData=runtime_data)
        data = self._client().call(AA_SERVICE, AA_GET_EVIDENCE, request)
        evidence: bytes = self._field("attestation_agent.GetEvidenceResponse", data, "Evidence")
        return evidence

    def extend_runtime_measurement(
        self, domain: str, operation: str, content: str, register_index: int | None = None
    ) -> None:
        fields: dict[str, Any] = {"Domain": domain, "Operation": operation, "Content": content}
        if register_index is not None:
            fields["RegisterIndex"] = register_index
        request = encode("attestation_agent.ExtendRuntimeMeasurementRequest", **fields)
        self._client().call(AA_SERVICE, AA_EXTEND_RUNTIME_MEASUREMENT, request)


def attestation_agent(address: str, *, timeout: float = 2.0) -> AttestationAgentApi:
    """The client for a configured address: unix://... -> ttrpc, http(s)://... -> api-server-rest."""
    if address.startswith("unix://"):
        return TtrpcAttestationAgent(address, timeout=timeout)
    return AttestationAgentClient(address, timeout=timeout)


@dataclass(frozen=True)
class AttestationAgentClient:
    """guest-components api-server-rest (the AA and CDH behind one loopback HTTP server)."""

    base_url: str = DEFAULT_AA_REST_URL
    timeout: float = 2.0
    attempts: int = 2

    def _url(self, path: str, query: dict[str, str] | None = None) -> str:
        url = self.base_url.rstrip("/") + path
        return url + ("?" + urllib.parse.urlencode(query) if query else "")

    def request(
        self, method: str, path: str, *, query: dict[str, str] | None = None, body: bytes | None = None
    ) -> bytes:
        """One bounded HTTP exchange with retries on connection failure; AttestationAgentError else."""
        url = self._url(path, query)

        @retry(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(max(1, self.attempts)),
            wait=wait_fixed(0.2),
            reraise=True,
        )
        def once() -> bytes:
            # Imported here: urllib.request brings http.client and email, a noticeable share of the
            # supervisor's start under emulation, for the REST transport, which is used only when configured.
            import urllib.error
            import urllib.request

            class NoRedirect(urllib.request.HTTPRedirectHandler):
                """A redirect would take a loopback call elsewhere; treat it as the error status it is."""

                def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                    return None

            headers = {"Content-Type": "application/json"} if body is not None else {}
            req = urllib.request.Request(url, data=body, method=method, headers=headers)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())
            try:
                with opener.open(req, timeout=self.timeout) as response:
                    data = _read_body(response, deadline=time.monotonic() + self.timeout, url=url)
            except urllib.error.HTTPError as exc:
                detail = exc.read(200).decode("utf-8", errors="replace")
                raise AttestationAgentError(url, "status", f"HTTP {exc.code} {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                raise _Transient(str(getattr(exc, "reason", exc))) from None
            except OSError as exc:  # e.g. a malformed response line
                raise AttestationAgentError(url, "response", f"{type(exc).__name__}: {exc}") from None
            if len(data) > MAX_RESPONSE_BYTES:
                raise AttestationAgentError(url, "response", f"larger than {MAX_RESPONSE_BYTES} bytes")
            return data

        try:
            return once()
        except _Transient as exc:
            raise AttestationAgentError(url, "connection", f"unreachable ({exc})") from None

    def info(self) -> dict[str, Any]:
        data = self.request("GET", "/info")
        return _json_object(data, origin=self._url("/info"), field="info")

    @property
    def origin(self) -> str:
        return self.base_url

    def tee_type(self, *, timeout: float | None = None) -> str:
        probe = self if timeout is None else AttestationAgentClient(self.base_url, timeout=timeout, attempts=1)
        tee = probe.info().get("tee")
        if not isinstance(tee, str):
            raise AttestationAgentError(self._url("/info"), "tee", "missing or not a string")
        return tee

    def evidence(self, runtime_data: str) -> bytes:
        return self.request("GET", "/aa/evidence", query={"runtime_data": runtime_data})

    def get_evidence(self, runtime_data: bytes) -> bytes:
        # api-server-rest passes the query string's UTF-8 bytes on as RuntimeData.
        return self.evidence(runtime_data.decode("ascii"))

    def record_event(self, domain: str, operation: str, content: str) -> bool:
        """POST /aa/aael; True only if the AA says the event was recorded."""
        body = json.dumps({"domain": domain, "operation": operation, "content": content}).encode()
        data = self.request("POST", "/aa/aael", body=body)
        answer = _json_object(data, origin=self._url("/aa/aael"), field="response")
        return answer.get("success") in ("true", True)

    def extend_runtime_measurement(
        self, domain: str, operation: str, content: str, register_index: int | None = None
    ) -> None:
        # The REST body has no register index: the AA's default PCR (eventlog_config.init_pcr) is used.
        if not self.record_event(domain, operation, content):
            raise AttestationAgentError(self._url("/aa/aael"), "success", "the attestation-agent did not record it")

    def resource(self, repository: str, kind: str, tag: str) -> bytes:
        for part, name in ((repository, "repository"), (kind, "type"), (tag, "tag")):
            if not part or "/" in part or part in (".", ".."):
                raise AttestationAgentError(self.base_url, name, f"{part!r} is not a path segment")
        path = "/cdh/resource/" + "/".join(urllib.parse.quote(p, safe="") for p in (repository, kind, tag))
        return self.request("GET", path)


def _read_body(response: Any, *, deadline: float, url: str) -> bytes:
    """The response body, at most MAX_RESPONSE_BYTES + 1, within `deadline`: a server that trickles
    its body cannot stretch one request beyond its timeout (each read still has the socket timeout)."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_RESPONSE_BYTES:
        if time.monotonic() > deadline:
            raise AttestationAgentError(url, "response", "the body did not arrive within the timeout")
        chunk: bytes = response.read1(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _json_object(data: bytes, *, origin: str, field: str) -> dict[str, Any]:
    document = strict_json.loads(data, origin=origin, field=field, error=AttestationAgentError)
    if not isinstance(document, dict):
        raise AttestationAgentError(origin, field, "is not a JSON object")
    return document


def _b64(value: object, *, origin: str, field: str) -> bytes:
    if not isinstance(value, str):
        raise MeasurementUnavailable(origin, field, "missing or not a base64 string")
    text = value.strip()
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MeasurementUnavailable(origin, field, "is not valid base64") from None


TDX_REPORT_DATA_OFFSET = {4: 568, 5: 574}  # quote header 48 (+6 for v5's body descriptor) + 520 in the body
SNP_REPORT_DATA = slice(0x50, 0x90)
REPORT_DATA_SIZE = 64


def _check_nonce(report_data: bytes, runtime_data: bytes | None, *, origin: str, field: str) -> None:
    if runtime_data is None:
        return
    expected = runtime_data.ljust(REPORT_DATA_SIZE, b"\0")
    if len(report_data) != REPORT_DATA_SIZE or not hmac.compare_digest(report_data, expected):
        raise MeasurementUnavailable(origin, field, "does not carry the nonce we sent: replayed or forged evidence")


def measurement_from_evidence(
    evidence: bytes, *, origin: str, source: str, runtime_data: bytes | None = None
) -> Measurement:
    """The initdata register from attestation-agent evidence JSON, per TEE. With `runtime_data`,
    the evidence's report data must be exactly it, zero-padded to 64 bytes (the nonce check).

    - TDX: {"cc_eventlog": ..., "quote": base64(TD quote)}              -> MRCONFIGID
    - SNP: {"attestation_report": base64(raw report) or the report as an object with a
            32-number "host_data" array (serde form), "cert_chain": ...} -> HOSTDATA
    - sample: {"svn": "1", "report_data": ...}                           -> no TEE (insecure)
    """
    if len(evidence) > MAX_RESPONSE_BYTES:
        raise MeasurementUnavailable(origin, "evidence", f"larger than {MAX_RESPONSE_BYTES} bytes")
    document = strict_json.loads(evidence, origin=origin, field="evidence", error=MeasurementUnavailable)
    if not isinstance(document, dict):
        raise MeasurementUnavailable(origin, "evidence", "is not a JSON object")
    if "quote" in document:
        quote = _b64(document["quote"], origin=origin, field="evidence.quote")
        value = mrconfigid_from_quote(quote, origin=f"{origin} evidence.quote")
        offset = TDX_REPORT_DATA_OFFSET[int.from_bytes(quote[:2], "little")]  # version checked just above
        _check_nonce(quote[offset:offset + REPORT_DATA_SIZE], runtime_data, origin=origin,
                     field="evidence.quote.report_data")
        return Measurement(source=source, tee=Tee.TDX, value=value, detail=f"{origin} (TDX quote)")
    if "attestation_report" in document:
        report = document["attestation_report"]
        if isinstance(report, dict):
            host_data = report.get("host_data")
            if (
                not isinstance(host_data, list)
                or len(host_data) != 32
                or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in host_data)
            ):
                raise MeasurementUnavailable(
                    origin, "evidence.attestation_report.host_data", "is not 32 byte values"
                )
            value = bytes(host_data)
            report_data = report.get("report_data")
            if not isinstance(report_data, list) or not all(
                isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in report_data
            ):
                report_data = []
            _check_nonce(bytes(report_data), runtime_data, origin=origin,
                         field="evidence.attestation_report.report_data")
        else:
            raw = _b64(report, origin=origin, field="evidence.attestation_report")
            value = hostdata_from_report(raw, origin=f"{origin} evidence.attestation_report")
            _check_nonce(raw[SNP_REPORT_DATA], runtime_data, origin=origin,
                         field="evidence.attestation_report.report_data")
        return Measurement(source=source, tee=Tee.SNP, value=value, detail=f"{origin} (SNP report)")
    if "svn" in document and "report_data" in document:
        return Measurement(source=source, tee=None, value=b"", detail=f"{origin} (sample attester)")
    raise MeasurementUnavailable(
        origin, "evidence", f"unsupported evidence (fields: {', '.join(sorted(document)[:8])})"
    )


_LOOPBACK_V4 = {"0100007F", "00000000"}  # 127.0.0.1 and 0.0.0.0, as /proc/net/tcp prints them
_LOOPBACK_V6 = {"00000000000000000000000001000000", "00000000000000000000000000000000"}  # ::1 and ::
TCP_LISTEN = "0A"


def loopback_listener_uids(port: int, *, proc_net: Path = Path("/proc/net")) -> set[int]:
    """Owners (uid) of the sockets listening on loopback (or any address) at `port`, this netns."""
    uids: set[int] = set()
    for name, loopback in (("tcp", _LOOPBACK_V4), ("tcp6", _LOOPBACK_V6)):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != TCP_LISTEN:
                continue
            address, _, hex_port = fields[1].partition(":")
            if address in loopback and int(hex_port, 16) == port:
                uids.add(int(fields[7]))
    return uids


def check_loopback_listener(base_url: str, *, required_uid: int = 0, proc_net: Path = Path("/proc/net")) -> None:
    """MeasurementUnavailable unless `base_url` is loopback and only `required_uid` listens there."""
    parsed = urllib.parse.urlsplit(base_url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise MeasurementUnavailable(base_url, "url", "evidence over the network is not a local TEE measurement")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    owners = loopback_listener_uids(port, proc_net=proc_net)
    if not owners:
        raise MeasurementUnavailable(base_url, "listener", f"no listening socket on loopback port {port} found")
    if owners != {required_uid}:
        raise MeasurementUnavailable(
            base_url, "listener",
            f"port {port} is held by uid {', '.join(map(str, sorted(owners)))}, not {required_uid}: "
            "not the attestation-agent")


class AttestationAgentSource:
    name = "attestation-agent"

    def __init__(self, client: AttestationAgentApi | None = None, *, required_uid: int = 0,
                 proc_net: Path = Path("/proc/net")) -> None:
        self.client: AttestationAgentApi = client if client is not None else TtrpcAttestationAgent()
        self.required_uid = required_uid  # REST only: who must own the loopback listener
        self.proc_net = proc_net
        self._reported_tee: object = None

    def available(self) -> bool:
        try:
            self._reported_tee = self.client.tee_type(timeout=1.0)
        except GateError:
            return False
        return True

    def tee_detected(self) -> bool:
        # The AA reports its primary attester; "sample" means it found no TEE either.
        return isinstance(self._reported_tee, str) and self._reported_tee not in ("", "sample")

    def _check_listener(self) -> None:
        # A loopback TCP port is anyone's to bind: the REST path counts only while uid 0 holds it. The
        # ttrpc path checks its peer's uid on the unix socket itself (attest.ttrpc.connect_unix).
        if isinstance(self.client, AttestationAgentClient):
            check_loopback_listener(self.client.base_url, required_uid=self.required_uid, proc_net=self.proc_net)

    def measure(self) -> Measurement:
        origin = f"{self.client.origin} evidence"
        nonce = secrets.token_hex(16)  # 32 ASCII bytes: what the AA puts (zero-padded) in the report data
        self._check_listener()
        try:
            evidence = self.client.get_evidence(nonce.encode())
        except AttestationAgentError as exc:
            raise MeasurementUnavailable(exc.origin, exc.field, exc.problem) from None
        self._check_listener()  # still the same owner after the exchange (a listener swapped in between)
        return measurement_from_evidence(evidence, origin=origin, source=self.name, runtime_data=nonce.encode())


def aael_content(ruleset_digest: str, bundle_version: int | None) -> str:
    """The event's content: RFC 8785-style canonical JSON (sorted keys, no whitespace, no LF: AAEL
    content must not contain a newline, attestation-agent/src/eventlog/mod.rs `Content`)."""
    fields: dict[str, object] = {"ruleset": ruleset_digest}
    if bundle_version is not None:
        fields["bundle_version"] = bundle_version
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def record_ruleset_digest(
    ruleset_digest: str, *, bundle_version: int | None = None, client: AttestationAgentApi | None = None
) -> None:
    """After enforcement: put the RuleSet digest into the runtime measurement (AAEL event
    `github.com/coco-warden EnforcePolicy <content>`). AttestationAgentError when it was not recorded
    (no AA yet, eventlog disabled, an odd answer); the caller retries and reports."""
    agent = client if client is not None else TtrpcAttestationAgent()
    agent.extend_runtime_measurement(AAEL_DOMAIN, AAEL_OPERATION, aael_content(ruleset_digest, bundle_version))
