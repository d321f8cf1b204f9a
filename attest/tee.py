"""Which TEE carries the initdata digest, in which register, encoded how.

- TDX MRCONFIGID 48 bytes, SNP HOSTDATA 32, CCA personalization value 64: the digest truncated or
  zero-padded at the end, as Kata's `adjustProperLength` and Trustee's `regularize_data` do;
- vTPM PCR8 of the sha256 bank, extended once from zero: sha256(0^32 || digest), meaningful only for
  a 32-byte (sha256) digest.

Sources (attest.tdx, .snp, .vtpm, .aa) read these registers; the gate (trust.gate) compares what one
holds with `expected_measurement` of the initdata digest, so the encoding lives in one place.
"""

from __future__ import annotations

import enum
import hashlib

from initdata.document import HashAlgorithm
from initdata.errors import UnsupportedAlgorithm


class Tee(enum.StrEnum):
    """Where a TEE carries the initdata digest."""

    TDX = "tdx"  # MRCONFIGID
    SNP = "snp"  # HOSTDATA
    CCA = "cca"  # CCA_REALM_PERSONALIZATION_VALUE
    VTPM = "vtpm"  # PCR8 of the sha256 bank, extended once from zero


TEE_FIELD_SIZES: dict[Tee, int] = {Tee.TDX: 48, Tee.SNP: 32, Tee.CCA: 64}
TEE_FIELD_NAMES: dict[Tee, str] = {
    Tee.TDX: "MRCONFIGID",
    Tee.SNP: "HOSTDATA",
    Tee.CCA: "personalization value",
    Tee.VTPM: "PCR8",
}


def fit_to_field(digest: bytes, size: int) -> bytes:
    """Truncate or zero-pad at the end (Kata adjustProperLength, Trustee regularize_data)."""
    return digest[:size].ljust(size, b"\0")


def vtpm_pcr8(digest: bytes, algorithm: HashAlgorithm, *, origin: str = "initdata") -> bytes:
    """PCR8 of the sha256 bank after one extend with the digest: sha256(32 zero bytes || digest)."""
    if algorithm is not HashAlgorithm.SHA256 or len(digest) != 32:
        raise UnsupportedAlgorithm(
            origin,
            "algorithm",
            f"vTPM binding needs a sha256 initdata digest (PCR8 is extended with exactly 32 bytes), not {algorithm}",
        )
    return hashlib.sha256(b"\0" * 32 + digest).digest()


def expected_measurement(digest: bytes, algorithm: HashAlgorithm, tee: Tee, *, origin: str = "initdata") -> bytes:
    """The bytes the TEE must report for this initdata digest."""
    if tee is Tee.VTPM:
        return vtpm_pcr8(digest, algorithm, origin=origin)
    return fit_to_field(digest, TEE_FIELD_SIZES[tee])
