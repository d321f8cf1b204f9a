"""AMD SEV-SNP: the initdata digest is in HOSTDATA, bytes [0xC0, 0xE0) of the attestation report.

The report comes from configfs-tsm (provider `sev_guest`); its `outblob` is the raw 0x4A0-byte
ATTESTATION_REPORT (the kernel strips the MSG_REPORT_RSP header).
"""

from __future__ import annotations

import struct
from pathlib import Path

from attest.base import Measurement
from attest.tee import Tee
from attest.tsm import ConfigfsTsm
from initdata.errors import MeasurementUnavailable

REPORT_SIZE = 0x4A0
HOSTDATA = slice(0xC0, 0xE0)
SNP_MISC_DIR = "devices/virtual/misc/sev-guest"
SUPPORTED_REPORT_VERSIONS = frozenset({2, 3, 5})


def hostdata_from_report(report: bytes, *, origin: str) -> bytes:
    if len(report) < REPORT_SIZE:
        raise MeasurementUnavailable(origin, "report", f"{len(report)} bytes, expected {REPORT_SIZE}")
    (version,) = struct.unpack_from("<I", report)
    if version not in SUPPORTED_REPORT_VERSIONS:
        raise MeasurementUnavailable(origin, "report.version", f"{version} is not an SNP report version")
    return report[HOSTDATA]


class SnpSource:
    name = "snp"

    def __init__(self, sysfs_root: Path = Path("/sys"), tsm: ConfigfsTsm | None = None) -> None:
        self.device_dir = sysfs_root / SNP_MISC_DIR
        self.tsm = tsm if tsm is not None else ConfigfsTsm()

    def tee_detected(self) -> bool:
        return True

    def available(self) -> bool:
        return self.device_dir.is_dir()

    def measure(self) -> Measurement:
        if not self.tsm.available():
            raise MeasurementUnavailable(self.name, "hostdata", "configfs-tsm is not present")
        report = self.tsm.report(provider="sev_guest", source=self.name)
        value = hostdata_from_report(report, origin=f"{self.tsm.root} (sev_guest report)")
        return Measurement(source=self.name, tee=Tee.SNP, value=value, detail=f"{self.tsm.root} report")
