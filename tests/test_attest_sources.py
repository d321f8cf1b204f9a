"""Measurement sources against fake sysfs/configfs trees, and the detection order."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from attest.base import Measurement
from attest.detect import build_sources, first_measurement
from attest.sample import SampleSource
from attest.snp import SnpSource, hostdata_from_report
from attest.tdx import TdxSource, mrconfigid_from_quote
from attest.tee import Tee, expected_measurement
from attest.tsm import ConfigfsTsm
from attest.vtpm import VtpmSource
from initdata.document import parse_initdata
from initdata.errors import MeasurementUnavailable
from tests.data.initdata.factory import HERE, snp_report, tdx_quote_v4, tdx_quote_v5

DIGEST48 = hashlib.sha384(b"initdata").digest()
DIGEST32 = hashlib.sha256(b"initdata").digest()


class FakeKernelTsm:
    """Plays the kernel's part for configfs-tsm: mkdir populates the entry's attributes."""

    def __init__(self, provider: str, outblob: bytes, generation: str = "1") -> None:
        self.provider = provider
        self.outblob = outblob
        self.generation = generation
        self.created: list[Path] = []
        self.removed: list[Path] = []

    def make_entry(self, entry: Path) -> None:
        entry.mkdir()
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "outblob").write_bytes(self.outblob)
        (entry / "generation").write_text(self.generation + "\n")
        self.created.append(entry)

    def remove_entry(self, entry: Path) -> None:
        shutil.rmtree(entry)
        self.removed.append(entry)

    def tsm(self, root: Path) -> ConfigfsTsm:
        root.mkdir(parents=True, exist_ok=True)
        return ConfigfsTsm(root, make_entry=self.make_entry, remove_entry=self.remove_entry)


def tdx_device(sysfs: Path) -> Path:
    device = sysfs / "devices" / "virtual" / "misc" / "tdx_guest"
    device.mkdir(parents=True)
    return device


def test_tdx_sysfs_mrconfigid(tmp_path: Path) -> None:
    device = tdx_device(tmp_path)
    (device / "measurements").mkdir()
    (device / "measurements" / "mrconfigid").write_bytes(DIGEST48)
    source = TdxSource(tmp_path, ConfigfsTsm(tmp_path / "no-configfs"))
    assert source.available()
    measurement = source.measure()
    assert measurement == Measurement("tdx", Tee.TDX, DIGEST48, str(device / "measurements" / "mrconfigid"))


def test_tdx_sysfs_wrong_size(tmp_path: Path) -> None:
    device = tdx_device(tmp_path)
    (device / "measurements").mkdir()
    (device / "measurements" / "mrconfigid").write_bytes(DIGEST32)
    with pytest.raises(MeasurementUnavailable, match="mrconfigid: 32 bytes, expected 48"):
        TdxSource(tmp_path).measure()


@pytest.mark.parametrize("make_quote", [tdx_quote_v4, tdx_quote_v5])
def test_tdx_configfs_quote(tmp_path: Path, make_quote: Callable[[bytes], bytes]) -> None:
    tdx_device(tmp_path)  # no measurements/ dir: a kernel before 6.16
    kernel = FakeKernelTsm("tdx_guest", make_quote(DIGEST48))
    source = TdxSource(tmp_path, kernel.tsm(tmp_path / "config" / "tsm" / "report"))
    measurement = source.measure()
    assert measurement.tee is Tee.TDX
    assert measurement.value == DIGEST48
    assert len(kernel.created) == 1 and kernel.removed == kernel.created  # entry cleaned up
    assert (kernel.created[0] / "inblob").exists() is False  # removed with the entry


def test_quote_offsets_are_the_documented_ones() -> None:
    v4 = tdx_quote_v4(DIGEST48)
    v5 = tdx_quote_v5(DIGEST48)
    assert v4[232:280] == DIGEST48 and mrconfigid_from_quote(v4, origin="q") == DIGEST48
    assert v5[238:286] == DIGEST48 and mrconfigid_from_quote(v5, origin="q") == DIGEST48


@pytest.mark.parametrize(
    ("quote", "field"),
    [
        (b"\x04\x00", "quote"),
        (b"\x04\x00\x02\x00\x00\x00\x00\x00" + b"\0" * 600, "quote.tee_type"),  # SGX quote
        (b"\x03\x00\x02\x00\x81\x00\x00\x00" + b"\0" * 600, "quote.version"),
        (b"\x04\x00\x02\x00\x81\x00\x00\x00" + b"\0" * 200, "quote"),
    ],
)
def test_bad_quotes(quote: bytes, field: str) -> None:
    with pytest.raises(MeasurementUnavailable) as caught:
        mrconfigid_from_quote(quote, origin="outblob")
    assert caught.value.field == field


def test_configfs_refuses_another_provider_and_races(tmp_path: Path) -> None:
    tdx_device(tmp_path)
    kernel = FakeKernelTsm("sev_guest", snp_report(DIGEST32))
    with pytest.raises(MeasurementUnavailable, match="provider: is 'sev_guest', not 'tdx_guest'"):
        TdxSource(tmp_path, kernel.tsm(tmp_path / "tsm1")).measure()
    assert kernel.removed == kernel.created
    racing = FakeKernelTsm("tdx_guest", tdx_quote_v4(DIGEST48), generation="2")
    with pytest.raises(MeasurementUnavailable, match="another writer raced us"):
        TdxSource(tmp_path, racing.tsm(tmp_path / "tsm2")).measure()


def test_snp_configfs_report(tmp_path: Path) -> None:
    (tmp_path / "devices" / "virtual" / "misc" / "sev-guest").mkdir(parents=True)
    report = snp_report(DIGEST32)
    assert report[0xC0:0xE0] == DIGEST32 and len(report) == 0x4A0
    kernel = FakeKernelTsm("sev_guest", report)
    source = SnpSource(tmp_path, kernel.tsm(tmp_path / "tsm"))
    assert source.available()
    assert source.measure() == Measurement("snp", Tee.SNP, DIGEST32, f"{tmp_path / 'tsm'} report")


def test_bad_snp_reports() -> None:
    with pytest.raises(MeasurementUnavailable, match="report: 100 bytes, expected 1184"):
        hostdata_from_report(b"\0" * 100, origin="r")
    with pytest.raises(MeasurementUnavailable, match=r"report\.version: 0 is not"):
        hostdata_from_report(b"\0" * 0x4A0, origin="r")


def test_vtpm_pcr8_sysfs_format(tmp_path: Path) -> None:
    document = parse_initdata((HERE / "initdata-v1.toml").read_bytes(), origin="i")
    pcr8 = expected_measurement(document.digest, document.algorithm, Tee.VTPM)
    path = tmp_path / "class" / "tpm" / "tpm0" / "pcr-sha256" / "8"
    path.parent.mkdir(parents=True)
    path.write_text(pcr8.hex().upper() + "\n")  # the kernel's %02X format
    source = VtpmSource(tmp_path, device=tmp_path / "tpmrm0")
    assert source.available()
    no_device = f"{tmp_path}/tpmrm0: device: no TPM resource manager device, so no HCL report to read"
    assert source.measure() == Measurement("vtpm", Tee.VTPM, pcr8, str(path), vouched_by_tee=False,
                                           unvouched_reason=no_device)
    assert source.measure().insecure and not source.tee_detected()  # a TPM alone is not a TEE
    path.write_text("not hex\n")
    with pytest.raises(MeasurementUnavailable, match="pcr8: is not 64 hex digits"):
        source.measure()


def test_nothing_present_on_a_plain_host(tmp_path: Path) -> None:
    sources = build_sources(["tdx", "snp", "vtpm"], sysfs_root=tmp_path, tsm_root=tmp_path / "tsm")
    assert [s.available() for s in sources] == [False, False, False]
    with pytest.raises(MeasurementUnavailable, match=r"no source is present \(tried tdx, snp, vtpm\)"):
        first_measurement(sources)


def test_order_and_sample_fallback(tmp_path: Path) -> None:
    # No TEE at all: sample is used (the gate then decides whether that is allowed).
    sources = [*build_sources(["tdx", "vtpm"], sysfs_root=tmp_path, tsm_root=tmp_path / "t"), SampleSource()]
    assert first_measurement(sources).insecure is True
    # vTPM present: it wins over sample even though sample comes later, and tdx is skipped.
    path = tmp_path / "class" / "tpm" / "tpm0" / "pcr-sha256" / "8"
    path.parent.mkdir(parents=True)
    path.write_text("AB" * 32 + "\n")
    assert first_measurement(sources).source == "vtpm"


def test_a_present_tee_that_fails_never_falls_back_to_sample(tmp_path: Path) -> None:
    tdx_device(tmp_path)  # the TDX device exists but neither sysfs nor configfs can be read
    sources = [*build_sources(["tdx"], sysfs_root=tmp_path, tsm_root=tmp_path / "absent"), SampleSource()]
    with pytest.raises(MeasurementUnavailable, match="tdx: tdx: mrconfigid: none of sysfs measurements"):
        first_measurement(sources)


def test_unknown_source_name() -> None:
    with pytest.raises(MeasurementUnavailable, match="unknown source 'sgx'"):
        build_sources(["sgx"])
