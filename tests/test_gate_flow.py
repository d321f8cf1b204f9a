"""The gate end to end (with given measurements): order of checks, trust modes, rollback, expiry."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from attest.base import MeasurementSource
from attest.sample import GivenMeasurementSource, SampleSource
from attest.tee import Tee, expected_measurement
from initdata.bundle import PolicyFile
from initdata.document import HashAlgorithm, InitdataDocument, parse_initdata
from initdata.errors import (
    BundleExpired,
    GateError,
    InsecureSourceRefused,
    MalformedBundle,
    MeasurementMismatch,
    PolicyInvalid,
    RollbackRefused,
    RollbackStateError,
    SignatureThresholdNotMet,
    TrustModeRefused,
    UnsupportedAlgorithm,
)
from initdata.rollback import STATE_FILE_NAME
from supervisor.config import GateConfig, WardenConfig
from supervisor.gate_inputs import gate_initdata, gate_update, read_baseline, start_gate
from tests.data.initdata.factory import (
    FIXTURE_EXPIRES,
    FIXTURE_NOW,
    HERE,
    KEYS,
    make_envelope,
    make_initdata,
    public_pem,
    signing_key,
)
from trust.rules import TrustMode

ED, P256, P384 = "owner-ed25519", "owner-p256", "owner-p384"
SEED_POLICIES = Path(__file__).parent / "data" / "policies" / "seed"


def document_of(raw: bytes, origin: str = "initdata.toml") -> InitdataDocument:
    return parse_initdata(raw, origin=origin)


def measured(document: InitdataDocument, tee: Tee = Tee.SNP) -> list[MeasurementSource]:
    value = expected_measurement(document.digest, document.algorithm, tee)
    return [GivenMeasurementSource(tee, value, detail=f"test {tee}")]


def config(tmp_path: Path | None = None, **changes: object) -> GateConfig:
    values: dict[str, object] = {"trust_dir": KEYS, "threshold": 1, "state_dir": None}
    if tmp_path is not None:
        values["state_dir"] = tmp_path / "state"
    values.update(changes)
    return GateConfig(**values)  # type: ignore[arg-type]


def run(raw: bytes, cfg: GateConfig, *, tee: Tee = Tee.SNP, now: datetime = FIXTURE_NOW) -> object:
    document = document_of(raw)
    return gate_initdata(document, cfg, sources=measured(document, tee), now=now)


# --- accepted -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tee", list(Tee))
def test_fixture_initdata_accepted_on_every_tee(tee: Tee) -> None:
    raw = (HERE / "initdata-v1.toml").read_bytes()
    document = document_of(raw)
    verified = gate_initdata(document, config(threshold=2), sources=measured(document, tee), now=FIXTURE_NOW)
    assert verified.bundle_version == 1
    assert verified.expires == FIXTURE_EXPIRES
    assert [p.name for p in verified.policies] == ["block-shadow.yaml", "net-raw-audit.yaml"]
    assert [getattr(p, "name", None) for p in verified.parsed_policies] == [
        "block-shadow",
        "net-raw-audit",
        "no-chown",
    ]
    assert dict(verified.bpf_objects) == {"warden_lsm.bpf.o": "sha256:" + "ab" * 32}
    assert verified.tee == tee.value
    assert verified.insecure is False
    assert verified.trust_mode is TrustMode.IMAGE
    assert verified.initdata_digest == document.digest_hex
    assert len(verified.signer_keyids) == 2
    assert "INSECURE" not in verified.status_line()
    assert f"{tee.value} " in verified.status_line()


def test_seed_policies_pass_the_gate() -> None:
    seeds = [PolicyFile(p.name, p.read_text()) for p in sorted(SEED_POLICIES.glob("*.yaml"))]
    assert seeds, "the policy engineer's seed policies are expected in tests/data/policies/seed"
    raw = make_initdata(make_envelope([signing_key(ED)], policies=seeds))
    verified = run(raw, config())
    assert [p.name for p in verified.policies] == [p.name for p in seeds]  # type: ignore[attr-defined]


def test_agent_settings_are_carried() -> None:
    raw = make_initdata(make_envelope([signing_key(ED)], agent={"log_level": "debug", "ports": [1, 2]}))
    verified = run(raw, config())
    assert dict(verified.agent_settings) == {"log_level": "debug", "ports": [1, 2]}  # type: ignore[attr-defined]


# --- measurement ------------------------------------------------------------------------------------------


def test_tampered_initdata_one_byte_is_a_mismatch() -> None:
    raw = (HERE / "initdata-v1.toml").read_bytes()
    original = document_of(raw)
    sources = measured(original, Tee.TDX)
    position = raw.index(b"[token_configs]") + len(b"[token_config")
    tampered = raw[:position] + b"z" + raw[position + 1 :]
    assert len(tampered) == len(raw)
    with pytest.raises(MeasurementMismatch) as caught:
        gate_initdata(document_of(tampered), config(), sources=sources, now=FIXTURE_NOW)
    assert caught.value.origin == "test tdx"
    assert caught.value.field == "MRCONFIGID"
    assert original.digest_hex in str(caught.value)


def test_every_single_bit_flip_is_refused() -> None:
    raw = (HERE / "initdata-v1.toml").read_bytes()
    sources = measured(document_of(raw), Tee.SNP)
    for position in range(0, len(raw), 23):
        flipped = bytearray(raw)
        flipped[position] ^= 0x01
        with pytest.raises(GateError):
            gate_initdata(document_of(bytes(flipped)), config(), sources=sources, now=FIXTURE_NOW)


def test_sample_refused_unless_allowed() -> None:
    raw = (HERE / "initdata-v1.toml").read_bytes()
    with pytest.raises(InsecureSourceRefused, match="insecure_allow_sample is not set"):
        gate_initdata(document_of(raw), config(), sources=[SampleSource()], now=FIXTURE_NOW)
    verified = gate_initdata(
        document_of(raw), config(insecure_allow_sample=True), sources=[SampleSource()], now=FIXTURE_NOW
    )
    assert verified.insecure is True
    assert verified.tee is None
    assert verified.status_line().startswith("INSECURE")


def test_vtpm_needs_a_sha256_initdata() -> None:
    raw = make_initdata(make_envelope([signing_key(ED)]), algorithm=HashAlgorithm.SHA384)
    document = document_of(raw)
    any_pcr = [GivenMeasurementSource(Tee.VTPM, b"\0" * 32)]
    with pytest.raises(UnsupportedAlgorithm, match="vTPM binding needs a sha256"):
        gate_initdata(document, config(), sources=any_pcr, now=FIXTURE_NOW)
    assert run(raw, config(), tee=Tee.TDX).tee == "tdx"  # type: ignore[attr-defined]


def test_measurement_is_checked_before_signatures() -> None:
    raw = make_initdata(make_envelope([signing_key(P384)]))  # signed by a key not trusted below
    other = document_of(make_initdata(None))
    with pytest.raises(MeasurementMismatch):
        gate_initdata(document_of(raw), config(trust_dir=KEYS / "absent"), sources=measured(other), now=FIXTURE_NOW)


# --- signatures and trust modes ------------------------------------------------------------------------


def test_missing_bundle() -> None:
    with pytest.raises(MalformedBundle, match=r"data\.warden\.bundle: missing"):
        run(make_initdata(None), config())


def test_wrong_key_and_threshold(tmp_path: Path) -> None:
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    (trust_dir / "ed.pem").write_bytes(public_pem(ED))
    (trust_dir / "p256.pem").write_bytes(public_pem(P256))
    raw = make_initdata(make_envelope([signing_key(P384)]))
    with pytest.raises(SignatureThresholdNotMet, match=r"0 of the 2 key\(s\) in .*trust signed, 1 required"):
        run(raw, config(trust_dir=trust_dir))
    raw = make_initdata(make_envelope([signing_key(ED)]))
    assert run(raw, config(trust_dir=trust_dir)).bundle_version == 1  # type: ignore[attr-defined]
    with pytest.raises(SignatureThresholdNotMet, match="1 of the 2 key"):
        run(raw, config(trust_dir=trust_dir, threshold=2))


def test_initdata_carried_keys(tmp_path: Path) -> None:
    empty = tmp_path / "no-image-keys"
    raw = make_initdata(make_envelope([signing_key(P384)]), trust_pems=[public_pem(P384)])
    verified = run(raw, config(trust_dir=empty, trust_modes=(TrustMode.INITDATA,)))
    assert verified.trust_mode is TrustMode.INITDATA  # type: ignore[attr-defined]
    # Only image keys allowed: warden.trust is ignored, and the image keys did not sign.
    image_only = tmp_path / "image"
    image_only.mkdir()
    (image_only / "ed.pem").write_bytes(public_pem(ED))
    with pytest.raises(SignatureThresholdNotMet):
        run(raw, config(trust_dir=image_only, trust_modes=(TrustMode.IMAGE,)))
    # Only initdata keys allowed, and the initdata carries none.
    with pytest.raises(TrustModeRefused, match=r"warden\.trust: absent"):
        run(make_initdata(make_envelope([signing_key(ED)])), config(trust_modes=(TrustMode.INITDATA,)))


# --- version, expiry, rollback -----------------------------------------------------------------------------


def test_expired() -> None:
    raw = make_initdata(make_envelope([signing_key(ED)], expires=datetime(2026, 1, 1, tzinfo=UTC)))
    with pytest.raises(BundleExpired, match=r"payload\.expires: expired at 2026-01-01T00:00:00Z"):
        run(raw, config(), now=datetime(2026, 1, 1, tzinfo=UTC))  # at the instant of expiry
    assert run(raw, config(), now=datetime(2025, 12, 31, 23, 59, tzinfo=UTC))


def test_signatures_are_checked_before_expiry(tmp_path: Path) -> None:
    (tmp_path / "ed.pem").write_bytes(public_pem(ED))
    raw = make_initdata(make_envelope([signing_key(P384)], expires=datetime(2020, 1, 1, tzinfo=UTC)))
    with pytest.raises(SignatureThresholdNotMet):
        run(raw, config(trust_dir=tmp_path))


def test_rollback_rules(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    v2 = make_initdata(make_envelope([signing_key(ED)], version=2))
    assert run(v2, cfg).bundle_version == 2  # type: ignore[attr-defined]
    state_file = tmp_path / "state" / STATE_FILE_NAME
    assert stat.S_IMODE(os.stat(state_file).st_mode) == 0o600
    assert json.loads(state_file.read_text())["version"] == 2

    assert run(v2, cfg).bundle_version == 2  # type: ignore[attr-defined]  # identical bundle again: fine

    v1 = make_initdata(make_envelope([signing_key(ED)], version=1))
    with pytest.raises(RollbackRefused, match="version 1 is older than version 2"):
        run(v1, cfg)

    v2_other = make_initdata(make_envelope([signing_key(ED)], version=2, agent={"changed": True}))
    with pytest.raises(RollbackRefused, match="already accepted in this boot with different content"):
        run(v2_other, cfg)

    v3 = make_initdata(make_envelope([signing_key(ED)], version=3))
    assert run(v3, cfg).bundle_version == 3  # type: ignore[attr-defined]
    assert json.loads(state_file.read_text())["version"] == 3


def test_refused_bundle_does_not_move_the_state(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    run(make_initdata(make_envelope([signing_key(ED)], version=5)), cfg)
    expired = make_initdata(make_envelope([signing_key(ED)], version=9, expires=FIXTURE_NOW))
    with pytest.raises(BundleExpired):
        run(expired, cfg)
    state = json.loads((tmp_path / "state" / STATE_FILE_NAME).read_text())
    assert state["version"] == 5


def test_corrupt_state_fails_closed(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / STATE_FILE_NAME).write_text("{not json")
    with pytest.raises(RollbackStateError, match="not JSON"):
        run(make_initdata(make_envelope([signing_key(ED)])), cfg)
    (tmp_path / "state" / STATE_FILE_NAME).write_text('{"version": 0, "digest": "x"}')
    with pytest.raises(RollbackStateError, match="version"):
        run(make_initdata(make_envelope([signing_key(ED)])), cfg)


# --- policy validation ----------------------------------------------------------------------------------------


def test_invalid_policy_is_refused_with_one_line() -> None:
    bad = PolicyFile(
        "bad.yaml",
        "apiVersion: security.kubearmor.com/v1\nkind: KubeArmorPolicy\nmetadata:\n  name: bad\n"
        "spec:\n  selector:\n    matchLabels: {}\n  file:\n    matchPaths:\n      - path: relative/path\n"
        "  action: Explode\n",
    )
    raw = make_initdata(make_envelope([signing_key(ED)], policies=[bad]))
    with pytest.raises(PolicyInvalid) as caught:
        run(raw, config())
    assert caught.value.field == "payload.policies[0] (bad.yaml)"
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("initdata.toml data.warden.bundle: payload.policies[0] (bad.yaml): bad.yaml:")
    assert len(caught.value.details) >= 2  # the path and the action are both wrong


def test_duplicate_policy_names_across_files() -> None:
    text = (HERE / "policies" / "block-shadow.yaml").read_text()
    raw = make_initdata(
        make_envelope([signing_key(ED)], policies=[PolicyFile("a.yaml", text), PolicyFile("b.yaml", text)])
    )
    with pytest.raises(PolicyInvalid, match=r"duplicate KubeArmorPolicy name 'block-shadow'; first in a\.yaml"):
        run(raw, config())


# --- updates ------------------------------------------------------------------------------------------------


def test_updates(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    current = run(make_initdata(make_envelope([signing_key(ED)], version=4)), cfg)
    same = make_envelope([signing_key(ED)], version=4).to_json()
    assert gate_update(same, current, cfg, origin="cdh", now=FIXTURE_NOW) is current  # type: ignore[arg-type]

    newer = make_envelope([signing_key(ED)], version=5).to_json()
    updated = gate_update(newer, current, cfg, origin="cdh:warden/bundle/latest", now=FIXTURE_NOW)  # type: ignore[arg-type]
    assert updated.bundle_version == 5
    assert updated.tee == "snp"

    with pytest.raises(RollbackRefused):
        gate_update(make_envelope([signing_key(ED)], version=3).to_json(), updated, cfg, origin="f", now=FIXTURE_NOW)
    with pytest.raises(SignatureThresholdNotMet):  # image keys were bound at boot: only ED was used
        gate_update(
            make_envelope([signing_key(P384)], version=6).to_json(),
            updated.__class__(**{**updated.__dict__, "trust_keys": updated.trust_keys[:1]}),
            cfg,
            origin="f",
            now=FIXTURE_NOW,
        )
    expired = make_envelope([signing_key(ED)], version=7, expires=FIXTURE_NOW - timedelta(days=1)).to_json()
    with pytest.raises(BundleExpired):
        gate_update(expired, updated, cfg, origin="f", now=FIXTURE_NOW)


def test_start_gate_finds_the_initdata_and_runs_the_configured_sources(tmp_path: Path) -> None:
    given = tmp_path / "initdata.toml"
    given.write_bytes((HERE / "initdata-v1.toml").read_bytes())
    cfg = config(tmp_path, measurement_sources=("sample",), insecure_allow_sample=True)
    verified = start_gate(WardenConfig(gate=cfg, initdata=given, state_dir=tmp_path / "run"), now=FIXTURE_NOW)
    assert verified.initdata_origin == str(given)
    assert verified.insecure is True
    assert (tmp_path / "state" / STATE_FILE_NAME).exists()


def test_the_baseline_is_read_from_the_image_and_verified_with_its_trust_dir(tmp_path: Path) -> None:
    (tmp_path / "trust").mkdir()
    (tmp_path / "trust" / "ed.pem").write_bytes(public_pem(ED))
    baseline = tmp_path / "baseline.bundle.json"
    baseline.write_bytes(make_envelope([signing_key(ED)], version=3).to_json())
    warden = WardenConfig(gate=config(tmp_path, trust_dir=tmp_path / "trust"), baseline_bundle=baseline)
    assert read_baseline(warden, now=FIXTURE_NOW).payload.version == 3
    assert not (tmp_path / "state").exists()  # the baseline is not this boot's policy: no rollback record
    baseline.write_bytes(make_envelope([signing_key(P384)], version=3).to_json())
    with pytest.raises(SignatureThresholdNotMet):
        read_baseline(warden, now=FIXTURE_NOW)
