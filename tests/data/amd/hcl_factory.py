"""Test vectors for attest.hcl, built with `cryptography`: a test ARK -> ASK -> VCEK chain (the same
algorithms as AMD's: RSA-PSS/SHA-384 for the CA certificates, ECDSA P-384 for the VCEK), an SNP
report signed by the test VCEK, the HCL report around it (the layout of kinvolk/azure-cvm-tooling
az-cvm-vtpm/src/hcl/mod.rs) naming a test attestation key, and TPM2_Quote structures signed by it.

Every piece can be broken on purpose through keyword arguments, so each refusal has a vector.
`real_azure_chain()` is not made here: it is a real Azure VCEK -> ASK -> ARK-Milan chain
(kinvolk/azure-cvm-tooling az-cvm-vtpm/az-snp-vtpm/test/certs.pem, MIT licence).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

HERE = Path(__file__).parent
NOW = datetime(2026, 12, 7, tzinfo=UTC)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Not AMD"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def certificate(subject: str, issuer: str, public_key: object, signer: rsa.RSAPrivateKey, *,
                not_after: datetime = NOW + timedelta(days=3650), pss: bool = True) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
               .public_key(public_key).serial_number(x509.random_serial_number())  # type: ignore[arg-type]
               .not_valid_before(NOW - timedelta(days=365)).not_valid_after(not_after))
    if pss:
        return builder.sign(signer, hashes.SHA384(), rsa_padding=PSS)
    return builder.sign(signer, hashes.SHA384())


@cache
def rsa_key(label: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def ec_key(label: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@dataclass(frozen=True)
class Chain:
    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey

    @property
    def ark_pem(self) -> bytes:
        return self.ark.public_bytes(serialization.Encoding.PEM)

    def pem(self) -> bytes:
        """VCEK, ASK, ARK: the order of a `gate.vtpm_amd_certs` file and of IMDS' answer."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.vcek, self.ask, self.ark))


def make_chain(*, vcek_not_after: datetime = NOW + timedelta(days=3650), ask_signer: str = "ark",
               vcek_signer: str = "ask") -> Chain:
    ark_key, ask_key, vcek_key = rsa_key("ark"), rsa_key("ask"), ec_key("vcek")
    ark = certificate("Test-ARK", "Test-ARK", ark_key.public_key(), ark_key)
    ask = certificate("Test-ASK", "Test-ARK", ask_key.public_key(), rsa_key(ask_signer))
    vcek = certificate("Test-VCEK", "Test-ASK", vcek_key.public_key(), rsa_key(vcek_signer), not_after=vcek_not_after)
    return Chain(ark, ask, vcek, vcek_key)


def jwk(key: rsa.RSAPublicKey, kid: str = "HCLAkPub") -> dict[str, object]:
    numbers = key.public_numbers()

    def b64(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    return {"kid": kid, "key_ops": ["sign"], "kty": "RSA", "e": b64(numbers.e), "n": b64(numbers.n)}


def var_data(ak: rsa.RSAPublicKey) -> bytes:
    # Azure's var_data also carries "vm-configuration" and "user-data"; kept short so that the
    # whole HCL report fits the swtpm's 2048-byte NV index limit in the guest test.
    return json.dumps({"keys": [jwk(ak)]}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SnpFields:
    version: int = 2
    policy: int = 0x30000  # SMT allowed, reserved bit 17; DEBUG (bit 19) clear
    vmpl: int = 0
    signature_algo: int = 1
    key_info: int = 0
    report_data: bytes | None = None  # None: sha256(var_data), zero-padded
    measurement: bytes = field(default=bytes(range(48)))


def snp_report(chain: Chain, data: bytes, fields: SnpFields | None = None) -> bytes:
    fields = fields or SnpFields()
    report = bytearray(0x4A0)
    struct.pack_into("<IIQ", report, 0, fields.version, 1, fields.policy)
    struct.pack_into("<II", report, 0x30, fields.vmpl, fields.signature_algo)
    struct.pack_into("<I", report, 0x48, fields.key_info)
    bound = fields.report_data if fields.report_data is not None else hashlib.sha256(data).digest()
    report[0x50:0x90] = bound.ljust(64, b"\0")
    report[0x90:0xC0] = fields.measurement
    r, s = decode_dss_signature(chain.vcek_key.sign(bytes(report[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    report[0x2A0:0x2E8] = r.to_bytes(72, "little")
    report[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(report)


def hcl_report(hw_report: bytes, data: bytes, *, report_type: int = 2, hash_type: int = 1,
               var_size: int | None = None, magic: bytes = b"HCLA") -> bytes:
    header = magic + struct.pack("<IIII", 2, len(hw_report), 2, 0) + bytes(12)
    size = len(data) if var_size is None else var_size
    request = struct.pack("<IIIII", 20 + len(data), 1, report_type, hash_type, size)
    return header + hw_report.ljust(1184, b"\0") + request + data


def quote_message(nonce: bytes, pcr8: bytes, *, bitmap: bytes = b"\x00\x01\x00", bank: int = 0x000B) -> bytes:
    signer_name = b"\x00\x0b" + hashlib.sha256(b"ak").digest()
    return (struct.pack(">IH", 0xFF544347, 0x8018) + struct.pack(">H", len(signer_name)) + signer_name
            + struct.pack(">H", len(nonce)) + nonce + bytes(17) + bytes(8)
            + struct.pack(">IHB", 1, bank, len(bitmap)) + bitmap
            + struct.pack(">H", 32) + hashlib.sha256(pcr8).digest())


def quote_signature(message: bytes, key: rsa.RSAPrivateKey) -> bytes:
    value = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return struct.pack(">HHH", 0x0014, 0x000B, len(value)) + value


def real_azure_chain() -> list[x509.Certificate]:
    """VCEK, ASK (SEV-Milan), ARK-Milan: real certificates from an Azure CVM."""
    return x509.load_pem_x509_certificates((HERE / "azure-milan-vcek-ask-ark.pem").read_bytes())
