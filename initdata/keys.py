"""Public keys the gate trusts, and the private keys the authoring CLI signs with.

Supported: Ed25519, ECDSA P-256 (with SHA-256) and ECDSA P-384 (with SHA-384), all as PEM
(SubjectPublicKeyInfo for public keys, PKCS#8 for private keys). ECDSA signatures are DER, as in
sigstore and the DSSE reference implementation.

A key is identified by its SubjectPublicKeyInfo DER. `keyid` (sha256 of that DER) is only a label:
DSSE keyids are unauthenticated hints, so verification tries every trusted key and counts distinct
keys by their DER, never by keyid.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from initdata.bounded import read_bounded
from initdata.errors import InputTooLarge, TrustStoreError

DEFAULT_TRUST_DIR = Path("/etc/warden/trust")
MAX_PEM_BYTES = 16 * 1024
MAX_TRUST_KEYS = 64
PEM_BEGIN = b"-----BEGIN "
PEM_END_MARK = b"-----END "


class KeyAlgorithm(enum.StrEnum):
    ED25519 = "ed25519"
    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"


VerifyingKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _ecdsa_hash(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    return hashes.SHA256() if isinstance(curve, ec.SECP256R1) else hashes.SHA384()


def _algorithm_of(key: VerifyingKey) -> KeyAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return KeyAlgorithm.ED25519
    if isinstance(key.curve, ec.SECP256R1):
        return KeyAlgorithm.ECDSA_P256
    if isinstance(key.curve, ec.SECP384R1):
        return KeyAlgorithm.ECDSA_P384
    return None


@dataclass(frozen=True)
class PublicKey:
    """One trusted verification key. Equality is by SubjectPublicKeyInfo DER only."""

    spki_der: bytes
    algorithm: KeyAlgorithm

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.spki_der).hexdigest()

    def _loaded(self) -> VerifyingKey:
        key = serialization.load_der_public_key(self.spki_der)
        assert isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey)
        return key

    def verify(self, signature: bytes, message: bytes) -> bool:
        key = self._loaded()
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, message)
            else:
                key.verify(signature, message, ec.ECDSA(_ecdsa_hash(key.curve)))
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_pem(self) -> bytes:
        return self._loaded().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def split_pem_blocks(data: bytes) -> list[bytes]:
    """Every `-----BEGIN ...-----END ...-----` block in `data`, in order."""
    blocks: list[bytes] = []
    pos = 0
    while True:
        start = data.find(PEM_BEGIN, pos)
        if start < 0:
            return blocks
        end = data.find(PEM_END_MARK, start)
        if end < 0:
            return [*blocks, data[start:]]  # let the loader report the truncated block
        close = data.find(b"-----", end + len(PEM_END_MARK))
        stop = len(data) if close < 0 else close + 5
        blocks.append(data[start:stop])
        pos = stop


def load_public_key_pem(pem: bytes, *, origin: str) -> PublicKey:
    if len(pem) > MAX_PEM_BYTES:
        raise InputTooLarge(origin, "pem", f"{len(pem)} bytes exceeds the {MAX_PEM_BYTES}-byte limit")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise TrustStoreError(origin, "pem", f"not a PEM public key ({reason})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise TrustStoreError(origin, "pem", f"{type(key).__name__} keys are not supported")
    algorithm = _algorithm_of(key)
    if algorithm is None:
        raise TrustStoreError(origin, "pem", "only Ed25519, ECDSA P-256 and P-384 keys are supported")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return PublicKey(spki_der=der, algorithm=algorithm)


def load_public_keys_pem(data: bytes, *, origin: str) -> tuple[PublicKey, ...]:
    """All public keys in a PEM bundle (concatenated PEM blocks), e.g. initdata's `warden.trust`."""
    blocks = split_pem_blocks(data)
    if not blocks:
        raise TrustStoreError(origin, "pem", "no PEM public key found")
    if len(blocks) > MAX_TRUST_KEYS:
        raise InputTooLarge(origin, "pem", f"{len(blocks)} keys exceeds the limit of {MAX_TRUST_KEYS}")
    return tuple(load_public_key_pem(block, origin=origin) for block in blocks)


