"""TDX TDREPORT via /dev/tdx_guest and SNP report versions: layouts checked against the kernel's own structs.

The TDREPORT vectors are built with ctypes mirrors of the kernel's definitions (include/uapi/linux/
tdx-guest.h `struct tdx_report_req`; tools/testing/selftests/tdx/tdx_guest_test.c `struct tdreport`,
`struct reportmac`, `struct td_info`), so the offsets in attest.tdx are checked against an independent
statement of the layout. The ioctl itself is the kernel's part: a function that fills the request
as the tdx_guest driver does (TDCALL[TDG.MR.REPORT] with our REPORTDATA).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import struct
from pathlib import Path

import pytest

from attest.snp import hostdata_from_report
from attest.tdx import TDX_CMD_GET_REPORT0, TdxSource, mrconfigid_from_tdreport
from attest.tee import Tee
from attest.tsm import ConfigfsTsm
from initdata.errors import MeasurementUnavailable
from tests.data.initdata.factory import snp_report

DIGEST48 = hashlib.sha384(b"initdata").digest()


class TdxReportReq(ctypes.Structure):  # include/uapi/linux/tdx-guest.h
    _fields_ = [("reportdata", ctypes.c_uint8 * 64), ("tdreport", ctypes.c_uint8 * 1024)]


class ReportMac(ctypes.Structure):  # selftest struct reportmac (REPORTMACSTRUCT)
    _fields_ = [("type", ctypes.c_uint8 * 4), ("reserved1", ctypes.c_uint8 * 12), ("cpu_svn", ctypes.c_uint8 * 16),
                ("tee_tcb_info_hash", ctypes.c_uint8 * 48), ("tee_td_info_hash", ctypes.c_uint8 * 48),
                ("reportdata", ctypes.c_uint8 * 64), ("reserved2", ctypes.c_uint8 * 32), ("mac", ctypes.c_uint8 * 32)]


class TdInfo(ctypes.Structure):  # selftest struct td_info (TDINFO_STRUCT)
    _fields_ = [("attr", ctypes.c_uint8 * 8), ("xfam", ctypes.c_uint64), ("mrtd", ctypes.c_uint64 * 6),
                ("mrconfigid", ctypes.c_uint64 * 6), ("mrowner", ctypes.c_uint64 * 6),
                ("mrownerconfig", ctypes.c_uint64 * 6), ("rtmr", ctypes.c_uint64 * 24),
                ("reserved", ctypes.c_uint64 * 14)]


class TdReport(ctypes.Structure):  # selftest struct tdreport (TDREPORT_STRUCT)
    _fields_ = [("reportmac", ReportMac), ("tee_tcb_info", ctypes.c_uint8 * 239), ("reserved", ctypes.c_uint8 * 17),
                ("tdinfo", TdInfo)]


def tdreport(reportdata: bytes, mrconfigid: bytes, report_type: int = 0x81) -> bytes:
    report = TdReport()
    report.reportmac.type[0] = report_type
    ctypes.memmove(report.reportmac.reportdata, reportdata, 64)
    ctypes.memmove(report.tdinfo.mrconfigid, mrconfigid, 48)
    ctypes.memmove(report.tdinfo.mrtd, b"\x77" * 48, 48)  # a neighbour that must not be read instead
    ctypes.memmove(report.tdinfo.mrowner, b"\x88" * 48, 48)
    return bytes(report)


def test_layout_matches_the_kernel_structs() -> None:
    assert ctypes.sizeof(TdReport) == 1024 and ctypes.sizeof(TdxReportReq) == 1088
    assert TdReport.tdinfo.offset + TdInfo.mrconfigid.offset == 576
    assert ReportMac.reportdata.offset == 128
    # _IOWR('T', 1, struct tdx_report_req): dir 3 << 30 | size << 16 | 'T' << 8 | nr
    assert TDX_CMD_GET_REPORT0 == (3 << 30) | (ctypes.sizeof(TdxReportReq) << 16) | (0x54 << 8) | 1 == 0xC4405401


def test_mrconfigid_from_a_tdreport_vector() -> None:
    reportdata = bytes(range(64))
    report = tdreport(reportdata, DIGEST48)
    assert mrconfigid_from_tdreport(report, reportdata, origin="r") == DIGEST48
    with pytest.raises(MeasurementUnavailable, match=r"tdreport\.reportdata: is not the REPORTDATA we asked for"):
        mrconfigid_from_tdreport(report, bytes(64), origin="r")
    with pytest.raises(MeasurementUnavailable, match=r"tdreport.type: 0x0 is not TDX"):
        mrconfigid_from_tdreport(tdreport(reportdata, DIGEST48, report_type=0), reportdata, origin="r")
    with pytest.raises(MeasurementUnavailable, match="tdreport: 1000 bytes, expected 1024"):
        mrconfigid_from_tdreport(report[:1000], reportdata, origin="r")


class FakeTdxGuestDriver:
    """The kernel's part of TDX_CMD_GET_REPORT0: TDREPORT with the caller's REPORTDATA."""

    def __init__(self, mrconfigid: bytes, *, echo: bool = True, error: int = 0) -> None:
        self.mrconfigid, self.echo, self.error = mrconfigid, echo, error
        self.calls = 0

    def __call__(self, fd: int, request: int, buffer: bytearray) -> int:
        self.calls += 1
        assert request == 0xC4405401 and len(buffer) == ctypes.sizeof(TdxReportReq)
        if self.error:
            raise OSError(self.error, "Input/output error")
        req = TdxReportReq.from_buffer(buffer)
        reportdata = bytes(req.reportdata) if self.echo else bytes(64)
        ctypes.memmove(req.tdreport, tdreport(reportdata, self.mrconfigid), 1024)
        return 0


def tdx_sysfs(root: Path) -> None:
    (root / "devices" / "virtual" / "misc" / "tdx_guest").mkdir(parents=True)


def test_tdx_source_reads_the_tdreport_without_sysfs_or_configfs(tmp_path: Path) -> None:
    tdx_sysfs(tmp_path)
    device = tmp_path / "tdx_guest"
    device.write_bytes(b"")  # opened O_RDWR like the character device
    driver = FakeTdxGuestDriver(DIGEST48)
    source = TdxSource(tmp_path, ConfigfsTsm(tmp_path / "no-configfs"), device=device, ioctl=driver)
    measurement = source.measure()
    assert (measurement.tee, measurement.value) == (Tee.TDX, DIGEST48)
    assert measurement.detail == f"{device} (TDX_CMD_GET_REPORT0)"
    with pytest.raises(MeasurementUnavailable, match="REPORTDATA we asked for"):
        TdxSource(tmp_path, device=device, ioctl=FakeTdxGuestDriver(DIGEST48, echo=False)).measure()
    with pytest.raises(MeasurementUnavailable, match=r"tdreport: cannot be read \(Input/output error\)"):
        TdxSource(tmp_path, device=device, ioctl=FakeTdxGuestDriver(DIGEST48, error=errno.EIO)).measure()
    # sysfs, where the kernel has it, comes first
    (tmp_path / "devices" / "virtual" / "misc" / "tdx_guest" / "measurements").mkdir()
    (tmp_path / "devices" / "virtual" / "misc" / "tdx_guest" / "measurements" / "mrconfigid").write_bytes(b"\1" * 48)
    unused = FakeTdxGuestDriver(DIGEST48)
    assert TdxSource(tmp_path, device=device, ioctl=unused).measure().value == b"\1" * 48
    assert unused.calls == 0


@pytest.mark.parametrize("version", [2, 3, 4, 5, 6, 0x100])
def test_snp_report_versions_from_2_up(version: int) -> None:
    report = bytearray(snp_report(b"\xaa" * 32))
    struct.pack_into("<I", report, 0, version)
    assert hostdata_from_report(bytes(report), origin="r") == b"\xaa" * 32


@pytest.mark.parametrize("version", [0, 1])
def test_snp_report_versions_below_2_refused(version: int) -> None:
    report = bytearray(snp_report(b"\xaa" * 32))
    struct.pack_into("<I", report, 0, version)
    with pytest.raises(MeasurementUnavailable, match=rf"report\.version: {version} is not an SNP report version"):
        hostdata_from_report(bytes(report), origin="r")
