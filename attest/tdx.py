"""Intel TDX: the initdata digest is in MRCONFIGID (48 bytes).

Read it, in order of preference:
1. sysfs (Linux >= 6.16): /sys/devices/virtual/misc/tdx_guest/measurements/mrconfigid, raw bytes;
2. a TDREPORT from /dev/tdx_guest (`TDX_CMD_GET_REPORT0`, Linux >= 6.2): no quoting service needed.
   include/uapi/linux/tdx-guest.h: `struct tdx_report_req { __u8 reportdata[64]; __u8 tdreport[1024]; }`,
   `TDX_CMD_GET_REPORT0 = _IOWR('T', 1, struct tdx_report_req)` = 0xc4405401. TDREPORT_STRUCT (TDX
   module spec; tools/testing/selftests/tdx/tdx_guest_test.c `struct tdreport`): REPORTMACSTRUCT
   [0, 256) with REPORTTYPE.type at 0 (0x81 = TDX) and REPORTDATA at [128, 192); TEE_TCB_INFO 239 +
   17 reserved; TDINFO_STRUCT at 512: ATTRIBUTES 8, XFAM 8, MRTD 48 at 528, MRCONFIGID 48 at [576, 624).
   Our random REPORTDATA must come back at [128, 192): the report is fresh and ours;
3. a configfs-tsm quote: MRCONFIGID at [232, 280) in quote v4, [238, 286) in v5 (the v5 body
   starts 6 bytes later, after a u16 body type and u32 body size).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import struct
from collections.abc import Callable
from pathlib import Path

from attest.base import Measurement
from attest.tee import Tee
from attest.tsm import ConfigfsTsm
from initdata.errors import MeasurementUnavailable

MRCONFIGID_SIZE = 48
TDX_TEE_TYPE = 0x81
QUOTE_HEADER = struct.Struct("<HHI")  # version, attestation key type, TEE type
MRCONFIGID_OFFSET = {4: 232, 5: 238}
TDX_MISC_DIR = "devices/virtual/misc/tdx_guest"
TDX_GUEST_DEVICE = Path("/dev/tdx_guest")
REPORTDATA_LEN = 64
TDREPORT_LEN = 1024
TDX_CMD_GET_REPORT0 = (3 << 30) | ((REPORTDATA_LEN + TDREPORT_LEN) << 16) | (ord("T") << 8) | 1  # _IOWR
TDREPORT_TYPE_TDX = 0x81
TDREPORT_REPORTDATA = slice(128, 192)
TDREPORT_MRCONFIGID = slice(576, 624)

Ioctl = Callable[[int, int, bytearray], object]


def mrconfigid_from_tdreport(report: bytes, reportdata: bytes, *, origin: str) -> bytes:
    """MRCONFIGID from a 1024-byte TDREPORT_STRUCT, after checking its type and our REPORTDATA in it."""
    if len(report) != TDREPORT_LEN:
        raise MeasurementUnavailable(origin, "tdreport", f"{len(report)} bytes, expected {TDREPORT_LEN}")
    if report[0] != TDREPORT_TYPE_TDX:
        raise MeasurementUnavailable(origin, "tdreport.type", f"0x{report[0]:x} is not TDX (0x81)")
    if report[TDREPORT_REPORTDATA] != reportdata:
        raise MeasurementUnavailable(origin, "tdreport.reportdata", "is not the REPORTDATA we asked for")
    return report[TDREPORT_MRCONFIGID]


def read_tdreport(device: Path, reportdata: bytes, *, ioctl: Ioctl = fcntl.ioctl) -> bytes:
    """TDX_CMD_GET_REPORT0 on the device: the TDREPORT for `reportdata`. Raises OSError."""
    request = bytearray(reportdata.ljust(REPORTDATA_LEN, b"\0") + bytes(TDREPORT_LEN))
    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        ioctl(fd, TDX_CMD_GET_REPORT0, request)
    finally:
        os.close(fd)
    return bytes(request[REPORTDATA_LEN:])


def mrconfigid_from_quote(quote: bytes, *, origin: str) -> bytes:
    """MRCONFIGID from a TD quote (v4 or v5); checks it is a TDX quote long enough to hold it."""
    if len(quote) < QUOTE_HEADER.size:
        raise MeasurementUnavailable(origin, "quote", f"{len(quote)} bytes is too short for a header")
    version, _key_type, tee_type = QUOTE_HEADER.unpack_from(quote)
    if tee_type != TDX_TEE_TYPE:
        raise MeasurementUnavailable(origin, "quote.tee_type", f"0x{tee_type:x} is not TDX (0x81)")
    offset = MRCONFIGID_OFFSET.get(version)
    if offset is None:
        raise MeasurementUnavailable(origin, "quote.version", f"{version} is not a TD quote v4 or v5")
    if len(quote) < offset + MRCONFIGID_SIZE:
        raise MeasurementUnavailable(origin, "quote", f"{len(quote)} bytes ends before MRCONFIGID")
    return quote[offset : offset + MRCONFIGID_SIZE]


class TdxSource:
    name = "tdx"

    def __init__(self, sysfs_root: Path = Path("/sys"), tsm: ConfigfsTsm | None = None, *,
                 device: Path = TDX_GUEST_DEVICE, ioctl: Ioctl = fcntl.ioctl) -> None:
        self.device_dir = sysfs_root / TDX_MISC_DIR
        self.mrconfigid_path = self.device_dir / "measurements" / "mrconfigid"
        self.tsm = tsm if tsm is not None else ConfigfsTsm()
        self.device = device
        self._ioctl = ioctl

    def tee_detected(self) -> bool:
        return True

    def available(self) -> bool:
        return self.device_dir.is_dir()

    def measure(self) -> Measurement:
        if self.mrconfigid_path.exists():
            origin = str(self.mrconfigid_path)
            try:
                with self.mrconfigid_path.open("rb") as handle:
                    value = handle.read(MRCONFIGID_SIZE + 1)
            except OSError as exc:
                raise MeasurementUnavailable(
                    origin, "mrconfigid", f"cannot be read ({exc.strerror})"
                ) from None
            if len(value) != MRCONFIGID_SIZE:
                raise MeasurementUnavailable(origin, "mrconfigid", f"{len(value)} bytes, expected 48")
            return Measurement(source=self.name, tee=Tee.TDX, value=value, detail=origin)
        if self.device.exists():
            origin = f"{self.device} (TDX_CMD_GET_REPORT0)"
            reportdata = secrets.token_bytes(REPORTDATA_LEN)
            try:
                report = read_tdreport(self.device, reportdata, ioctl=self._ioctl)
            except OSError as exc:
                raise MeasurementUnavailable(origin, "tdreport", f"cannot be read ({exc.strerror})") from None
            value = mrconfigid_from_tdreport(report, reportdata, origin=origin)
            return Measurement(source=self.name, tee=Tee.TDX, value=value, detail=origin)
        if not self.tsm.available():
            raise MeasurementUnavailable(
                self.name, "mrconfigid", f"none of sysfs measurements, {self.device}, configfs-tsm is present"
            )
        quote = self.tsm.report(provider="tdx_guest", source=self.name)
        value = mrconfigid_from_quote(quote, origin=f"{self.tsm.root} (tdx_guest quote)")
        return Measurement(source=self.name, tee=Tee.TDX, value=value, detail=f"{self.tsm.root} quote")