@dataclass(frozen=True)
class TrustStore:
    """A set of distinct trusted keys and where they came from (for messages)."""

    keys: tuple[PublicKey, ...]
    origin: str

    @classmethod
    def from_keys(cls, keys: tuple[PublicKey, ...] | list[PublicKey], *, origin: str) -> TrustStore:
        # The same key in two files is still one key: copying a key file must not lower a threshold.
        distinct: dict[bytes, PublicKey] = {}
        for key in keys:
            distinct.setdefault(key.spki_der, key)
        return cls(keys=tuple(distinct.values()), origin=origin)

    def check_threshold(self, threshold: int) -> None:
        if threshold < 1:
            raise TrustStoreError(self.origin, "threshold", f"must be at least 1, not {threshold}")
        if threshold > len(self.keys):
            raise TrustStoreError(
                self.origin,
                "threshold",
                f"{threshold} can never be met by the {len(self.keys)} distinct key(s) here",
            )


def load_trust_dir(directory: Path) -> TrustStore:
    """Every `*.pem` in the image's trust directory (one or more public keys per file)."""
    origin = str(directory)
    try:
        paths = sorted(p for p in directory.iterdir() if p.name.endswith(".pem"))
    except FileNotFoundError:
        raise TrustStoreError(origin, "directory", "does not exist") from None
    except OSError as exc:
        raise TrustStoreError(origin, "directory", f"cannot be listed ({exc.strerror})") from None
    if len(paths) > MAX_TRUST_KEYS:
        raise InputTooLarge(origin, "directory", f"{len(paths)} files exceeds the limit of {MAX_TRUST_KEYS}")
    keys: list[PublicKey] = []
    for path in paths:
        keys.extend(load_public_keys_pem(read_bounded(path, MAX_PEM_BYTES), origin=str(path)))
    if not keys:
        raise TrustStoreError(origin, "directory", "holds no *.pem public keys")
    return TrustStore.from_keys(keys, origin=origin)


# --- signing side (authoring CLI only; the guest never holds a private key) ---


@dataclass(frozen=True)
class SigningKey:
    private_key: PrivateKey
    origin: str

    @property
    def public(self) -> PublicKey:
        public = self.private_key.public_key()
        algorithm = _algorithm_of(public)
        assert algorithm is not None  # load_signing_key_pem admits only supported curves
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return PublicKey(spki_der=der, algorithm=algorithm)

    def sign(self, message: bytes) -> bytes:
        key = self.private_key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(message)
        return key.sign(message, ec.ECDSA(_ecdsa_hash(key.curve)))


def load_signing_key_pem(pem: bytes, *, origin: str) -> SigningKey:
    if len(pem) > MAX_PEM_BYTES:
        raise InputTooLarge(origin, "pem", f"{len(pem)} bytes exceeds the {MAX_PEM_BYTES}-byte limit")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise TrustStoreError(origin, "pem", f"not an unencrypted PEM private key ({reason})") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return SigningKey(key, origin)
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
        return SigningKey(key, origin)
    raise TrustStoreError(origin, "pem", "only Ed25519, ECDSA P-256 and P-384 private keys are supported")


def generate_signing_key(algorithm: KeyAlgorithm) -> tuple[bytes, bytes]:
    """A new key pair as (PKCS#8 private PEM, SubjectPublicKeyInfo public PEM)."""
    private: PrivateKey
    if algorithm is KeyAlgorithm.ED25519:
        private = ed25519.Ed25519PrivateKey.generate()
    elif algorithm is KeyAlgorithm.ECDSA_P256:
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ec.generate_private_key(ec.SECP384R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem
