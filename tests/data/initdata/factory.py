"""Test data for the attestation gate: keys, signed bundles, initdata, and recorded evidence.

Used two ways:
- imported by tests (`from tests.data.initdata.factory import ...`) to build fresh bundles;
- run as a script (`.venv/bin/python -m tests.data.initdata.factory`) to regenerate the committed
  fixtures: keys/, bundle-v1.json, initdata-v1.toml and ../evidence/{tdx,snp,sample}.json.

The evidence files follow the documented layouts: a TD quote v4 (48-byte header, 584-byte TD report
body with MRCONFIGID at [232, 280), then the signature data), and a 0x4A0-byte SNP attestation report
(HOSTDATA at 0xC0..0xE0), base64-encoded in the JSON the attestation-agent returns. Both carry the
digest of initdata-v1.toml, so the gate accepts that initdata through the fake attestation-agent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from datetime import UTC, datetime
from pathlib import Path

from attest.tee import fit_to_field
from initdata.bundle import PodIdentity, PolicyFile, build_payload
from initdata.document import HashAlgorithm, build_initdata_toml, parse_initdata
from initdata.dsse import BUNDLE_PAYLOAD_TYPE, Envelope, sign_envelope
from initdata.keys import SigningKey, load_signing_key_pem

HERE = Path(__file__).parent
KEYS = HERE / "keys"
POLICIES = HERE / "policies"
EVIDENCE = HERE.parent / "evidence"
FIXTURE_EXPIRES = datetime(2036, 1, 1, tzinfo=UTC)
FIXTURE_NOW = datetime(2026, 6, 1, tzinfo=UTC)
KEY_NAMES = ("owner-ed25519", "owner-p256", "owner-p384")

TDX_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")  # Intel's QE vendor id


def signing_key(name: str) -> SigningKey:
    path = KEYS / f"{name}.key"
    return load_signing_key_pem(path.read_bytes(), origin=str(path))


def public_pem(name: str) -> bytes:
    return (KEYS / f"{name}.pem").read_bytes()


def policy_files(directory: Path = POLICIES) -> list[PolicyFile]:
    return [PolicyFile(p.name, p.read_text()) for p in sorted(directory.glob("*.yaml"))]


def make_envelope(
    keys: list[SigningKey],
    *,
    version: int = 1,
    expires: datetime = FIXTURE_EXPIRES,
    policies: list[PolicyFile] | None = None,
    bpf_objects: dict[str, str] | None = None,
    agent: dict[str, object] | None = None,
    payload_type: str = BUNDLE_PAYLOAD_TYPE,
    pod: PodIdentity | None = None,
) -> Envelope:
    payload = build_payload(
        version=version,
        expires=expires,
        policies=policies if policies is not None else policy_files(),
        bpf_objects=bpf_objects if bpf_objects is not None else {"warden_lsm.bpf.o": "sha256:" + "ab" * 32},
        agent=agent,
        pod=pod,
    )
    return sign_envelope(payload, payload_type, keys)


def make_initdata(
    envelope: Envelope | bytes | None,
    *,
    algorithm: HashAlgorithm = HashAlgorithm.SHA256,
    trust_pems: list[bytes] | None = None,
    extra: dict[str, str] | None = None,
) -> bytes:
    data: dict[str, str] = {"aa.toml": "[token_configs]\n", "cdh.toml": "socket = 'unix:///run/cdh.sock'\n"}
    data.update(extra or {})
    if trust_pems:
        data["warden.trust"] = "".join(p.decode() for p in trust_pems)
    if envelope is not None:
        raw = envelope.to_json() if isinstance(envelope, Envelope) else envelope
        data["warden.bundle"] = raw.decode()
    return build_initdata_toml(data, algorithm=algorithm)


# --- recorded evidence ---------------------------------------------------------------------------


def _filler(label: str, size: int) -> bytes:
    """Deterministic stand-in bytes for measurement registers we do not care about."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(f"{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def td_report_body(mrconfigid: bytes, report_data: bytes, *, tdx15: bool = False) -> bytes:
    """TDX 1.0 TD report body (584 bytes) or TDX 1.5 (648: + TEE_TCB_SVN2, MRSERVICETD)."""
    body = (
        _filler("tee_tcb_svn", 16)
        + _filler("mr_seam", 48)
        + b"\0" * 48  # mrsigner_seam: zero for the Intel TDX module
        + b"\0" * 8  # seam_attributes
        + struct.pack("<Q", 0x10000000)  # td_attributes: SEPT_VE_DISABLE
        + struct.pack("<Q", 0x61BE7)  # xfam
        + _filler("mr_td", 48)
        + fit_to_field(mrconfigid, 48)
        + b"\0" * 48  # mr_owner
        + b"\0" * 48  # mr_owner_config
        + _filler("rtmr0", 48)
        + _filler("rtmr1", 48)
        + _filler("rtmr2", 48)
        + b"\0" * 48  # rtmr3: nothing extended yet
        + report_data.ljust(64, b"\0")
    )
    assert len(body) == 584
    if tdx15:
        body += _filler("tee_tcb_svn2", 16) + b"\0" * 48
    return body


def _quote_signature_data() -> bytes:
    # ECDSA-256 quote signature data: signature, attestation key, then certification data
    # (type 6 = QE report certification data); contents are stand-ins, the layout is real.
    cert_data = _filler("qe_report_cert_data", 384 + 64 + 2 + 32)
    signature_data = (
        _filler("quote_signature", 64)
        + _filler("attestation_key", 64)
        + struct.pack("<HI", 6, len(cert_data))
        + cert_data
    )
    return struct.pack("<I", len(signature_data)) + signature_data


def tdx_quote_v4(mrconfigid: bytes, report_data: bytes = b"") -> bytes:
    header = (
        struct.pack("<HHI", 4, 2, 0x81)  # version 4, ECDSA-256-with-P-256 key, TEE type TDX
        + struct.pack("<HH", 0, 0)  # reserved (QE SVN, PCE SVN)
        + TDX_QE_VENDOR_ID
        + _filler("user_data", 20)
    )
    assert len(header) == 48
    quote = header + td_report_body(mrconfigid, report_data) + _quote_signature_data()
    assert quote[232:280] == fit_to_field(mrconfigid, 48)
    return quote


def tdx_quote_v5(mrconfigid: bytes, report_data: bytes = b"") -> bytes:
    header = (
        struct.pack("<HHI", 5, 2, 0x81)
        + struct.pack("<HH", 0, 0)
        + TDX_QE_VENDOR_ID
        + _filler("user_data", 20)
    )
    body = td_report_body(mrconfigid, report_data, tdx15=True)
    quote = header + struct.pack("<HI", 3, len(body)) + body + _quote_signature_data()
    assert quote[238:286] == fit_to_field(mrconfigid, 48)
    return quote


def snp_report(hostdata: bytes, report_data: bytes = b"") -> bytes:
    report = bytearray(0x4A0)
    struct.pack_into("<III", report, 0x00, 3, 0, 0)  # version 3, guest_svn 0
    struct.pack_into("<Q", report, 0x08, 0x30000)  # policy: SMT allowed, reserved bit 17
    struct.pack_into("<I", report, 0x34, 1)  # signature algorithm: ECDSA P-384 with SHA-384
    struct.pack_into("<Q", report, 0x38, 0xDB18000000000004)  # current TCB
    report[0x50:0x90] = report_data.ljust(64, b"\0")
    report[0x90:0xC0] = _filler("launch_measurement", 48)
    report[0xC0:0xE0] = fit_to_field(hostdata, 32)
    report[0x1A0:0x1E0] = _filler("chip_id", 64)
    report[0x2A0:0x2A0 + 144] = _filler("signature_r_s", 144)
    return bytes(report)


def tdx_evidence(mrconfigid: bytes, report_data: bytes = b"") -> bytes:
    quote = tdx_quote_v4(mrconfigid, report_data)
    document = {"cc_eventlog": None, "quote": base64.b64encode(quote).decode()}
    return (json.dumps(document) + "\n").encode()


def snp_evidence(hostdata: bytes, report_data: bytes = b"") -> bytes:
    report = snp_report(hostdata, report_data)
    document = {"attestation_report": base64.b64encode(report).decode(), "cert_chain": None}
    return (json.dumps(document) + "\n").encode()


def sample_evidence(report_data: bytes = b"coco-warden") -> bytes:
    document = {"svn": "1", "report_data": base64.b64encode(report_data).decode()}
    return (json.dumps(document) + "\n").encode()


def regenerate() -> None:
    """Rewrite the committed fixtures (keys only if missing: they are the fixture's identity)."""
    from initdata.keys import KeyAlgorithm, generate_signing_key

    KEYS.mkdir(exist_ok=True)
    for name, algorithm in zip(KEY_NAMES, KeyAlgorithm, strict=True):
        if not (KEYS / f"{name}.key").exists():
            private_pem, pub = generate_signing_key(algorithm)
            (KEYS / f"{name}.key").write_bytes(private_pem)
            (KEYS / f"{name}.pem").write_bytes(pub)
    envelope = make_envelope([signing_key("owner-ed25519"), signing_key("owner-p256")])
    (HERE / "bundle-v1.json").write_bytes(envelope.to_json())
    toml = make_initdata(envelope)
    (HERE / "initdata-v1.toml").write_bytes(toml)
    digest = parse_initdata(toml, origin="initdata-v1.toml").digest
    runtime_data = b"warden-recorded-evidence"
    EVIDENCE.mkdir(exist_ok=True)
    (EVIDENCE / "tdx.json").write_bytes(tdx_evidence(digest, runtime_data))
    (EVIDENCE / "snp.json").write_bytes(snp_evidence(digest, runtime_data))
    (EVIDENCE / "sample.json").write_bytes(sample_evidence(runtime_data))
    print(f"initdata-v1.toml sha256 {digest.hex()}")


if __name__ == "__main__":
    regenerate()
