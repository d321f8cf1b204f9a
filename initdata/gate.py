"""The attestation gate: may this policy bundle be enforced in this confidential VM?

    gate(initdata, config) -> VerifiedPolicy, or raises a GateError subclass

Steps, in this order, each with its own error type:
1. measurement: the TEE register holds this initdata's digest    (MeasurementMismatch, ...)
2. signatures: a threshold of distinct trusted keys signed       (SignatureThresholdNotMet, ...)
3. version and expiry: not older than this boot's last bundle,
   not expired                                                   (RollbackRefused, BundleExpired)
4. policy validation: every KubeArmor document parses            (PolicyInvalid)

Trust boundaries: the initdata bytes and everything in them are untrusted until step 1 binds them
to the TEE measurement; the bundle payload is untrusted until step 2, and is not even parsed
before its signatures verify. The gate decides and records the accepted version; it never
enforces anything.

Trust modes (which keys verify the bundle):
- `image`: the PEM keys under the trust directory of the (measured) guest image;
- `initdata`: the PEM keys in the initdata's own `warden.trust` value, bound by step 1.
If `warden.trust` is present and the `initdata` mode is allowed, those keys are used; otherwise the
image keys, if that mode is allowed; otherwise the gate refuses (TrustModeRefused).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attest.aa import DEFAULT_AA_URL, AttestationAgentClient
from attest.base import Measurement, MeasurementSource
from attest.detect import DEFAULT_SOURCE_ORDER, SOURCE_NAMES, build_sources, first_measurement
from initdata.bundle import BundlePayload, PolicyFile, parse_payload
from initdata.document import InitdataDocument
from initdata.dsse import BUNDLE_PAYLOAD_TYPE, parse_envelope, verify_envelope
from initdata.encoding import TEE_FIELD_NAMES, Tee, expected_measurement
from initdata.errors import (
    BundleExpired,
    ConfigError,
    InsecureSourceRefused,
    MalformedBundle,
    MeasurementMismatch,
    PolicyInvalid,
    RollbackRefused,
    TrustModeRefused,
)
from initdata.keys import DEFAULT_TRUST_DIR, PublicKey, TrustStore, load_public_keys_pem, load_trust_dir
from initdata.locate import locate_initdata
from initdata.rollback import RollbackState

if TYPE_CHECKING:  # the policy module is imported at run time only by the validation step
    from bpf.policy.model import Policy

BUNDLE_KEY = "warden.bundle"
TRUST_KEY = "warden.trust"
DEFAULT_STATE_DIR = Path("/run/warden")

PolicyParser = Callable[[str, str], "tuple[Policy, ...]"]


class TrustMode(enum.StrEnum):
    IMAGE = "image"  # keys shipped in the guest image: /etc/warden/trust/*.pem
    INITDATA = "initdata"  # keys carried in initdata `warden.trust`, bound by the measurement


@dataclass(frozen=True)
class GateConfig:
    """How the gate decides. The supervisor loads it from YAML with `from_mapping` (same names).

    - trust_dir: image keys (`image` trust mode), *.pem files
    - threshold: distinct trusted keys that must sign a bundle (k of n)
    - trust_modes: which of `image` / `initdata` keys may be used (see the module docstring)
    - measurement_sources: the order sources are tried in (attest.detect explains the rule)
    - insecure_allow_sample: accept a VM without a TEE (development only; reported INSECURE)
    - state_dir: where the rollback state lives (a tmpfs: the state is per boot)
    - attestation_agent_url / _timeout: api-server-rest of guest-components (loopback)
    """

    trust_dir: Path = DEFAULT_TRUST_DIR
    threshold: int = 1
    trust_modes: tuple[TrustMode, ...] = (TrustMode.IMAGE,)
    measurement_sources: tuple[str, ...] = DEFAULT_SOURCE_ORDER
    insecure_allow_sample: bool = False
    # None only for offline checks (`warden verify` without --state-dir): no rollback memory.
    state_dir: Path | None = DEFAULT_STATE_DIR
    attestation_agent_url: str = DEFAULT_AA_URL
    attestation_agent_timeout: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 1:
            raise ConfigError("gate configuration", "threshold", f"{self.threshold!r} is not an integer >= 1")
        if not self.trust_modes:
            raise ConfigError("gate configuration", "trust_modes", "must allow at least one mode")
        for name in self.measurement_sources:
            if name not in SOURCE_NAMES:
                raise ConfigError(
                    "gate configuration",
                    "measurement_sources",
                    f"unknown source {name!r} (known: {', '.join(SOURCE_NAMES)})",
                )
        if not self.measurement_sources:
            raise ConfigError("gate configuration", "measurement_sources", "must name at least one source")
        if not (self.attestation_agent_url.startswith(("http://", "https://"))):
            raise ConfigError("gate configuration", "attestation_agent_url", "must be an http(s) URL")
        if not 0 < self.attestation_agent_timeout <= 60:
            raise ConfigError("gate configuration", "attestation_agent_timeout", "must be in (0, 60] seconds")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, origin: str = "gate configuration") -> GateConfig:
        """Build from a YAML/JSON mapping with the field names above; unknown keys are refused."""
        if not isinstance(mapping, Mapping):
            raise ConfigError(origin, "gate", "must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in mapping if k not in known)
        if unknown:
            raise ConfigError(origin, unknown[0], f"unknown key (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for key, value in mapping.items():
            values[key] = _convert(key, value, origin=origin)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(origin, exc.field, exc.problem) from None

    def aa_client(self) -> AttestationAgentClient:
        return AttestationAgentClient(self.attestation_agent_url, timeout=self.attestation_agent_timeout)


def _convert(key: str, value: Any, *, origin: str) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(origin, key, f"{value!r} is not {expected}")

    if key in ("trust_dir", "state_dir"):
        if value is None and key == "state_dir":
            return None
        if not isinstance(value, str) or not value.startswith("/"):
            raise fail("an absolute path")
        return Path(value)
    if key == "threshold":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if key == "insecure_allow_sample":
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if key == "attestation_agent_timeout":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number of seconds")
        return float(value)
    if key == "attestation_agent_url":
        if not isinstance(value, str):
            raise fail("a URL")
        return value
    if key == "trust_modes":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail("a list of trust modes")
        modes = []
        for item in value:
            try:
                modes.append(TrustMode(item))
            except ValueError:
                raise ConfigError(origin, key, f"unknown trust mode {item!r} (image, initdata)") from None
        return tuple(modes)
    if key == "measurement_sources":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail("a list of source names")
        return tuple(value)
    raise ConfigError(origin, key, "unknown key")  # pragma: no cover - from_mapping filtered it


@dataclass(frozen=True)
class VerifiedPolicy:
    """What the gate accepted. The supervisor enforces exactly this, nothing else."""

    bundle_version: int
    bundle_digest: str  # sha256:<hex> of the signed payload
    expires: datetime
    policies: tuple[PolicyFile, ...]
    parsed_policies: tuple[Policy, ...]  # in file order
    bpf_objects: Mapping[str, str] = field(hash=False)  # object name -> sha256:<hex>
    agent_settings: Mapping[str, object] = field(hash=False)
    measurement_source: str  # e.g. "tdx", "vtpm", "attestation-agent", "sample", "given"
    measurement_detail: str
    tee: str | None  # "tdx" / "snp" / "cca" / "vtpm", None without a TEE
    insecure: bool  # True when no TEE measured anything (sample): never for production
    initdata_origin: str
    initdata_algorithm: str
    initdata_digest: str  # hex
    trust_mode: TrustMode
    trust_keys: tuple[PublicKey, ...]  # the keys an update must be signed with (same mode)
    signer_keyids: tuple[str, ...]
    threshold: int

    def status_line(self) -> str:
        prefix = "INSECURE (no TEE, sample source): " if self.insecure else ""
        binding = (
            f"{self.tee} {TEE_FIELD_NAMES[Tee(self.tee)]} matches"
            if self.tee is not None
            else "nothing measured the"
        )
        return (
            f"{prefix}policy bundle v{self.bundle_version} ({self.bundle_digest[:19]}) accepted: "
            f"{binding} initdata {self.initdata_algorithm}:{self.initdata_digest[:16]}; "
            f"signed by {len(self.signer_keyids)} {self.trust_mode} key(s), threshold {self.threshold}; "
            f"{len(self.parsed_policies)} policies; expires {self.expires:%Y-%m-%dT%H:%M:%SZ}"
        )


def check_measurement(document: InitdataDocument, measurement: Measurement, config: GateConfig) -> None:
    """Step 1. Raises unless the measured register holds what this initdata's digest says it should."""
    if measurement.insecure:
        if not config.insecure_allow_sample:
            raise InsecureSourceRefused(
                measurement.detail,
                "measurement",
                "no TEE is present and insecure_allow_sample is not set; refusing to run unmeasured",
            )
        return
    assert measurement.tee is not None
    expected = expected_measurement(document.digest, document.algorithm, measurement.tee, origin=document.origin)
    if not hmac.compare_digest(expected, measurement.value):
        raise MeasurementMismatch(
            measurement.detail,
            TEE_FIELD_NAMES[measurement.tee],
            f"measured {measurement.value.hex()} but initdata {document.origin} "
            f"({document.algorithm} {document.digest_hex}) requires {expected.hex()}",
        )


