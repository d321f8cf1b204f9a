"""The `sample` source: no TEE, so nothing is measured. For development VMs only.

It exists so a developer can run the whole pipeline on a plain VM. The gate accepts it only when
the configuration says `insecure_allow_sample: true`, and then every status line says INSECURE.
"""

from __future__ import annotations

from attest.base import Measurement
from attest.tee import Tee


class SampleSource:
    name = "sample"

    def available(self) -> bool:
        return True  # always the last resort; the gate decides whether it is acceptable

    def tee_detected(self) -> bool:
        return False

    def measure(self) -> Measurement:
        return Measurement(source=self.name, tee=None, value=b"", detail="no TEE (sample)")


class GivenMeasurementSource:
    """A measurement supplied by the caller (offline `warden verify`, CI pipelines, tests)."""

    name = "given"

    def __init__(self, tee: Tee | None, value: bytes, *, detail: str = "given on the command line") -> None:
        self.tee = tee
        self.value = value
        self.detail = detail

    def available(self) -> bool:
        return True

    def tee_detected(self) -> bool:
        return self.tee is not None

    def measure(self) -> Measurement:
        return Measurement(source=self.name, tee=self.tee, value=self.value, detail=self.detail)
