"""The attestation gate: may the bundle in this initdata be enforced in this confidential VM?

    gate = BootGate(document, rules, now=now)        # time fixed here, for every check
    gate.check_measurement(measurement)              # step 1
    image_keys = load_trust_dir(...)                 # when the image mode is allowed (None: no keys)
    verified = gate.accept(image_keys=image_keys, last_accepted=state)   # steps 2-4 (trust.bundle)

Steps, in this order, each with its own error type:
1. measurement: the TEE register holds this initdata's digest    (MeasurementMismatch, ...)
2. signatures: a threshold of distinct trusted keys signed       (SignatureThresholdNotMet, ...)
3. version and expiry: not older than this boot's last bundle,
   not expired                                                   (RollbackRefused, BundleExpired)
4. policy validation: every KubeArmor document parses            (PolicyInvalid)

Trust boundaries: the initdata bytes and everything in them are untrusted until step 1 binds them
to the TEE measurement; the bundle payload is untrusted until step 2, and is not even parsed
before its signatures verify. Like python-tuf's TrustedMetadataSet, the gate takes bytes and values
and returns a verified decision: finding initdata, asking the TEE, reading keys and the rollback
state, and recording the acceptance are the caller's (supervisor.gate_inputs). It never enforces.

Trust modes (which keys verify the bundle):
- `image`: the PEM keys under the trust directory of the (measured) guest image;
- `initdata`: the PEM keys in the initdata's own `warden.trust` value, bound by step 1.
The rule, in order (issue 15 item 9: initdata keys never replace image keys):
1. the `image` mode is allowed and the image ships trust keys: the image keys, whatever initdata
   carries (the measured image's owner decided who signs; initdata, written by whoever launches the
   VM, cannot swap in other signers even though the TEE measured it);
2. `warden.trust` is present and the `initdata` mode is allowed: the initdata keys (a generic image
   that ships no keys, the usual CoCo pod-VM image);
3. the `image` mode is allowed: the image keys (and reading them fails with the reason);
4. otherwise the gate refuses (TrustModeRefused).

A newer bundle later in the boot (a reload) goes through `UpdateGate`: signed by the keys the boot
gate bound, strictly newer than the one in force.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from attest.base import Measurement
from attest.tee import TEE_FIELD_NAMES, Tee, expected_measurement
from bpf.policy.model import Policy
from initdata.bundle import PodIdentity, PolicyFile
from initdata.document import BUNDLE_KEY, TRUST_KEY, InitdataDocument
from initdata.dsse import parse_envelope, verify_envelope
from initdata.errors import (
    InsecureSourceRefused,
    MalformedBundle,
    MeasurementMismatch,
    RollbackRefused,
    TrustModeRefused,
)
from initdata.keys import PublicKey, TrustStore, load_public_keys_pem
from initdata.rollback import AcceptedBundle
from trust.bundle import VerifiedBundle, verify_bundle
from trust.rules import GateRules, TrustMode


@dataclass(frozen=True)
class VerifiedPolicy:
    """What the gate accepted. The supervisor enforces exactly this, nothing else."""

    bundle_version: int
    bundle_digest: str  # sha256:<hex> of the signed payload
    bundle_origin: str  # where the envelope was read: initdata data.warden.bundle, an update file
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
    pod: PodIdentity | None = None  # the signed pod (trust.identity); None: the bundle names none
    max_validity: timedelta | None = None  # carried to updates (trust.bundle.check_freshness)
    minimum_version: int | None = None  # the relying party's floor at boot; updates are held to it too

    def status_line(self) -> str:
        prefix = ""
        if self.insecure:
            prefix = ("INSECURE (no TEE, sample source): " if self.tee is None
                      else f"INSECURE ({self.tee} not vouched for by a TEE): ")
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


def _fixed(now: datetime | None) -> datetime:
    # One fixed time for every check of a decision (TUF: "fixed update start time").
    return (now or datetime.now(UTC)).astimezone(UTC)


class BootGate:
    """The boot gate's decision about one initdata document, fed in order by the caller.

    The order is enforced: `trust_mode` and `accept` refuse to run before `check_measurement` has
    passed, so nothing the initdata says is used before the TEE has vouched for it.
    """

    def __init__(self, document: InitdataDocument, rules: GateRules, *, now: datetime | None = None) -> None:
        self.document = document
        self.rules = rules
        self.reference_time = _fixed(now)
        self._measurement: Measurement | None = None

    def check_measurement(self, measurement: Measurement) -> None:
        """Step 1. Raises unless the measured register holds what this initdata's digest says it should."""
        document = self.document
        kind = measurement.insecure_kind
        if kind is not None and not self.rules.allows_insecure(kind):
            raise InsecureSourceRefused(
                measurement.detail,
                "measurement",
                "no TEE is present and insecure_allow_sample is not set; refusing to run unmeasured"
                if kind == "sample"
                else f"a {kind} measurement no TEE vouches for"
                + (f" ({measurement.unvouched_reason})" if measurement.unvouched_reason else "")
                + f" is not a TEE measurement; refusing unless insecure_sources lists {kind}",
            )
        if measurement.tee is not None:
            expected = expected_measurement(
                document.digest, document.algorithm, measurement.tee, origin=document.origin
            )
            if not hmac.compare_digest(expected, measurement.value):
                raise MeasurementMismatch(
                    measurement.detail,
                    TEE_FIELD_NAMES[measurement.tee],
                    f"measured {measurement.value.hex()} but initdata {document.origin} "
                    f"({document.algorithm} {document.digest_hex}) requires {expected.hex()}",
                )
        self._measurement = measurement

    def _measured(self) -> Measurement:
        if self._measurement is None:
            raise RuntimeError("the initdata is used before check_measurement() bound it to the TEE")
        return self._measurement

    @property
    def bundle_origin(self) -> str:
        return f"{self.document.origin} data.{BUNDLE_KEY}"

    def trust_mode(self, *, image_has_keys: bool = False) -> TrustMode:
        """Which keys verify the bundle (the rule is in the module docstring). `image_has_keys`: the
        image ships trust keys (only asked when the image mode is allowed)."""
        self._measured()
        document = self.document
        if BUNDLE_KEY not in document.data:
            raise MalformedBundle(document.origin, f"data.{BUNDLE_KEY}", "missing: no policy bundle in initdata")
        carried = document.data.get(TRUST_KEY)
        if image_has_keys and TrustMode.IMAGE in self.rules.trust_modes:
            return TrustMode.IMAGE
        if carried is not None and TrustMode.INITDATA in self.rules.trust_modes:
            return TrustMode.INITDATA
        if TrustMode.IMAGE in self.rules.trust_modes:
            return TrustMode.IMAGE
        raise TrustModeRefused(
            document.origin,
            f"data.{TRUST_KEY}",
            "absent, and the configuration allows only initdata-carried keys"
            if carried is None
            else "present, but the configuration allows neither initdata nor image keys",
        )

    def _trust_store(self, mode: TrustMode, image_keys: TrustStore | None) -> TrustStore:
        if mode is TrustMode.INITDATA:
            origin = f"{self.document.origin} data.{TRUST_KEY}"
            carried = self.document.data[TRUST_KEY].encode("utf-8")
            return TrustStore.from_keys(load_public_keys_pem(carried, origin=origin), origin=origin)
        if image_keys is None:
            raise RuntimeError("trust mode image needs the image keys (load_trust_dir)")
        return image_keys

    def accept(self, *, image_keys: TrustStore | None, last_accepted: AcceptedBundle | None,
               minimum_version: int | None = None) -> VerifiedPolicy:
        """Steps 2-4 on the initdata's bundle, after step 1. `image_keys` is needed only when
        `trust_mode()` is IMAGE; `last_accepted` is this boot's rollback state (None: no memory)."""
        measurement = self._measured()
        mode = self.trust_mode(image_has_keys=image_keys is not None and bool(image_keys.keys))
        trust = self._trust_store(mode, image_keys)
        bundle = verify_bundle(
            self.document.data[BUNDLE_KEY].encode("utf-8"),
            origin=self.bundle_origin,
            trust=trust,
            threshold=self.rules.threshold,
            last_accepted=last_accepted,
            now=self.reference_time,
            max_validity=self.rules.max_validity,
            minimum_version=minimum_version,
        )
        payload = bundle.payload
        return VerifiedPolicy(
            bundle_version=payload.version,
            bundle_digest=payload.digest,
            bundle_origin=self.bundle_origin,
            expires=payload.expires,
            policies=payload.policies,
            parsed_policies=bundle.policies,
            bpf_objects=payload.bpf_objects,
            agent_settings=payload.agent,
            measurement_source=measurement.source,
            measurement_detail=measurement.detail,
            tee=None if measurement.tee is None else measurement.tee.value,
            insecure=measurement.insecure,
            initdata_origin=self.document.origin,
            initdata_algorithm=self.document.algorithm.value,
            initdata_digest=self.document.digest_hex,
            trust_mode=mode,
            trust_keys=trust.keys,
            signer_keyids=tuple(k.keyid for k in bundle.signers),
            threshold=self.rules.threshold,
            pod=payload.pod,
            max_validity=self.rules.max_validity,
            minimum_version=minimum_version,
        )

    def accept_resumed(
        self, update: bytes, *, origin: str, image_keys: TrustStore | None, last_accepted: AcceptedBundle | None,
        minimum_version: int | None = None,
    ) -> VerifiedPolicy:
        """After a reload earlier in this boot: the boot bundle, then the update that reload accepted.

        The rollback state then names the update, so the boot bundle alone would be refused as
        older. Its measurement and signatures are checked without rollback memory (step 1 binds it to
        this VM for the whole boot), and the update must pass the update rule against it, rollback
        state included, exactly as when it was first applied: a restart resumes the newer policy and
        never falls back to the older one.
        """
        boot = self.accept(image_keys=image_keys, last_accepted=None, minimum_version=minimum_version)
        return UpdateGate(boot, now=self.reference_time).accept(update, origin=origin, last_accepted=last_accepted)


