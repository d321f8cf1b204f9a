"""The attestation-agent / Confidential Data Hub REST API (guest-components api-server-rest).

Endpoints used (default base http://127.0.0.1:8006, loopback only):
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
from typing import Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from attest.base import Measurement
from attest.snp import hostdata_from_report
from attest.tdx import mrconfigid_from_quote
from attest.tee import Tee
from initdata import strict_json
from initdata.errors import AttestationAgentError, GateError, MeasurementUnavailable

DEFAULT_AA_URL = "http://127.0.0.1:8006"
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # TDX evidence carries the CC event log
AAEL_DOMAIN = "github.com/coco-warden"  # AAEL: domain and operation must not contain whitespace
AAEL_OPERATION = "EnforcePolicy"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would take a loopback call elsewhere; treat it as the error status it is."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Transient(Exception):
    """Connection refused / timeout: worth one more try. Never escapes this module."""


@dataclass(frozen=True)
class AttestationAgentClient:
    base_url: str = DEFAULT_AA_URL
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

    def evidence(self, runtime_data: str) -> bytes:
        return self.request("GET", "/aa/evidence", query={"runtime_data": runtime_data})

    def record_event(self, domain: str, operation: str, content: str) -> bool:
        """POST /aa/aael; True only if the AA says the event was recorded."""
        body = json.dumps({"domain": domain, "operation": operation, "content": content}).encode()
        data = self.request("POST", "/aa/aael", body=body)
        answer = _json_object(data, origin=self._url("/aa/aael"), field="response")
        return answer.get("success") in ("true", True)

    def resource(self, repository: str, kind: str, tag: str) -> bytes:
        for part, name in ((repository, "repository"), (kind, "type"), (tag, "tag")):
            if not part or "/" in part or part in (".", ".."):
                raise AttestationAgentError(self.base_url, name, f"{part!r} is not a path segment")
        path = "/cdh/resource/" + "/".join(urllib.parse.quote(p, safe="") for p in (repository, kind, tag))
        return self.request("GET", path)


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


def measurement_from_evidence(evidence: bytes, *, origin: str, source: str) -> Measurement:
    """The initdata register from attestation-agent evidence JSON, per TEE.

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

    def __init__(self, client: AttestationAgentClient | None = None) -> None:
        self.client = client if client is not None else AttestationAgentClient()
        self._reported_tee: object = None

    def available(self) -> bool:
        probe = AttestationAgentClient(
            self.client.base_url, timeout=min(self.client.timeout, 1.0), attempts=1
        )
        try:
            self._reported_tee = probe.info().get("tee")
        except GateError:
            return False
        return True

    def tee_detected(self) -> bool:
        # The AA reports its primary attester; "sample" means it found no TEE either.
        return isinstance(self._reported_tee, str) and self._reported_tee not in ("", "sample")

    def measure(self) -> Measurement:
        origin = self.client._url("/aa/evidence")
        try:
            evidence = self.client.evidence(secrets.token_hex(16))
        except AttestationAgentError as exc:
            raise MeasurementUnavailable(exc.origin, exc.field, exc.problem) from None
        return measurement_from_evidence(evidence, origin=origin, source=self.name)


def record_ruleset_digest(
    ruleset_digest: str, *, bundle_version: int | None = None, client: AttestationAgentClient | None = None
) -> bool:
    """After enforcement: put the RuleSet digest into the runtime measurement (AAEL).

    Returns whether the attestation-agent recorded it. Never raises: an AA that is absent, has the
    eventlog disabled, or answers oddly means "not recorded", which the caller reports.
    """
    content_fields: dict[str, object] = {"ruleset": ruleset_digest}
    if bundle_version is not None:
        content_fields["bundle_version"] = bundle_version
    # RFC 8785-style canonical JSON for these simple values: sorted keys, no whitespace, no LF.
    content = json.dumps(content_fields, sort_keys=True, separators=(",", ":"))
    try:
        return (client or AttestationAgentClient()).record_event(AAEL_DOMAIN, AAEL_OPERATION, content)
    except GateError:
        return False
