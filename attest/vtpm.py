"""vTPM: PCR8 of the sha256 bank, extended once with the sha256 initdata digest.

The pod-VM image extends PCR8 (`tpm2_pcrextend 8:sha256=<digest>`, or the AA's az/tpm attesters do
it); from a zero PCR that gives sha256(32 zero bytes || digest), which the gate expects. The kernel
prints PCRs as uppercase hex plus a newline (drivers/char/tpm/tpm-sysfs.c).

Not a TEE on its own: the measurement is marked `vouched_by_tee=False`, so the gate accepts it only
with `insecure_sources: [vtpm]` and reports it INSECURE (issue 15 item 5).
"""

from __future__ import annotations

import re
from pathlib import Path

from attest.base import Measurement
from attest.tee import Tee
from initdata.errors import MeasurementUnavailable

PCR_INDEX = 8
_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")


class VtpmSource:
    name = "vtpm"

    def __init__(self, sysfs_root: Path = Path("/sys"), tpm: str = "tpm0") -> None:
        self.pcr_path = sysfs_root / "class" / "tpm" / tpm / "pcr-sha256" / str(PCR_INDEX)

    def tee_detected(self) -> bool:
        # A TPM alone is not a TEE: without the TEE vouching for it (Azure CVMs: the HCL report in NV
        # index 0x01400001, read by guest-components' az-snp-vtpm/az-tdx-vtpm attesters; not
        # implemented here), the VMM that emulates it can set PCR8 to anything.
        return False

    def available(self) -> bool:
        return self.pcr_path.exists()

    def measure(self) -> Measurement:
        origin = str(self.pcr_path)
        try:
            with self.pcr_path.open("rb") as handle:
                raw = handle.read(256)
        except OSError as exc:
            raise MeasurementUnavailable(origin, "pcr8", f"cannot be read ({exc.strerror})") from None
        text = raw.decode("ascii", errors="replace").strip()
        if not _HEX64.fullmatch(text):
            raise MeasurementUnavailable(origin, "pcr8", "is not 64 hex digits")
        return Measurement(source=self.name, tee=Tee.VTPM, value=bytes.fromhex(text), detail=origin,
                           vouched_by_tee=False)
