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

    @property
    def insecure(self) -> bool:
        return self.tee is None


class MeasurementSource(Protocol):
    """One place a measurement can come from. `available()` is cheap and never raises."""

    name: str

    def available(self) -> bool: ...

    def tee_detected(self) -> bool:
        """After available() said yes: does this source stand for real TEE hardware?

        A present TEE that then fails to measure must fail closed rather than fall back to sample.
        """
        ...

    def measure(self) -> Measurement:
        """Read the register now. Raises MeasurementUnavailable (or another GateError)."""
        ...