def select_trust(document: InitdataDocument, config: GateConfig) -> tuple[TrustMode, TrustStore]:
    carried = document.data.get(TRUST_KEY)
    if carried is not None and TrustMode.INITDATA in config.trust_modes:
        keys = load_public_keys_pem(carried.encode("utf-8"), origin=f"{document.origin} data.{TRUST_KEY}")
        return TrustMode.INITDATA, TrustStore.from_keys(keys, origin=f"{document.origin} data.{TRUST_KEY}")
    if TrustMode.IMAGE in config.trust_modes:
        return TrustMode.IMAGE, load_trust_dir(config.trust_dir)
    raise TrustModeRefused(
        document.origin,
        f"data.{TRUST_KEY}",
        "absent, and the configuration allows only initdata-carried keys"
        if carried is None
        else "present, but the configuration allows neither initdata nor image keys",
    )


def default_policy_parser(text: str, origin: str) -> tuple[Policy, ...]:
    # Imported here, at the validation step: the policy compiler is a separate, heavier module and
    # the gate's earlier steps (and the initdata CLI) must not depend on it.
    from bpf.policy.yaml_loader import parse_policy_text

    return parse_policy_text(text, origin=origin)


def validate_policies(
    payload: BundlePayload, *, origin: str, parser: PolicyParser | None = None
) -> tuple[Policy, ...]:
    """Step 4: every policy file parses; no two policies of one kind share a name across files."""
    from bpf.policy.model import PolicyError

    parse = parser or default_policy_parser
    parsed: list[Policy] = []
    first_seen: dict[tuple[str, str], str] = {}
    for index, policy_file in enumerate(payload.policies):
        where = f"payload.policies[{index}] ({policy_file.name})"
        try:
            policies = parse(policy_file.text, policy_file.name)
        except PolicyError as exc:
            problems = [str(p) for p in exc.problems] or [str(exc)]
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise PolicyInvalid(origin, where, problems[0] + more, details=problems) from None
        if not policies:
            raise PolicyInvalid(origin, where, "holds no policy document")
        for policy in policies:
            key = (str(policy.kind), policy.name)
            if key in first_seen:
                raise PolicyInvalid(origin, where, f"duplicate {key[0]} name {key[1]!r}; first in {first_seen[key]}")
            first_seen[key] = policy_file.name
        parsed.extend(policies)
    return tuple(parsed)


def verify_bundle(
    envelope_bytes: bytes,
    *,
    origin: str,
    trust: TrustStore,
    threshold: int,
    state: RollbackState | None,
    now: datetime,
    parser: PolicyParser | None,
) -> tuple[BundlePayload, tuple[PublicKey, ...], tuple[Policy, ...]]:
    """Steps 2-4 for an envelope, whether it came in initdata or as an update."""
    envelope = parse_envelope(envelope_bytes, origin=origin)
    signers = verify_envelope(envelope, trust, threshold, origin=origin, payload_type=BUNDLE_PAYLOAD_TYPE)
    payload = parse_payload(envelope.payload, origin=origin)
    if state is not None:
        state.check(payload.version, payload.digest, origin=origin)
    if now >= payload.expires:
        raise BundleExpired(
            origin,
            "payload.expires",
            f"expired at {payload.expires:%Y-%m-%dT%H:%M:%SZ} (now {now:%Y-%m-%dT%H:%M:%SZ})",
        )
    parsed = validate_policies(payload, origin=origin, parser=parser)
    return payload, signers, parsed


def gate(
    document: InitdataDocument,
    config: GateConfig,
    *,
    sources: Sequence[MeasurementSource] | None = None,
    now: datetime | None = None,
    policy_parser: PolicyParser | None = None,
) -> VerifiedPolicy:
    """Decide whether the bundle in this initdata may be enforced. See the module docstring."""
    # One fixed time for every check of this run (TUF: "fixed update start time").
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    if sources is None:
        sources = build_sources(config.measurement_sources, aa_client=config.aa_client())

    measurement = first_measurement(sources)
    check_measurement(document, measurement, config)

    envelope_text = document.data.get(BUNDLE_KEY)
    origin = f"{document.origin} data.{BUNDLE_KEY}"
    if envelope_text is None:
        raise MalformedBundle(document.origin, f"data.{BUNDLE_KEY}", "missing: no policy bundle in initdata")
    trust_mode, trust = select_trust(document, config)
    state = RollbackState(config.state_dir) if config.state_dir is not None else None
    payload, signers, parsed = verify_bundle(
        envelope_text.encode("utf-8"),
        origin=origin,
        trust=trust,
        threshold=config.threshold,
        state=state,
        now=moment,
        parser=policy_parser,
    )
    if state is not None:
        state.record(payload.version, payload.digest, now=moment)
    return VerifiedPolicy(
        bundle_version=payload.version,
        bundle_digest=payload.digest,
        expires=payload.expires,
        policies=payload.policies,
        parsed_policies=parsed,
        bpf_objects=payload.bpf_objects,
        agent_settings=payload.agent,
        measurement_source=measurement.source,
        measurement_detail=measurement.detail,
        tee=None if measurement.tee is None else measurement.tee.value,
        insecure=measurement.insecure,
        initdata_origin=document.origin,
        initdata_algorithm=document.algorithm.value,
        initdata_digest=document.digest_hex,
        trust_mode=trust_mode,
        trust_keys=trust.keys,
        signer_keyids=tuple(k.keyid for k in signers),
        threshold=config.threshold,
    )


