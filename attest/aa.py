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

The evidence is read, not verified: we trust the local AA as we trust the kernel interfaces it
wraps (a relying party verifies the same evidence's signature remotely). Requests never go through
a proxy (HTTP_PROXY must not redirect a loopback call), redirects are not followed, and every
response is size-bounded.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
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
from initdata.errors import AttestationAgentError, GateError, MeasurementUnavailable

DEFAULT_AA_SOCKET = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
DEFAULT_AA_REST_URL = "http://127.0.0.1:8006"
DEFAULT_AA_URL = DEFAULT_AA_SOCKET
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # TDX evidence carries the CC event log
AAEL_DOMAIN = "github.com/coco-warden"  # AAEL: domain and operation must not contain whitespace
AAEL_OPERATION = "EnforcePolicy"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would take a loopback call elsewhere; treat it as the error status it is."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


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
            headers = {"Content-Type": "application/json"} if body is not None else {}
            req = urllib.request.Request(url, data=body, method=method, headers=headers)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
            try:
                with opener.open(req, timeout=self.timeout) as response:
                    data: bytes = response.read(MAX_RESPONSE_BYTES + 1)
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


def _json_object(data: bytes, *, origin: str, field: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise AttestationAgentError(origin, field, "is not JSON") from None
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


def measurement_from_evidence(evidence: bytes, *, origin: str, source: str) -> Measurement:
    """The initdata register from attestation-agent evidence JSON, per TEE.

    - TDX: {"cc_eventlog": ..., "quote": base64(TD quote)}              -> MRCONFIGID
    - SNP: {"attestation_report": base64(raw report) or the report as an object with a
            32-number "host_data" array (serde form), "cert_chain": ...} -> HOSTDATA
    - sample: {"svn": "1", "report_data": ...}                           -> no TEE (insecure)
    """
    if len(evidence) > MAX_RESPONSE_BYTES:
        raise MeasurementUnavailable(origin, "evidence", f"larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        document = json.loads(evidence)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise MeasurementUnavailable(origin, "evidence", "is not JSON") from None
    if not isinstance(document, dict):
        raise MeasurementUnavailable(origin, "evidence", "is not a JSON object")
    if "quote" in document:
        quote = _b64(document["quote"], origin=origin, field="evidence.quote")
        value = mrconfigid_from_quote(quote, origin=f"{origin} evidence.quote")
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
        else:
            raw = _b64(report, origin=origin, field="evidence.attestation_report")
            value = hostdata_from_report(raw, origin=f"{origin} evidence.attestation_report")
        return Measurement(source=source, tee=Tee.SNP, value=value, detail=f"{origin} (SNP report)")
    if "svn" in document and "report_data" in document:
        return Measurement(source=source, tee=None, value=b"", detail=f"{origin} (sample attester)")
    raise MeasurementUnavailable(
        origin, "evidence", f"unsupported evidence (fields: {', '.join(sorted(document)[:8])})"
    )


class AttestationAgentSource:
    name = "attestation-agent"

    def __init__(self, client: AttestationAgentApi | None = None) -> None:
        self.client: AttestationAgentApi = client if client is not None else TtrpcAttestationAgent()
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

    def measure(self) -> Measurement:
        origin = f"{self.client.origin} evidence"
        try:
            evidence = self.client.get_evidence(secrets.token_hex(16).encode())
        except AttestationAgentError as exc:
            raise MeasurementUnavailable(exc.origin, exc.field, exc.problem) from None
        return measurement_from_evidence(evidence, origin=origin, source=self.name)


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
