"""When a vTPM counts as a TEE: the SEV-SNP report in its HCL report vouches for it (Azure CVMs).

On an Azure confidential VM the vTPM lives in the paravisor (HCL), inside the TEE at VMPL0. At boot
the paravisor asks the AMD firmware for an SNP report whose REPORT_DATA holds sha256(var_data), where
var_data is a JSON document naming the vTPM's attestation key (`HCLAkPub`); the whole "HCL report"
is stored in TPM NV index 0x01400001. So a chain runs from AMD to the PCR we read:

  AMD ARK (pinned) -RSA-PSS-> ASK -RSA-PSS-> VCEK -ECDSA P-384-> SNP report
  -> REPORT_DATA[:32] = sha256(var_data) -> HCLAkPub -> TPM2_Quote(PCR8, our fresh nonce)

Every link is checked here, on bytes (no I/O; attest.vtpm fetches them). A break anywhere raises
`NotVouched` with one line naming the field, and the vTPM then stays INSECURE / opt-in.

The fresh quote is what stops a host from copying a genuine HCL report from another VM into an
emulated TPM's NV index: it cannot sign our nonce with that VM's attestation key.

What the guest cannot check, and leaves to the relying party: whether the SNP MEASUREMENT is a
paravisor it trusts (reference values change with Azure's firmware), the TCB level, and the HCL
report's age (it is made once per boot; freshness comes from the relying party's own nonce). We do
refuse what no relying party should accept: a report not made at VMPL0 (the paravisor's level), a
guest policy that allows debugging, a masked chip key, and a key other than a VCEK (VLEK chains are
not supported). TDX HCL reports (report type 4) carry a TD report whose verification needs Intel's
PCS collateral (a quote from the TD quoting enclave): not done here, so an Azure TDX vTPM stays
INSECURE.

Layouts, from upstream:
- kinvolk/azure-cvm-tooling az-cvm-vtpm/src/hcl/mod.rs: `AttestationReport` = 32-byte header
  (signature "HCLA", version, report_size, request_type, status, 3 reserved u32), the hardware
  report in a 1184-byte slot (max of the SNP report, 0x4A0, and the TD report, 1024), then
  `IgvmRequestData` (data_size, version, report_type: 2 SNP / 4 TDX, report_data_hash_type: 1
  SHA-256, variable_data_size) and the variable data; `var_data_sha256()`, `ak_pub()` (kid HCLAkPub).
- az-cvm-vtpm/src/vtpm/mod.rs: NV index 0x01400001 read with owner auth; the AK at persistent handle
  0x81000003, an RSA key quoting with RSASSA/SHA-256.
- az-cvm-vtpm/az-snp-vtpm/src/report.rs: the report signature is ECDSA P-384 over bytes [0, 0x2A0)
  with SHA-384, checked with the VCEK; certs.rs: ASK signed by ARK, VCEK signed by ASK.
- confidential-containers/guest-components attestation-agent/attester/src/az_snp_vtpm/mod.rs: the
  attester that sends this evidence (hcl_report, tpm_quote, vcek) to the relying party.
- SEV-SNP firmware ABI (ATTESTATION_REPORT): POLICY at 0x08 (bit 19 DEBUG), VMPL 0x30,
  SIGNATURE_ALGO 0x34 (1 = ECDSA P-384/SHA-384), key info 0x48 (bit 1 MASK_CHIP_KEY, bits 2-4
  SIGNING_KEY: 0 VCEK), REPORT_DATA 0x50, MEASUREMENT 0x90, SIGNATURE 0x2A0 (R, S: 72 bytes each,
  little-endian).
- TPM 2.0 Part 2: TPMS_ATTEST (magic 0xFF544347, type 0x8018 TPM_ST_ATTEST_QUOTE), TPMS_QUOTE_INFO,
  TPMT_SIGNATURE (TPM_ALG_RSASSA 0x0014, TPM_ALG_SHA256 0x000B).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attest.amd_roots import PINNED_ARK_PEMS
from initdata import strict_json
from initdata.errors import NotVouched

if TYPE_CHECKING:
    # cryptography.x509 is imported where a certificate is parsed: it is a large share of the
    # supervisor's start under emulation, and only Azure's vouching (attest.vtpm) reads certificates.
    from cryptography import x509

HCL_NV_INDEX = 0x01400001
AK_HANDLE = 0x81000003
HCL_SIGNATURE = b"HCLA"
HEADER_SIZE = 32
HW_REPORT_SLOT = 1184  # max(SNP report 0x4A0, TD report 1024): the slot is that size whatever the type
REQUEST_DATA_OFFSET = HEADER_SIZE + HW_REPORT_SLOT
REQUEST_DATA_FIXED = 20  # five u32 before the variable data
VAR_DATA_OFFSET = REQUEST_DATA_OFFSET + REQUEST_DATA_FIXED
MAX_VAR_DATA = 16 * 1024
MAX_HCL_REPORT = VAR_DATA_OFFSET + MAX_VAR_DATA + 64 * 1024  # an NV index may be larger than its content
REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
HASH_TYPE_SHA256 = 1
AKPUB_KID = "HCLAkPub"

SNP_REPORT_SIZE = 0x4A0
SNP_SIGNED = slice(0, 0x2A0)
SNP_SIGNATURE_ECDSA_P384_SHA384 = 1
SNP_POLICY_DEBUG = 1 << 19
SNP_KEY_INFO_MASK_CHIP_KEY = 1 << 1

TPM_GENERATED = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_RSASSA = 0x0014
TPM_ALG_SHA256 = 0x000B
QUOTE_PCR = 8
MAX_CERT_PEM = 64 * 1024


@dataclass(frozen=True)
class HclReport:
    report_type: int
    hw_report: bytes  # the whole 1184-byte slot; an SNP report fills it
    var_data: bytes


@dataclass(frozen=True)
class SnpReport:
    version: int
    policy: int
    vmpl: int
    signature_algo: int
    key_info: int
    report_data: bytes
    measurement: bytes
    signed: bytes  # bytes [0, 0x2A0): what the VCEK signed
    signature_r: int
    signature_s: int


def _u32(raw: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", raw, offset)[0])


def parse_hcl_report(raw: bytes, *, origin: str) -> HclReport:
    """The HCL report's layout, strictly: magic, sizes within the buffer, known report and hash types."""
    if len(raw) > MAX_HCL_REPORT:
        raise NotVouched(origin, "hcl_report", f"{len(raw)} bytes exceeds the {MAX_HCL_REPORT}-byte limit")
    if len(raw) < VAR_DATA_OFFSET:
        raise NotVouched(origin, "hcl_report", f"{len(raw)} bytes is truncated (the fixed part is {VAR_DATA_OFFSET})")
    if raw[:4] != HCL_SIGNATURE:
        raise NotVouched(origin, "hcl_report.header.signature", f"{raw[:4].hex()} is not 'HCLA'")
    report_type = _u32(raw, REQUEST_DATA_OFFSET + 8)
    hash_type = _u32(raw, REQUEST_DATA_OFFSET + 12)
    var_size = _u32(raw, REQUEST_DATA_OFFSET + 16)
    if report_type == REPORT_TYPE_TDX:
        raise NotVouched(origin, "hcl_report.report_type",
                         "a TDX TD report: verifying it needs Intel PCS collateral, which warden does not check")
    if report_type != REPORT_TYPE_SNP:
        raise NotVouched(origin, "hcl_report.report_type", f"{report_type} is neither SNP (2) nor TDX (4)")
    if hash_type != HASH_TYPE_SHA256:
        raise NotVouched(origin, "hcl_report.report_data_hash_type", f"{hash_type} is not SHA-256 (1)")
    if var_size > MAX_VAR_DATA:
        raise NotVouched(origin, "hcl_report.variable_data_size", f"{var_size} exceeds {MAX_VAR_DATA}")
    if VAR_DATA_OFFSET + var_size > len(raw):
        raise NotVouched(origin, "hcl_report.variable_data_size",
                         f"{var_size} bytes run past the end of the {len(raw)}-byte report")
    var_data = raw[VAR_DATA_OFFSET:VAR_DATA_OFFSET + var_size]
    return HclReport(report_type, raw[HEADER_SIZE:REQUEST_DATA_OFFSET], var_data)


