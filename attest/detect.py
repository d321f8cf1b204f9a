"""Which measurement sources to try, in which order, and the first measurement they give.

Order comes from the configuration (default: tdx, snp, vtpm, attestation-agent, sample). Each
source says whether its hardware interface is present (`available()`); the first present one is
asked. If a present source fails, the next present one is tried, with one exception: `sample` is
used only when no present source stood for TEE hardware (`tee_detected()`: the TDX/SNP/TPM
devices, or an attestation-agent whose primary attester is not `sample`). A TEE guest whose
interface fails must fail closed, never drop silently to "no TEE".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from attest.aa import AttestationAgentApi, AttestationAgentSource
from attest.base import Measurement, MeasurementSource
from attest.sample import SampleSource
from attest.snp import SnpSource
from attest.tdx import TdxSource
from attest.tsm import DEFAULT_TSM_REPORT_ROOT, ConfigfsTsm
from attest.vtpm import VtpmSource
from initdata.errors import GateError, MeasurementUnavailable

SOURCE_NAMES = ("tdx", "snp", "vtpm", "attestation-agent", "sample")
DEFAULT_SOURCE_ORDER = SOURCE_NAMES


def build_sources(
    names: Sequence[str],
    *,
    sysfs_root: Path = Path("/sys"),
    tsm_root: Path = DEFAULT_TSM_REPORT_ROOT,
    aa_client: AttestationAgentApi | None = None,
) -> list[MeasurementSource]:
    tsm = ConfigfsTsm(tsm_root)
    factories: dict[str, Callable[[], MeasurementSource]] = {
        "tdx": lambda: TdxSource(sysfs_root, tsm),
        "snp": lambda: SnpSource(sysfs_root, tsm),
        "vtpm": lambda: VtpmSource(sysfs_root),
        "attestation-agent": lambda: AttestationAgentSource(aa_client),
        "sample": SampleSource,
    }
    sources: list[MeasurementSource] = []
    for name in names:
        factory = factories.get(name)
        if factory is None:
            raise MeasurementUnavailable("configuration", "measurement_sources", f"unknown source {name!r}")
        sources.append(factory())
    return sources


def first_measurement(sources: Sequence[MeasurementSource]) -> Measurement:
    """The first measurement a present source gives (see the module docstring for the rule)."""
    failures: list[str] = []
    tee_present = False
    for source in sources:
        if source.name == "sample" and tee_present:
            continue
        if not source.available():
            continue
        tee_present = tee_present or source.tee_detected()
        try:
            return source.measure()
        except GateError as exc:
            failures.append(f"{source.name}: {exc}")
    if failures:
        raise MeasurementUnavailable("measurement", "sources", "; ".join(failures))
    tried = ", ".join(s.name for s in sources) or "none configured"
    raise MeasurementUnavailable("measurement", "sources", f"no source is present (tried {tried})")
