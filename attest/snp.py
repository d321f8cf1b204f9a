"""AMD SEV-SNP: the initdata digest is in HOSTDATA, bytes [0xC0, 0xE0) of the attestation report.

The report comes from configfs-tsm (provider `sev_guest`); its `outblob` is the raw 0x4A0-byte
ATTESTATION_REPORT (the kernel strips the MSG_REPORT_RSP header).

Report versions: virtee/sev (src/firmware/guest/types/snp.rs, `ReportVariant`) reads version 2 as V2,
3 and 4 as V3, and every higher one as V5; the layout up to well past HOSTDATA (0xC0..0xE0) is the
same in all of them (SEV-SNP ABI spec, ATTESTATION_REPORT; later versions only fill reserved bytes
after 0x180). So any version >= 2 is read, at the same offset; 0 and 1 never shipped in firmware.
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
MIN_REPORT_VERSION = 2


def hostdata_from_report(report: bytes, *, origin: str) -> bytes:
    if len(report) < REPORT_SIZE:
        raise MeasurementUnavailable(origin, "report", f"{len(report)} bytes, expected {REPORT_SIZE}")
    (version,) = struct.unpack_from("<I", report)
    if version < MIN_REPORT_VERSION:
        raise MeasurementUnavailable(origin, "report.version", f"{version} is not an SNP report version (>= 2)")
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
