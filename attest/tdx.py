"""Intel TDX: the initdata digest is in MRCONFIGID (48 bytes).

Read it, in order of preference:
1. sysfs (Linux >= 6.16): /sys/devices/virtual/misc/tdx_guest/measurements/mrconfigid, raw bytes;
2. a configfs-tsm quote: MRCONFIGID at [232, 280) in quote v4, [238, 286) in v5 (the v5 body
   starts 6 bytes later, after a u16 body type and u32 body size).
"""

from __future__ import annotations

import struct
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

    def __init__(self, sysfs_root: Path = Path("/sys"), tsm: ConfigfsTsm | None = None) -> None:
        self.device_dir = sysfs_root / TDX_MISC_DIR
        self.mrconfigid_path = self.device_dir / "measurements" / "mrconfigid"
        self.tsm = tsm if tsm is not None else ConfigfsTsm()

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
        if not self.tsm.available():
            raise MeasurementUnavailable(
                self.name, "mrconfigid", "neither sysfs measurements nor configfs-tsm is present"
            )
        quote = self.tsm.report(provider="tdx_guest", source=self.name)
        value = mrconfigid_from_quote(quote, origin=f"{self.tsm.root} (tdx_guest quote)")
        return Measurement(source=self.name, tee=Tee.TDX, value=value, detail=f"{self.tsm.root} quote")
