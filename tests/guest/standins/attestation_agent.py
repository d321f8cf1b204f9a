"""Attestation-agent stand-in: the AA's ttrpc API on its socket, with its event log (AAEL).

What it does, and where upstream does it (confidential-containers/guest-components):
- listens on `--attestation_sock`, default unix:///run/confidential-containers/attestation-agent/
  attestation-agent.sock, creating the directory and removing a previous socket first
  (attestation-agent/src/bin/ttrpc-aa/main.rs);
- serves `attestation_agent.AttestationAgentService` GetEvidence, ExtendRuntimeMeasurement,
  GetTeeType (protos/attestation-agent.proto, bin/ttrpc-aa/server.rs); a failure is status INTERNAL
  "[ERROR:attestation-agent] ..." as server.rs sets it;
- the event log only when aa.toml says `[eventlog_config] enable_eventlog = true` (src/lib.rs
  `init`); otherwise ExtendRuntimeMeasurement fails ("Extend eventlog not enabled when launching!",
  src/lib.rs `extend_runtime_measurement`, which also refuses content with a newline: `Content`);
- the log is /run/attestation-agent/eventlog (EVENTLOG_PATH): an `INIT sha256/<register>` line when
  it is created (or found empty), then one `<domain> <operation> <content>` line per event, written
  and flushed before the register is extended (src/eventlog/mod.rs `EventLog::new`, `extend_entry`,
  `LogEntry`'s Display). There is no TEE register here to extend, so INIT is all zeros.
- evidence: the sample attester's {"svn": "1", "report_data": base64(runtime data)} and tee "sample"
  (attester/src/sample), or a recorded evidence file (`--evidence`, tests/data/evidence/*.json) with
  the TEE it came from, re-issued with the request's runtime data zero-padded into its report data,
  as the TDX and SNP attesters do (attester/src/{tdx,snp}/mod.rs).

Run in the guest: `python -m tests.guest.standins.attestation_agent [--config aa.toml]`.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attest.protos import AA_EXTEND_RUNTIME_MEASUREMENT, AA_GET_EVIDENCE, AA_GET_TEE_TYPE, AA_SERVICE, decode, encode
from tests.guest.standins.ttrpc_server import CODE_INTERNAL, RpcStatus, TtrpcServer

DEFAULT_SOCKET = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
EVENTLOG = Path("/run/attestation-agent/eventlog")
AGENT_NAME = "attestation-agent"


def with_runtime_data(evidence: bytes, runtime_data: bytes) -> bytes:
    """What a real AA does with runtime_data: zero-padded to 64 bytes into the report data
    (guest-components attester/src/{tdx,snp}/mod.rs); recorded evidence is re-issued with it."""
    document = json.loads(evidence)
    padded = runtime_data.ljust(64, b"\0")
    if "quote" in document:
        quote = bytearray(base64.b64decode(document["quote"]))
        offset = {4: 568, 5: 574}[int.from_bytes(quote[:2], "little")]
        quote[offset:offset + 64] = padded
        document["quote"] = base64.b64encode(bytes(quote)).decode()
    elif isinstance(document.get("attestation_report"), str):
        report = bytearray(base64.b64decode(document["attestation_report"]))
        report[0x50:0x90] = padded
        document["attestation_report"] = base64.b64encode(bytes(report)).decode()
    elif isinstance(document.get("attestation_report"), dict):
        document["attestation_report"]["report_data"] = list(padded)
    else:
        return evidence
    return json.dumps(document).encode()


def eventlog_enabled(aa_toml: Path | None) -> bool:
    if aa_toml is None:
        return False
    config = tomllib.loads(aa_toml.read_text())
    return bool(config.get("eventlog_config", {}).get("enable_eventlog", False))


@dataclass
class AttestationAgentStandin:
    enable_eventlog: bool
    eventlog: Path = EVENTLOG
    evidence: bytes | None = None
    tee: str = "sample"

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        if self.enable_eventlog:
            self.eventlog.parent.mkdir(parents=True, exist_ok=True)
            if not self.eventlog.exists() or self.eventlog.stat().st_size == 0:
                self.eventlog.write_text(f"INIT sha256/{'0' * 64}\n")

    def get_evidence(self, payload: bytes) -> bytes:
        runtime_data = bytes(decode("attestation_agent.GetEvidenceRequest", payload).RuntimeData)  # type: ignore[attr-defined]
        if self.evidence is None:
            evidence = json.dumps({"svn": "1", "report_data": base64.b64encode(runtime_data).decode()}).encode()
        else:
            evidence = with_runtime_data(self.evidence, runtime_data)
        return encode("attestation_agent.GetEvidenceResponse", Evidence=evidence)

    def extend_runtime_measurement(self, payload: bytes) -> bytes:
        request: Any = decode("attestation_agent.ExtendRuntimeMeasurementRequest", payload)
        failed = RpcStatus(CODE_INTERNAL, f"[ERROR:{AGENT_NAME}] AA extend runtime measurement failed")
        if not self.enable_eventlog or "\n" in request.Content:
            raise failed
        with self._lock, self.eventlog.open("a") as log:
            log.write(f"{request.Domain} {request.Operation} {request.Content}\n")
        return encode("attestation_agent.ExtendRuntimeMeasurementResponse")

    def get_tee_type(self, payload: bytes) -> bytes:
        return encode("attestation_agent.GetTeeTypeResponse", tee=self.tee)

    def server(self, socket_address: str = DEFAULT_SOCKET) -> TtrpcServer:
        path = Path(socket_address.removeprefix("unix://"))
        return TtrpcServer(path, {
            (AA_SERVICE, AA_GET_EVIDENCE): self.get_evidence,
            (AA_SERVICE, AA_EXTEND_RUNTIME_MEASUREMENT): self.extend_runtime_measurement,
            (AA_SERVICE, AA_GET_TEE_TYPE): self.get_tee_type,
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attestation_sock", default=DEFAULT_SOCKET)
    parser.add_argument("-c", "--config", type=Path, help="aa.toml")
    parser.add_argument("--evidence", type=Path, help="recorded evidence JSON to serve")
    parser.add_argument("--tee", default="sample")
    args = parser.parse_args()
    standin = AttestationAgentStandin(eventlog_enabled(args.config),
                                      evidence=args.evidence.read_bytes() if args.evidence else None, tee=args.tee)
    server = standin.server(args.attestation_sock)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.close).start())
    server.serve_forever()


if __name__ == "__main__":
    main()
