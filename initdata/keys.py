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
import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

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


# Ed25519 points of small order (the 8-torsion): every one has y in {1, p-1, 0, +-y8}. A public key
# there verifies a forged signature (e.g. R = identity, s = 0 against A = identity: measured with
# this library), so such keys are refused at load. Checked on y reduced mod p, with the sign bit
# ignored and non-canonical encodings (y >= p) refused outright, so every encoding of the eight
# points, canonical or not, is caught (the lists of libsodium and ed25519-dalek are subsets).
_ED25519_P = 2**255 - 19
_ED25519_Y8 = 0x7A03AC9277FDC74EC6CC392CFA53202A0F67100D760B3CBA4FD84D3D706A17C7
_ED25519_SMALL_ORDER_Y = frozenset({0, 1, _ED25519_P - 1, _ED25519_Y8, _ED25519_P - _ED25519_Y8})


def ed25519_weak_reason(raw: bytes) -> str | None:
    """Why a 32-byte Ed25519 public key encoding must not be trusted, or None."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= _ED25519_P:
        return "non-canonical Ed25519 point encoding"
    if y in _ED25519_SMALL_ORDER_Y:
        return "Ed25519 point of small order (it verifies forged signatures)"
    return None


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
    if isinstance(key, ed25519.Ed25519PublicKey):
        weak = ed25519_weak_reason(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        if weak is not None:
            raise TrustStoreError(origin, "pem", f"refused: {weak}")
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


def _check_owner_and_mode(info: os.stat_result, *, origin: str, field: str, owner_uid: int | None) -> None:
    # Whoever can write a trust key (or add one to the directory) chooses what the gate accepts.
    if owner_uid is not None and info.st_uid != owner_uid:
        raise TrustStoreError(origin, field, f"is owned by uid {info.st_uid}, not {owner_uid}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise TrustStoreError(origin, field, f"is group- or world-writable (mode {stat.S_IMODE(info.st_mode):04o})")


def _read_trust_file(dir_fd: int, name: str, *, origin: str, owner_uid: int | None) -> bytes:
    """One key file, opened relative to the directory: no symlink followed (O_NOFOLLOW), no FIFO or
    device waited on (O_NONBLOCK, then refused as not regular), owner and mode checked on the open fd."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        problem = "is a symlink; trust keys must be regular files" if exc.errno == errno.ELOOP \
            else f"cannot be opened ({exc.strerror})"
        raise TrustStoreError(origin, "file", problem) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TrustStoreError(origin, "file", "is not a regular file")
        _check_owner_and_mode(info, origin=origin, field="file", owner_uid=owner_uid)
        if info.st_size > MAX_PEM_BYTES:
            raise InputTooLarge(origin, "file", f"{info.st_size} bytes exceeds the {MAX_PEM_BYTES}-byte limit")
        data = handle.read(MAX_PEM_BYTES + 1)
    if len(data) > MAX_PEM_BYTES:
        raise InputTooLarge(origin, "file", f"exceeds the {MAX_PEM_BYTES}-byte limit")
    return data


def load_trust_dir(directory: Path, *, owner_uid: int | None = 0) -> TrustStore:
    """Every `*.pem` in the image's trust directory (one or more public keys per file).

    The directory and every key file must be owned by `owner_uid` (root) and not group- or
    world-writable; key files must be regular files (a symlink, FIFO or device is refused, never
    followed or waited on). `owner_uid` None skips the owner check (offline authoring tools on a
    workstation, never the guest). Any violation refuses the whole store: a key of unknown provenance
    is not silently skipped, and not silently trusted.
    """
    origin = str(directory)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TrustStoreError(origin, "directory", "does not exist") from None
    except OSError as exc:
        raise TrustStoreError(origin, "directory", f"cannot be opened ({exc.strerror})") from None
    try:
        _check_owner_and_mode(os.fstat(dir_fd), origin=origin, field="directory", owner_uid=owner_uid)
        names = sorted(n for n in os.listdir(dir_fd) if n.endswith(".pem"))
        if len(names) > MAX_TRUST_KEYS:
            raise InputTooLarge(origin, "directory", f"{len(names)} files exceeds the limit of {MAX_TRUST_KEYS}")
        keys: list[PublicKey] = []
        for name in names:
            path = str(directory / name)
            keys.extend(load_public_keys_pem(_read_trust_file(dir_fd, name, origin=path, owner_uid=owner_uid),
                                             origin=path))
    except OSError as exc:
        raise TrustStoreError(origin, "directory", f"cannot be listed ({exc.strerror})") from None
    finally:
        os.close(dir_fd)
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