def parse_snp_report(raw: bytes, *, origin: str) -> SnpReport:
    if len(raw) < SNP_REPORT_SIZE:
        raise NotVouched(origin, "snp_report", f"{len(raw)} bytes, expected {SNP_REPORT_SIZE}")
    signature = raw[0x2A0:0x2A0 + 144]
    return SnpReport(
        version=_u32(raw, 0x00),
        policy=int(struct.unpack_from("<Q", raw, 0x08)[0]),
        vmpl=_u32(raw, 0x30),
        signature_algo=_u32(raw, 0x34),
        key_info=_u32(raw, 0x48),
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        signed=raw[SNP_SIGNED],
        signature_r=int.from_bytes(signature[:72], "little"),
        signature_s=int.from_bytes(signature[72:144], "little"),
    )


def check_snp_report(report: SnpReport, var_data: bytes, *, origin: str) -> None:
    """The report binds this var_data, and is one a paravisor at VMPL0 made under a non-debug policy."""
    if report.version < 2:
        raise NotVouched(origin, "snp_report.version", f"{report.version} is not an SNP report version (>= 2)")
    expected = hashlib.sha256(var_data).digest()
    if not hmac.compare_digest(report.report_data[:32], expected):
        raise NotVouched(origin, "snp_report.report_data",
                         f"{report.report_data[:32].hex()} is not sha256(var_data) {expected.hex()}")
    if report.vmpl != 0:
        raise NotVouched(origin, "snp_report.vmpl", f"{report.vmpl}: not made by the paravisor at VMPL0")
    if report.policy & SNP_POLICY_DEBUG:
        raise NotVouched(origin, "snp_report.policy", "allows debugging (the host can read guest memory)")
    if report.signature_algo != SNP_SIGNATURE_ECDSA_P384_SHA384:
        raise NotVouched(origin, "snp_report.signature_algo", f"{report.signature_algo} is not ECDSA P-384 (1)")
    if report.key_info & SNP_KEY_INFO_MASK_CHIP_KEY:
        raise NotVouched(origin, "snp_report.mask_chip_key", "set: the report is not signed")
    signing_key = (report.key_info >> 2) & 0x7
    if signing_key != 0:
        raise NotVouched(origin, "snp_report.signing_key", f"{signing_key} is not the VCEK (0); VLEK is not supported")


def _b64url_int(value: object, *, origin: str, field: str, max_bytes: int) -> int:
    if not isinstance(value, str) or not value or len(value) > (max_bytes * 4) // 3 + 4:
        raise NotVouched(origin, field, "is not a base64url string of a plausible size")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise NotVouched(origin, field, "is not base64url") from None
    return int.from_bytes(raw, "big")


def ak_public_key(var_data: bytes, *, origin: str) -> rsa.RSAPublicKey:
    """The vTPM's attestation key as var_data names it: the RSA JWK with kid HCLAkPub."""
    document = strict_json.loads(var_data, origin=origin, field="var_data", error=NotVouched)
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise NotVouched(origin, "var_data.keys", "missing or not a list")
    found = [k for k in keys if isinstance(k, dict) and k.get("kid") == AKPUB_KID]
    if len(found) != 1:
        raise NotVouched(origin, "var_data.keys", f"{len(found)} keys with kid {AKPUB_KID}, expected exactly 1")
    jwk = found[0]
    if jwk.get("kty") != "RSA":
        raise NotVouched(origin, "var_data.keys.HCLAkPub.kty", f"{jwk.get('kty')!r} is not 'RSA'")
    n = _b64url_int(jwk.get("n"), origin=origin, field="var_data.keys.HCLAkPub.n", max_bytes=512)
    e = _b64url_int(jwk.get("e"), origin=origin, field="var_data.keys.HCLAkPub.e", max_bytes=8)
    if n.bit_length() < 2048 or e < 3 or e % 2 == 0:
        raise NotVouched(origin, "var_data.keys.HCLAkPub",
                         f"not a usable RSA key ({n.bit_length()}-bit modulus, e={e})")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise NotVouched(origin, "var_data.keys.HCLAkPub", f"not a usable RSA key ({exc})") from None


