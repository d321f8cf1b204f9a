"""trust.gate and trust.bundle on their own: values in, a decision out, no file and no clock read.

The end-to-end gate (with its I/O: trust directory, rollback file) is tests/test_gate_flow.py; here
the decision objects are fed by hand, as python-tuf's tests feed TrustedMetadataSet.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from attest.base import Measurement
from attest.tee import Tee, expected_measurement
from initdata.bundle import PodIdentity
from initdata.document import InitdataDocument, parse_initdata
from initdata.dsse import Envelope
from initdata.errors import (
    BundleExpired,
    MalformedBundle,
    MeasurementMismatch,
    RollbackRefused,
    SignatureThresholdNotMet,
    TrustModeRefused,
)
from initdata.keys import TrustStore, load_public_keys_pem
from initdata.rollback import AcceptedBundle
from tests.data.initdata.factory import FIXTURE_NOW, make_envelope, make_initdata, public_pem, signing_key
from trust.bundle import check_rollback, verify_baseline
from trust.gate import BootGate, UpdateGate, VerifiedPolicy
from trust.rules import GateRules, TrustMode

ED, P384 = "owner-ed25519", "owner-p384"
IMAGE_KEYS = TrustStore.from_keys(load_public_keys_pem(public_pem(ED), origin="ed.pem"), origin="image keys")


def document(envelope: Envelope | None, *, trust_pems: list[bytes] | None = None) -> InitdataDocument:
    return parse_initdata(make_initdata(envelope, trust_pems=trust_pems), origin="initdata.toml")


def measurement_of(doc: InitdataDocument, tee: Tee = Tee.SNP) -> Measurement:
    return Measurement("given", tee, expected_measurement(doc.digest, doc.algorithm, tee), "test register")


def state_for(envelope: Envelope, version: int) -> AcceptedBundle:
    return AcceptedBundle(version=version, digest="sha256:" + hashlib.sha256(envelope.payload).hexdigest(),
                          accepted_at="")


def boot(envelope: Envelope, *, now: datetime = FIXTURE_NOW) -> VerifiedPolicy:
    doc = document(envelope)
    gate = BootGate(doc, GateRules(), now=now)
    gate.check_measurement(measurement_of(doc))
    return gate.accept(image_keys=IMAGE_KEYS, last_accepted=None)


def test_nothing_the_initdata_says_is_used_before_the_measurement_binds_it() -> None:
    gate = BootGate(document(make_envelope([signing_key(ED)])), GateRules(), now=FIXTURE_NOW)
    with pytest.raises(RuntimeError, match="before check_measurement"):
        gate.trust_mode()
    with pytest.raises(RuntimeError, match="before check_measurement"):
        gate.accept(image_keys=IMAGE_KEYS, last_accepted=None)


def test_a_refused_measurement_leaves_the_gate_closed() -> None:
    doc = document(make_envelope([signing_key(ED)]))
    other = document(None)
    gate = BootGate(doc, GateRules(), now=FIXTURE_NOW)
    with pytest.raises(MeasurementMismatch):
        gate.check_measurement(measurement_of(other))
    with pytest.raises(RuntimeError):
        gate.accept(image_keys=IMAGE_KEYS, last_accepted=None)


def test_initdata_keys_need_no_image_keys_and_image_mode_needs_them() -> None:
    carried = document(make_envelope([signing_key(P384)]), trust_pems=[public_pem(P384)])
    gate = BootGate(carried, GateRules(trust_modes=(TrustMode.INITDATA, TrustMode.IMAGE)), now=FIXTURE_NOW)
    gate.check_measurement(measurement_of(carried))
    assert gate.trust_mode() is TrustMode.INITDATA
    assert gate.accept(image_keys=None, last_accepted=None).trust_mode is TrustMode.INITDATA

    image = BootGate(carried, GateRules(trust_modes=(TrustMode.IMAGE,)), now=FIXTURE_NOW)
    image.check_measurement(measurement_of(carried))
    assert image.trust_mode() is TrustMode.IMAGE
    with pytest.raises(RuntimeError, match="needs the image keys"):
        image.accept(image_keys=None, last_accepted=None)
    with pytest.raises(SignatureThresholdNotMet):  # warden.trust is ignored: the image key did not sign
        image.accept(image_keys=IMAGE_KEYS, last_accepted=None)

    plain = document(make_envelope([signing_key(ED)]))
    refused = BootGate(plain, GateRules(trust_modes=(TrustMode.INITDATA,)), now=FIXTURE_NOW)
    refused.check_measurement(measurement_of(plain))
    with pytest.raises(TrustModeRefused):
        refused.trust_mode()


def test_time_is_the_one_fixed_at_construction_not_the_clock() -> None:
    # Expired long ago by the wall clock, but the decision runs at the time it was given.
    envelope = make_envelope([signing_key(ED)], expires=datetime(2020, 1, 1, tzinfo=UTC))
    assert boot(envelope, now=datetime(2019, 12, 31, tzinfo=UTC)).bundle_version == 1
    with pytest.raises(BundleExpired):
        boot(envelope, now=datetime(2020, 1, 1, tzinfo=UTC))
    current = boot(make_envelope([signing_key(ED)]), now=datetime(2019, 1, 1, tzinfo=UTC))
    update = make_envelope([signing_key(ED)], version=2, expires=datetime(2020, 1, 1, tzinfo=UTC))
    gate = UpdateGate(current, now=datetime(2019, 6, 1, tzinfo=UTC))
    assert gate.reference_time == datetime(2019, 6, 1, tzinfo=UTC)
    assert gate.accept(update.to_json(), origin="update", last_accepted=None).bundle_version == 2


def test_rollback_rule() -> None:
    v2 = make_envelope([signing_key(ED)], version=2)
    last = state_for(v2, 2)
    check_rollback(None, 1, "sha256:" + "0" * 64, origin="x")  # nothing accepted yet in this boot
    check_rollback(last, 3, "sha256:" + "0" * 64, origin="x")  # an update
    check_rollback(last, 2, last.digest, origin="x")  # the identical bundle again
    with pytest.raises(RollbackRefused, match="already accepted in this boot with different content"):
        check_rollback(last, 2, "sha256:" + "0" * 64, origin="x")
    with pytest.raises(RollbackRefused, match="version 1 is older than version 2"):
        check_rollback(last, 1, "sha256:" + "0" * 64, origin="x")


def test_an_update_is_signed_by_the_boot_keys_and_strictly_newer() -> None:
    current = boot(make_envelope([signing_key(ED)], version=4))
    same = make_envelope([signing_key(ED)], version=4).to_json()
    gate = UpdateGate(current, now=FIXTURE_NOW)
    assert gate.accept(same, origin="cdh", last_accepted=None) is current
    newer = gate.accept(make_envelope([signing_key(ED)], version=5).to_json(), origin="update.json",
                        last_accepted=None)
    assert (newer.bundle_version, newer.bundle_origin, newer.tee) == (5, "update.json", "snp")
    with pytest.raises(RollbackRefused, match="greater than 4, not 3"):
        gate.accept(make_envelope([signing_key(ED)], version=3).to_json(), origin="f", last_accepted=None)
    with pytest.raises(SignatureThresholdNotMet):
        gate.accept(make_envelope([signing_key(P384)], version=6).to_json(), origin="f", last_accepted=None)


def test_an_update_must_name_the_pod_in_force() -> None:
    """Registered scopes were decided with the boot bundle's pod: an update signed for another pod (or
    for none) would relabel every container, so it is refused whatever its version."""
    mysql = PodIdentity("db", {"app": "mysql"}, ("mysql",))
    current = boot(make_envelope([signing_key(ED)], version=4, pod=mysql))
    gate = UpdateGate(current, now=FIXTURE_NOW)
    for other in (PodIdentity("db", {"app": "web"}, ("mysql",)), PodIdentity("prod", {"app": "mysql"}, ("mysql",)),
                  PodIdentity("db", {"app": "mysql"}, ("mysql", "sidecar")), None):
        with pytest.raises(MalformedBundle, match=r"payload\.pod.*same pod"):
            gate.accept(make_envelope([signing_key(ED)], version=5, pod=other).to_json(), origin="cdh",
                        last_accepted=None)
    newer = gate.accept(make_envelope([signing_key(ED)], version=5, pod=mysql).to_json(), origin="cdh",
                        last_accepted=None)
    assert (newer.bundle_version, newer.pod) == (5, mysql)


def test_resuming_an_update_checks_the_boot_bundle_without_memory_and_the_update_with_it() -> None:
    v1 = make_envelope([signing_key(ED)], version=1)
    v2 = make_envelope([signing_key(ED)], version=2)
    doc = document(v1)

    def gate() -> BootGate:
        opened = BootGate(doc, GateRules(), now=FIXTURE_NOW)
        opened.check_measurement(measurement_of(doc))
        return opened

    # After the reload to v2 the rollback state names v2: v1 alone is now a rollback...
    with pytest.raises(RollbackRefused):
        gate().accept(image_keys=IMAGE_KEYS, last_accepted=state_for(v2, 2))
    # ...but v1 bound by the measurement, then v2 against it, is exactly the policy in force.
    resumed = gate().accept_resumed(v2.to_json(), origin="accepted-update", image_keys=IMAGE_KEYS,
                                    last_accepted=state_for(v2, 2))
    assert (resumed.bundle_version, resumed.initdata_digest) == (2, doc.digest_hex)
    # A later acceptance (v3) in the state refuses the kept v2: never fall back to an older policy.
    with pytest.raises(RollbackRefused):
        gate().accept_resumed(v2.to_json(), origin="accepted-update", image_keys=IMAGE_KEYS,
                              last_accepted=state_for(v2, 3))
    # The kept update is still an update: signed by the boot keys, newer than the boot bundle.
    with pytest.raises(SignatureThresholdNotMet):
        gate().accept_resumed(make_envelope([signing_key(P384)], version=2).to_json(), origin="accepted-update",
                              image_keys=IMAGE_KEYS, last_accepted=None)
    with pytest.raises(RollbackRefused, match="greater than 1"):
        older = make_envelope([signing_key(ED)], version=1, expires=FIXTURE_NOW + timedelta(days=9))
        gate().accept_resumed(older.to_json(), origin="accepted-update", image_keys=IMAGE_KEYS, last_accepted=None)


def test_the_baseline_is_verified_with_the_image_keys_and_no_rollback_memory() -> None:
    baseline = make_envelope([signing_key(ED)], version=1).to_json()
    verified = verify_baseline(baseline, origin="baseline.json", image_keys=IMAGE_KEYS, threshold=1, now=FIXTURE_NOW)
    assert verified.payload.version == 1 and verified.policies
    with pytest.raises(SignatureThresholdNotMet):
        verify_baseline(make_envelope([signing_key(P384)]).to_json(), origin="baseline.json",
                        image_keys=IMAGE_KEYS, threshold=1, now=FIXTURE_NOW)
    two_keys = TrustStore.from_keys([*IMAGE_KEYS.keys, *load_public_keys_pem(public_pem(P384), origin="p384.pem")],
                                    origin="image keys")
    with pytest.raises(SignatureThresholdNotMet):  # the configured threshold applies to the baseline too
        verify_baseline(baseline, origin="baseline.json", image_keys=two_keys, threshold=2, now=FIXTURE_NOW)
    expired = make_envelope([signing_key(ED)], expires=FIXTURE_NOW).to_json()
    with pytest.raises(BundleExpired):
        verify_baseline(expired, origin="baseline.json", image_keys=IMAGE_KEYS, threshold=1, now=FIXTURE_NOW)
