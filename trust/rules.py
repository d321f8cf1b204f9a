"""What the gate requires: the decision part of the `gate:` configuration.

Kept apart from trust.gate so that reading the configuration does not import the policy language.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta


class TrustMode(enum.StrEnum):
    """Which keys may verify a bundle (trust.gate explains the choice between them)."""

    IMAGE = "image"  # keys shipped in the guest image: /etc/warden/trust/*.pem
    INITDATA = "initdata"  # keys carried in initdata `warden.trust`, bound by the measurement


@dataclass(frozen=True)
class GateRules:
    """The gate's requirements.

    - threshold: distinct trusted keys that must sign a bundle (k of n)
    - trust_modes: which of `image` / `initdata` keys may be used (see trust.gate)
    - insecure_allow_sample: accept a VM without a TEE (development only; reported INSECURE)
    - insecure_sources: measurements no TEE vouches for that are accepted anyway, INSECURE-labelled:
      "sample" (no TEE at all), "vtpm" (a TPM the TEE does not vouch for). Opt-in only.
    - max_validity_days: refuse bundles valid longer than this (trust.bundle.check_freshness)
    """

    threshold: int = 1
    trust_modes: tuple[TrustMode, ...] = (TrustMode.IMAGE,)
    insecure_allow_sample: bool = False
    insecure_sources: frozenset[str] = frozenset()
    max_validity_days: int | None = None  # None: no bound on a bundle's validity window

    @property
    def max_validity(self) -> timedelta | None:
        return None if self.max_validity_days is None else timedelta(days=self.max_validity_days)

    def allows_insecure(self, kind: str) -> bool:
        return kind in self.insecure_sources or (kind == "sample" and self.insecure_allow_sample)