class _Reader:
    """Big-endian TPM structures, every read bounded by the buffer."""

    def __init__(self, raw: bytes, origin: str, what: str) -> None:
        self.raw, self.pos, self.origin, self.what = raw, 0, origin, what

    def take(self, size: int, field: str) -> bytes:
        if self.pos + size > len(self.raw):
            raise NotVouched(self.origin, f"{self.what}.{field}", f"truncated at byte {self.pos}")
        out = self.raw[self.pos:self.pos + size]
        self.pos += size
        return out

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def sized(self, field: str) -> bytes:
        return self.take(self.uint(2, field + ".size"), field)

    def end(self) -> None:
        if self.pos != len(self.raw):
            raise NotVouched(self.origin, self.what, f"{len(self.raw) - self.pos} bytes after the structure")


def verify_quote(
    message: bytes, signature: bytes, ak: rsa.RSAPublicKey, *, nonce: bytes, pcr8: bytes, origin: str
) -> None:
    """A TPM2_Quote over exactly sha256 PCR8, carrying our nonce, signed by the AK (RSASSA, SHA-256)."""
    quote = _Reader(message, origin, "quote")
    if quote.uint(4, "magic") != TPM_GENERATED:
        raise NotVouched(origin, "quote.magic", "is not TPM_GENERATED_VALUE")
    if quote.uint(2, "type") != TPM_ST_ATTEST_QUOTE:
        raise NotVouched(origin, "quote.type", "is not TPM_ST_ATTEST_QUOTE")
    quote.sized("qualifiedSigner")
    if not hmac.compare_digest(quote.sized("extraData"), nonce):
        raise NotVouched(origin, "quote.extraData", "does not carry the nonce we sent (a replayed quote)")
    quote.take(17 + 8, "clockInfo")  # clock, resetCount, restartCount, safe; firmwareVersion
    if quote.uint(4, "pcrSelect.count") != 1:
        raise NotVouched(origin, "quote.pcrSelect", "does not select exactly one PCR bank")
    bank = quote.uint(2, "pcrSelect.hash")
    bitmap = quote.take(quote.uint(1, "pcrSelect.sizeofSelect"), "pcrSelect.bitmap")
    selected = [i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1]
    if bank != TPM_ALG_SHA256 or selected != [QUOTE_PCR]:
        raise NotVouched(origin, "quote.pcrSelect", f"selects bank {bank:#06x} PCRs {selected}, not sha256 PCR8")
    digest = quote.sized("pcrDigest")
    quote.end()
    if not hmac.compare_digest(digest, hashlib.sha256(pcr8).digest()):
        raise NotVouched(origin, "quote.pcrDigest", "is not the digest of the PCR8 value read from the kernel")
    sig = _Reader(signature, origin, "quote_signature")
    if sig.uint(2, "sigAlg") != TPM_ALG_RSASSA or sig.uint(2, "hash") != TPM_ALG_SHA256:
        raise NotVouched(origin, "quote_signature.sigAlg", "is not RSASSA with SHA-256")
    value = sig.sized("sig")
    sig.end()
    try:
        ak.verify(value, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise NotVouched(origin, "quote_signature", "does not verify with the HCL report's HCLAkPub") from None


def load_certificates(pem: bytes, *, origin: str) -> list[x509.Certificate]:
    if len(pem) > MAX_CERT_PEM:
        raise NotVouched(origin, "certificates", f"{len(pem)} bytes exceeds {MAX_CERT_PEM}")
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise NotVouched(origin, "certificates", "not PEM certificates (or one does not parse)") from None
    return certs


def _public_key(cert: x509.Certificate, *, origin: str, field: str) -> object:
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise NotVouched(origin, field, f"its public key cannot be used ({type(exc).__name__})") from None


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate, *, origin: str, field: str) -> None:
    """RSASSA-PSS with SHA-384 and a 48-byte salt, the only scheme AMD's ARK and ASK sign with."""
    from cryptography import x509

    if cert.issuer != issuer.subject:
        raise NotVouched(origin, field,
                         f"issued by {cert.issuer.rfc4514_string()}, not {issuer.subject.rfc4514_string()}")
    key = _public_key(issuer, origin=origin, field=field)
    if not isinstance(key, rsa.RSAPublicKey) or cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS:
        raise NotVouched(origin, field, "is not signed with RSASSA-PSS by an RSA key")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes,
                   padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48), hashes.SHA384())
    except InvalidSignature:
        raise NotVouched(origin, field, f"signature does not verify with {issuer.subject.rfc4514_string()}") from None


