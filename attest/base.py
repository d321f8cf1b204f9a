"""What every measurement source produces, and the one interface they share.

A source reads the TEE register that carries the initdata digest (TDX MRCONFIGID, SNP HOSTDATA,
vTPM PCR8) and returns its raw bytes. Sources never compare anything: the gate computes what the
register should hold for this initdata and compares, so the comparison rule lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from attest.tee import Tee


@dataclass(frozen=True)
class Measurement:
    """A register value as read from one source. `tee is None` means no TEE at all (sample)."""

    source: str  # source name: "tdx", "snp", "vtpm", "attestation-agent", "sample", "given"
    tee: Tee | None
    value: bytes
    detail: str  # where it was read, for messages: a path, a URL
    # False for a register no TEE vouches for: a vTPM outside a confidential VM's TCB (the VMM
    # emulates it, so the host can extend or reset PCR8 at will). Such a measurement is compared,
    # but counts as INSECURE and needs opt-in (`insecure_sources: [vtpm]`).
    vouched_by_tee: bool = True
    # Why no TEE vouches for it (one GateError line, e.g. "no HCL report readable"), for the refusal.
    unvouched_reason: str = ""

    @property
    def insecure(self) -> bool:
        return self.tee is None or not self.vouched_by_tee

    @property
    def insecure_kind(self) -> str | None:
        """None for a TEE measurement; else the `insecure_sources` name that must allow it."""
        if self.tee is None:
            return "sample"
        return None if self.vouched_by_tee else self.tee.value


class MeasurementSource(Protocol):
    """One place a measurement can come from. `available()` is cheap and never raises."""

    name: str

    def available(self) -> bool: ...

    def tee_detected(self) -> bool:
        """After available() said yes: does this source stand for real TEE hardware (TDX, SNP, an
        attestation-agent with such an attester)? A bare vTPM and `sample` do not.

        A present TEE that then fails to measure must fail closed rather than fall back to sample.
        """
        ...

    def measure(self) -> Measurement:
        """Read the register now. Raises MeasurementUnavailable (or another GateError)."""
        ...
