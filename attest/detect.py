"""Which measurement sources to try, in which order, and the first measurement they give.

Order comes from the configuration (default: tdx, snp, vtpm, attestation-agent, sample), except
that the sources which never stand for a TEE (`vtpm` without a TEE vouching for it, `sample`) come
after all the others whatever the configured order. Each source says whether its hardware
interface is present (`available()`); the first present one is asked. If a present source fails,
the next present one is tried, with one exception: `vtpm` and `sample` are used only when no
present source stood for TEE hardware (`tee_detected()`: the TDX/SNP devices, or an
attestation-agent whose primary attester is TDX/SNP). A TEE guest whose interface fails must fail
closed, never drop silently to "no TEE" or to a VMM-emulated TPM.
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
from attest.vtpm import IMDS, VtpmSource
from initdata.errors import GateError, MeasurementUnavailable

SOURCE_NAMES = ("tdx", "snp", "vtpm", "attestation-agent", "sample")
DEFAULT_SOURCE_ORDER = SOURCE_NAMES
# Sources that never stand for a TEE: tried only after every other source, and only when no TEE
# is present, whatever the configured order (a listed-first `sample` cannot win over TDX).
INSECURE_SOURCE_NAMES = ("vtpm", "sample")


def build_sources(
    names: Sequence[str],
    *,
    sysfs_root: Path = Path("/sys"),
    tsm_root: Path = DEFAULT_TSM_REPORT_ROOT,
    aa_client: AttestationAgentApi | None = None,
    vtpm_amd_certs: str = IMDS,
) -> list[MeasurementSource]:
    tsm = ConfigfsTsm(tsm_root)
    factories: dict[str, Callable[[], MeasurementSource]] = {
        "tdx": lambda: TdxSource(sysfs_root, tsm),
        "snp": lambda: SnpSource(sysfs_root, tsm),
        "vtpm": lambda: VtpmSource(sysfs_root, amd_certs=vtpm_amd_certs),
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
    # vtpm before sample whatever the configured order: a vTPM the TEE vouches for is a TEE.
    ordered = [s for s in sources if s.name not in INSECURE_SOURCE_NAMES] + \
              [s for s in sources if s.name == "vtpm"] + [s for s in sources if s.name == "sample"]
    for source in ordered:
        if source.name in INSECURE_SOURCE_NAMES and tee_present:
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