def _valid_at(cert: x509.Certificate, now: datetime, *, origin: str, field: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise NotVouched(origin, field, f"not valid at {now:%Y-%m-%d} ({cert.not_valid_before_utc:%Y-%m-%d} .. "
                                        f"{cert.not_valid_after_utc:%Y-%m-%d})")


def verify_vcek_chain(
    vcek: x509.Certificate, ask: x509.Certificate, *, now: datetime, origin: str,
    roots: Sequence[bytes] = PINNED_ARK_PEMS,
) -> tuple[ec.EllipticCurvePublicKey, str]:
    """VCEK <- ASK <- one of `roots` (AMD's ARKs in production); the VCEK's key and the root's name.

    A root certificate the host sends along is never used: only the pinned one whose subject is
    the ASK's issuer can end the chain.
    """
    from cryptography import x509

    pinned = [x509.load_pem_x509_certificate(pem) for pem in roots]
    ark = next((r for r in pinned if r.subject == ask.issuer), None)
    if ark is None:
        raise NotVouched(origin, "ask.issuer", f"{ask.issuer.rfc4514_string()} is not a pinned AMD root key (ARK)")
    _signed_by(ark, ark, origin=origin, field="ark")
    _signed_by(ask, ark, origin=origin, field="ask")
    _signed_by(vcek, ask, origin=origin, field="vcek")
    for cert, field in ((ark, "ark"), (ask, "ask"), (vcek, "vcek")):
        _valid_at(cert, now, origin=origin, field=field)
    key = _public_key(vcek, origin=origin, field="vcek")
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise NotVouched(origin, "vcek", "its key is not ECDSA P-384")
    name = ark.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return key, str(name[0].value) if name else ark.subject.rfc4514_string()


def verify_report_signature(report: SnpReport, vcek: ec.EllipticCurvePublicKey, *, origin: str) -> None:
    try:
        vcek.verify(encode_dss_signature(report.signature_r, report.signature_s), report.signed,
                    ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise NotVouched(origin, "snp_report.signature", "does not verify with the VCEK") from None


@dataclass(frozen=True)
class VouchEvidence:
    """What attest.vtpm collected from the TPM and from where the VCEK is provided."""

    hcl_report: bytes
    quote_message: bytes
    quote_signature: bytes
    nonce: bytes
    pcr8: bytes
    vcek: x509.Certificate
    ask: x509.Certificate


def vouch_snp(
    evidence: VouchEvidence, *, now: datetime, origin: str, roots: Sequence[bytes] = PINNED_ARK_PEMS
) -> str:
    """Every link from AMD's root to PCR8, or NotVouched naming the first that breaks; the root's name."""
    hcl = parse_hcl_report(evidence.hcl_report, origin=origin)
    report = parse_snp_report(hcl.hw_report, origin=origin)
    check_snp_report(report, hcl.var_data, origin=origin)
    ak = ak_public_key(hcl.var_data, origin=origin)
    verify_quote(evidence.quote_message, evidence.quote_signature, ak, nonce=evidence.nonce, pcr8=evidence.pcr8,
                 origin=origin)
    vcek, root = verify_vcek_chain(evidence.vcek, evidence.ask, now=now, origin=origin, roots=roots)
    verify_report_signature(report, vcek, origin=origin)
    return root