class UpdateGate:
    """Whether a newer bundle (from the CDH or a file) may replace the one in force: steps 2-4 again.

    The measurement step is not repeated: the update is not in initdata, so what binds it is the
    signature by the keys the boot gate already bound (image keys, or the measured `warden.trust`),
    with the boot gate's threshold. The version must be strictly greater than the one in force.
    """

    def __init__(self, current: VerifiedPolicy, *, now: datetime | None = None) -> None:
        self.current = current
        self.reference_time = _fixed(now)

    def accept(self, envelope_bytes: bytes, *, origin: str, last_accepted: AcceptedBundle | None) -> VerifiedPolicy:
        """The policy to enforce after this envelope: `current` itself when the envelope is the bundle
        already in force (a poller seeing nothing new), else the update. Raises a GateError."""
        current = self.current
        trust = TrustStore(keys=current.trust_keys, origin=f"{current.trust_mode} trust keys")
        envelope = parse_envelope(envelope_bytes, origin=origin)
        if "sha256:" + hashlib.sha256(envelope.payload).hexdigest() == current.bundle_digest:
            verify_envelope(envelope, trust, current.threshold, origin=origin)
            return current
        bundle = verify_bundle(
            envelope_bytes,
            origin=origin,
            trust=trust,
            threshold=current.threshold,
            last_accepted=last_accepted,
            now=self.reference_time,
            max_validity=current.max_validity,
            minimum_version=current.minimum_version,
        )
        return self._replace_bundle(bundle, origin=origin)

    def _replace_bundle(self, bundle: VerifiedBundle, *, origin: str) -> VerifiedPolicy:
        current, payload = self.current, bundle.payload
        if payload.version <= current.bundle_version:
            raise RollbackRefused(
                origin,
                "payload.version",
                f"an update needs a version greater than {current.bundle_version}, not {payload.version}",
            )
        if payload.pod != current.pod:
            # Registered scopes were decided with the pod in force; a pod VM runs one pod for its life.
            raise MalformedBundle(origin, "payload.pod", "an update must name the same pod as the bundle in force")
        # The measurement, initdata and trust facts carry over from the boot gate: the update changes
        # only the bundle.
        return replace(
            current,
            bundle_version=payload.version,
            bundle_digest=payload.digest,
            bundle_origin=origin,
            expires=payload.expires,
            policies=payload.policies,
            parsed_policies=bundle.policies,
            bpf_objects=payload.bpf_objects,
            agent_settings=payload.agent,
            signer_keyids=tuple(k.keyid for k in bundle.signers),
        )
