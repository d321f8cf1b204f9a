"""May the policies in one signed bundle envelope be enforced? The gate's steps 2-4, for any envelope.

Steps, in this order, each with its own error type:
2. signatures: a threshold of distinct trusted keys signed the envelope  (SignatureThresholdNotMet, ...)
3. version and expiry: not older than this boot's last accepted bundle,
   not expired                                                         (RollbackRefused, BundleExpired)
4. policies: every KubeArmor document parses, no name twice per kind   (PolicyInvalid)

The payload is untrusted until step 2 and is not even parsed before its signatures verify (DSSE's
order). Bytes and values in, a `VerifiedBundle` or a GateError out, at the time the caller fixed:
reading the envelope, the keys and the rollback state, and recording an acceptance, are the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from bpf.policy.model import Policy, PolicyError
from bpf.policy.yaml_loader import parse_policy_text
from initdata.bundle import BundlePayload, parse_payload
from initdata.dsse import BUNDLE_PAYLOAD_TYPE, parse_envelope, verify_envelope
from initdata.errors import BundleExpired, PolicyInvalid, RollbackRefused
from initdata.keys import PublicKey, TrustStore
from initdata.rollback import AcceptedBundle


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed steps 2-4: its payload, who signed it, and its parsed policies in file order."""

    payload: BundlePayload
    signers: tuple[PublicKey, ...]
    policies: tuple[Policy, ...]


def check_rollback(last: AcceptedBundle | None, version: int, digest: str, *, origin: str) -> None:
    """Raise RollbackRefused unless a bundle with this version and digest may be accepted now.

    Rule (TUF's "MUST NOT replace metadata with a lower version"; freeze is the expiry check's):
    - nothing accepted yet in this boot: accept;
    - a version strictly greater than the last accepted: accept (an update);
    - the same version *and* the same payload digest: accept (the identical bundle again, e.g. after
      a supervisor restart);
    - anything else: refuse. A lower version is a rollback; the same version with different content
      is two bundles claiming one version, which an attacker holding an old signing key could use.
    """
    if last is None or version > last.version:
        return
    if version == last.version and digest == last.digest:
        return
    if version == last.version:
        raise RollbackRefused(
            origin,
            "payload.version",
            f"version {version} was already accepted in this boot with different content "
            f"({last.digest[:19]}…); an update needs a greater version",
        )
    raise RollbackRefused(
        origin,
        "payload.version",
        f"version {version} is older than version {last.version} accepted in this boot",
    )


def validate_policies(payload: BundlePayload, *, origin: str) -> tuple[Policy, ...]:
    """Step 4: every policy file parses; no two policies of one kind share a name across files."""
    parsed: list[Policy] = []
    first_seen: dict[tuple[str, str], str] = {}
    for index, policy_file in enumerate(payload.policies):
        where = f"payload.policies[{index}] ({policy_file.name})"
        try:
            policies = parse_policy_text(policy_file.text, origin=policy_file.name)
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


def check_freshness(
    payload: BundlePayload, *, origin: str, now: datetime, max_validity: timedelta | None, minimum_version: int | None
) -> None:
    """Across launches (no trusted storage in the guest: threat-model.md, rollback):
    - `minimum_version` (a KBS resource released only to a VM the relying party accepts): refuse below;
    - `max_validity`: refuse a bundle valid for longer than this, counted from its `issued_at`, or from
      now when it states none, so an old bundle stays replayable for a bounded time at most.
    """
    if minimum_version is not None and payload.version < minimum_version:
        raise RollbackRefused(origin, "payload.version",
                              f"version {payload.version} is below the minimum version {minimum_version} "
                              "the relying party released for this VM")
    if max_validity is not None:
        start = payload.issued_at if payload.issued_at is not None else now
        if payload.expires - start > max_validity:
            since = "issued_at" if payload.issued_at is not None else "now"
            raise BundleExpired(origin, "payload.expires",
                                f"valid for {(payload.expires - start).days} days from {since}; "
                                f"max_validity_days is {max_validity.days}")


def verify_bundle(
    envelope_bytes: bytes,
    *,
    origin: str,
    trust: TrustStore,
    threshold: int,
    last_accepted: AcceptedBundle | None,
    now: datetime,
    max_validity: timedelta | None = None,
    minimum_version: int | None = None,
) -> VerifiedBundle:
    """Steps 2-4 for an envelope, whether it came in initdata, as an update, or as the baseline.

    `last_accepted` is this boot's rollback state (None: no rollback memory, e.g. an offline check);
    `max_validity` and `minimum_version`: check_freshness.
    """
    envelope = parse_envelope(envelope_bytes, origin=origin)
    signers = verify_envelope(envelope, trust, threshold, origin=origin, payload_type=BUNDLE_PAYLOAD_TYPE)
    payload = parse_payload(envelope.payload, origin=origin)
    check_rollback(last_accepted, payload.version, payload.digest, origin=origin)
    check_freshness(payload, origin=origin, now=now, max_validity=max_validity, minimum_version=minimum_version)
    if now >= payload.expires:
        raise BundleExpired(
            origin,
            "payload.expires",
            f"expired at {payload.expires:%Y-%m-%dT%H:%M:%SZ} (now {now:%Y-%m-%dT%H:%M:%SZ})",
        )
    return VerifiedBundle(payload=payload, signers=signers, policies=validate_policies(payload, origin=origin))


def verify_baseline(
    envelope_bytes: bytes, *, origin: str, image_keys: TrustStore, threshold: int, now: datetime
) -> VerifiedBundle:
    """The baseline bundle shipped in the image, enforced when the gate refuses and nothing is enforced yet.

    Steps 2-4 with the image keys and the configured threshold, whatever the trust modes allow: the
    baseline is part of the measured image, never of initdata. No rollback memory, and its acceptance
    is not recorded: it is the image's floor, not this boot's policy, so no update is measured
    against it.
    """
    return verify_bundle(
        envelope_bytes, origin=origin, trust=image_keys, threshold=threshold, last_accepted=None, now=now
    )