def gate_update(
    envelope_bytes: bytes,
    current: VerifiedPolicy,
    config: GateConfig,
    *,
    origin: str,
    now: datetime | None = None,
    policy_parser: PolicyParser | None = None,
) -> VerifiedPolicy:
    """A newer bundle from the CDH or a file, checked like the boot bundle (steps 2-4).

    The measurement step is not repeated: the update is not in initdata, so what binds it is the
    signature by the keys the boot gate already bound (image keys, or the measured `warden.trust`).
    The version must be strictly greater than the one in force. Returns `current` itself when the
    envelope is the bundle already in force (a poller seeing nothing new).
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    trust = TrustStore(keys=current.trust_keys, origin=f"{current.trust_mode} trust keys")
    envelope = parse_envelope(envelope_bytes, origin=origin)
    if "sha256:" + hashlib.sha256(envelope.payload).hexdigest() == current.bundle_digest:
        verify_envelope(envelope, trust, current.threshold, origin=origin)
        return current
    state = RollbackState(config.state_dir) if config.state_dir is not None else None
    payload, signers, parsed = verify_bundle(
        envelope_bytes,
        origin=origin,
        trust=trust,
        threshold=current.threshold,
        state=state,
        now=moment,
        parser=policy_parser,
    )
    if payload.version <= current.bundle_version:
        raise RollbackRefused(
            origin,
            "payload.version",
            f"an update needs a version greater than {current.bundle_version}, not {payload.version}",
        )
    if state is not None:
        state.record(payload.version, payload.digest, now=moment)
    # The measurement, initdata and trust facts carry over from the boot gate: the update changes only
    # the bundle.
    return replace(
        current,
        bundle_version=payload.version,
        bundle_digest=payload.digest,
        expires=payload.expires,
        policies=payload.policies,
        parsed_policies=parsed,
        bpf_objects=payload.bpf_objects,
        agent_settings=payload.agent,
        signer_keyids=tuple(k.keyid for k in signers),
    )


def gate_guest(
    config: GateConfig,
    initdata_path: Path | None = None,
    *,
    now: datetime | None = None,
) -> VerifiedPolicy:
    """The supervisor's entry point: find the guest's initdata (initdata.locate), then `gate`."""
    return gate(locate_initdata(initdata_path), config, now=now)
