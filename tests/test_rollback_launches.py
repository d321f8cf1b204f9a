"""Issue 15 item 3: rollback across launches, with no trusted persistent storage in the guest.

What can be stopped (threat-model.md, "Rollback across launches"): a bundle below the minimum version
the relying party releases as a KBS resource after attestation; a bundle whose validity window is
longer than `max_validity_days` (counted from its signed `issued_at`, else from now). What cannot: the
host relaunching the VM with an older bundle that is still inside both bounds; the relying party's
reference values for the initdata digest are the control for that.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from attest.sample import GivenMeasurementSource
from initdata.bundle import build_payload, parse_payload
from initdata.document import parse_initdata
from initdata.dsse import BUNDLE_PAYLOAD_TYPE, sign_envelope
from initdata.errors import BundleExpired, ConfigError, MalformedBundle, RollbackRefused, RollbackStateError
from initdata.rollback import parse_kbs_uri, parse_minimum_version
from supervisor.config import GateConfig, parse_gate_config
from supervisor.gate_inputs import fetch_minimum_version, gate_initdata
from tests.data.initdata.factory import (
    FIXTURE_NOW,
    make_initdata,
    policy_files,
    public_pem,
    signing_key,
)
from tests.test_trust_gate import measurement_of
from trust.rules import GateRules

KEY = "owner-ed25519"


def envelope(version: int, *, days: int, issued_days_ago: int | None = None) -> bytes:
    issued = None if issued_days_ago is None else FIXTURE_NOW - timedelta(days=issued_days_ago)
    start = issued or FIXTURE_NOW
    payload = build_payload(version=version, expires=start + timedelta(days=days), policies=policy_files(),
                            issued_at=issued)
    return sign_envelope(payload, BUNDLE_PAYLOAD_TYPE, [signing_key(KEY)]).to_json()


def config(tmp_path: Path, **gate: object) -> GateConfig:
    trust = tmp_path / "trust"
    trust.mkdir(parents=True, exist_ok=True)
    (trust / "owner.pem").write_bytes(public_pem(KEY))
    return GateConfig(trust_dir=trust, state_dir=tmp_path / "state", **gate)  # type: ignore[arg-type]


def run_gate(tmp_path: Path, raw_envelope: bytes, *, fetch: object = None, **gate: object) -> int:
    document = parse_initdata(make_initdata(raw_envelope), origin="initdata.toml")
    measurement = measurement_of(document)
    source = GivenMeasurementSource(measurement.tee, measurement.value)
    verified = gate_initdata(document, config(tmp_path, **gate), sources=[source], now=FIXTURE_NOW,
                             fetch_resource=fetch)  # type: ignore[arg-type]
    return verified.bundle_version


def test_minimum_version_from_kbs_refuses_an_older_bundle(tmp_path: Path) -> None:
    asked: list[tuple[str, str, str]] = []

    def fetch(repository: str, kind: str, tag: str) -> bytes:
        asked.append((repository, kind, tag))
        return b'{"minimum_version": 5}'

    resource = "kbs:///default/warden/minimum-version"
    with pytest.raises(RollbackRefused, match="below the minimum version 5 the relying party released"):
        run_gate(tmp_path, envelope(4, days=30), fetch=fetch, minimum_version_resource=resource)
    assert asked == [("default", "warden", "minimum-version")]
    assert run_gate(tmp_path / "b", envelope(5, days=30), fetch=fetch, minimum_version_resource=resource) == 5


def test_an_unavailable_minimum_version_fails_closed(tmp_path: Path) -> None:
    def fetch(repository: str, kind: str, tag: str) -> bytes:
        raise RollbackStateError("kbs", "resource", "HTTP 403 policy denied")

    with pytest.raises(RollbackStateError, match="the minimum version cannot be fetched"):
        run_gate(tmp_path, envelope(9, days=30), fetch=fetch, minimum_version_resource="kbs:///a/b/c")
    with pytest.raises(RollbackStateError, match="minimum_version"):
        fetch_minimum_version(config(tmp_path, minimum_version_resource="kbs:///a/b/c"), lambda *_: b'"7"')


@pytest.mark.parametrize(("raw", "expected"), [(b"7", 7), (b'{"minimum_version": 12}', 12)])
def test_minimum_version_formats(raw: bytes, expected: int) -> None:
    assert parse_minimum_version(raw, origin="kbs") == expected


@pytest.mark.parametrize("raw", [b"0", b"true", b'{"minimum_version": 1, "minimum_version": 99}', b"9" * 300])
def test_bad_minimum_versions_are_refused(raw: bytes) -> None:
    with pytest.raises(RollbackStateError):
        parse_minimum_version(raw, origin="kbs")


def test_max_validity_bounds_the_replay_window(tmp_path: Path) -> None:
    assert run_gate(tmp_path, envelope(1, days=300), max_validity_days=400) == 1
    with pytest.raises(BundleExpired, match="valid for 500 days from now; max_validity_days is 400"):
        run_gate(tmp_path / "b", envelope(2, days=500), max_validity_days=400)
    # Counted from the signed issue date when there is one: a year-old bundle valid for 13 months fails.
    with pytest.raises(BundleExpired, match="from issued_at"):
        run_gate(tmp_path / "c", envelope(3, days=500, issued_days_ago=365), max_validity_days=400)
    assert GateRules().max_validity is None  # not configured: no bound (the shipped example says so)


def test_issued_at_must_precede_expiry() -> None:
    payload = json.loads(build_payload(version=1, expires=FIXTURE_NOW + timedelta(days=1), policies=policy_files()))
    payload["issued_at"] = "2099-01-01T00:00:00Z"
    with pytest.raises(MalformedBundle, match=r"payload\.issued_at: is not before payload\.expires"):
        parse_payload(json.dumps(payload).encode(), origin="b")


def test_config_checks_the_resource_uri() -> None:
    assert parse_kbs_uri("kbs:///repo/type/tag", origin="c", field="f") == ("repo", "type", "tag")
    for bad in ("kbs://host/repo/type/tag", "kbs:///repo/type", "kbs:///../type/tag", "http:///a/b/c"):
        with pytest.raises(ConfigError, match="minimum_version_resource"):
            parse_gate_config({"minimum_version_resource": bad}, origin="warden.yaml")
    assert parse_gate_config({"max_validity_days": 400}, origin="w").rules.max_validity == timedelta(days=400)
