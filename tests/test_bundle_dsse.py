"""DSSE envelopes, trust keys and the bundle payload: PAE, threshold rules, payload validation."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from initdata.bundle import PolicyFile, build_payload, parse_expiry_argument, parse_payload, parse_rfc3339
from initdata.dsse import (
    BUNDLE_PAYLOAD_TYPE,
    MAX_ENVELOPE_BYTES,
    Envelope,
    Signature,
    pae,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from initdata.errors import (
    InputTooLarge,
    MalformedBundle,
    SignatureThresholdNotMet,
    TrustStoreError,
    UnsupportedPayloadType,
)
from initdata.keys import (
    KeyAlgorithm,
    TrustStore,
    generate_signing_key,
    load_public_key_pem,
    load_public_keys_pem,
    load_signing_key_pem,
    load_trust_dir,
)
from tests.data.initdata.factory import KEYS, make_envelope, public_pem, signing_key

ED = "owner-ed25519"
P256 = "owner-p256"
P384 = "owner-p384"


def trust(*names: str) -> TrustStore:
    keys = [load_public_key_pem(public_pem(n), origin=n) for n in names]
    return TrustStore.from_keys(keys, origin="test trust")


# --- PAE ----------------------------------------------------------------------------------------------


def test_pae_matches_the_dsse_spec_examples() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("application/vnd.in-toto+json", b"") == b"DSSEv1 28 application/vnd.in-toto+json 0 "
    # Lengths count UTF-8 bytes, not characters.
    assert pae("é", b"\xff") == b"DSSEv1 2 \xc3\xa9 1 \xff"


# --- signing and verifying ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [ED, P256, P384])
def test_each_key_type_signs_and_verifies(name: str) -> None:
    envelope = sign_envelope(b'{"x":1}', BUNDLE_PAYLOAD_TYPE, [signing_key(name)])
    signers = verify_envelope(envelope, trust(ED, P256, P384), 1, origin="b.json")
    assert [s.keyid for s in signers] == [signing_key(name).public.keyid]


def test_envelope_json_round_trip() -> None:
    envelope = make_envelope([signing_key(ED), signing_key(P256)])
    parsed = parse_envelope(envelope.to_json(), origin="b.json")
    assert parsed == envelope
    assert len(verify_envelope(parsed, trust(ED, P256), 2, origin="b.json")) == 2


def test_tampered_payload_fails() -> None:
    envelope = make_envelope([signing_key(ED)])
    tampered = replace(envelope, payload=envelope.payload.replace(b'"version":1', b'"version":9'))
    assert tampered.payload != envelope.payload
    with pytest.raises(SignatureThresholdNotMet, match="0 of the 1 key"):
        verify_envelope(tampered, trust(ED), 1, origin="b.json")


def test_changed_payload_type_fails_the_signature() -> None:
    envelope = make_envelope([signing_key(ED)])
    with pytest.raises(SignatureThresholdNotMet):
        verify_envelope(replace(envelope, payload_type="text/plain"), trust(ED), 1, origin="b.json")


def test_wrong_key() -> None:
    envelope = make_envelope([signing_key(P384)])
    with pytest.raises(SignatureThresholdNotMet) as caught:
        verify_envelope(envelope, trust(ED, P256), 1, origin="bundle.json")
    assert str(caught.value) == (
        "bundle.json: signatures: 0 of the 2 key(s) in test trust signed, 1 required"
    )


def test_threshold_not_met() -> None:
    envelope = make_envelope([signing_key(ED), signing_key(P256)])
    assert len(verify_envelope(envelope, trust(ED, P256, P384), 2, origin="b")) == 2
    with pytest.raises(SignatureThresholdNotMet, match=r"2 of the 3 key.*3 required"):
        verify_envelope(envelope, trust(ED, P256, P384), 3, origin="b")


def test_duplicate_signatures_from_one_key_count_once() -> None:
    """DSSE vector "threshold-two-one-key-twice": one key signing twice does not meet t=2."""
    key = signing_key(P256)  # ECDSA: two different signatures from one key
    envelope = sign_envelope(b"{}", BUNDLE_PAYLOAD_TYPE, [key, key])
    assert envelope.signatures[0].sig != envelope.signatures[1].sig
    with pytest.raises(SignatureThresholdNotMet, match="1 of the 2 key"):
        verify_envelope(envelope, trust(P256, ED), 2, origin="b")
    # The same signature repeated under different keyids fares no better.
    one = sign_envelope(b"{}", BUNDLE_PAYLOAD_TYPE, [signing_key(ED)]).signatures[0]
    forged = Envelope(b"{}", BUNDLE_PAYLOAD_TYPE, (one, Signature(keyid=trust(P256).keys[0].keyid, sig=one.sig)))
    with pytest.raises(SignatureThresholdNotMet):
        verify_envelope(forged, trust(ED, P256), 2, origin="b")


def test_same_key_in_two_trust_files_is_one_key(tmp_path: Path) -> None:
    (tmp_path / "a.pem").write_bytes(public_pem(ED))
    (tmp_path / "copy-of-a.pem").write_bytes(public_pem(ED))
    store = load_trust_dir(tmp_path)
    assert len(store.keys) == 1
    envelope = make_envelope([signing_key(ED)])
    with pytest.raises(TrustStoreError, match="threshold: 2 can never be met by the 1 distinct key"):
        verify_envelope(envelope, store, 2, origin="b")


def test_keyid_decides_nothing() -> None:
    envelope = make_envelope([signing_key(ED)])
    lying = replace(envelope, signatures=(Signature(keyid="not-a-real-keyid", sig=envelope.signatures[0].sig),))
    assert len(verify_envelope(lying, trust(ED), 1, origin="b")) == 1


def test_unsupported_payload_type_is_refused_after_signatures() -> None:
    envelope = make_envelope([signing_key(ED)], payload_type="application/vnd.in-toto+json")
    with pytest.raises(UnsupportedPayloadType, match=r"payloadType: 'application/vnd.in-toto\+json' is not"):
        verify_envelope(envelope, trust(ED), 1, origin="b")


def test_url_safe_and_unpadded_base64_are_accepted() -> None:
    envelope = make_envelope([signing_key(ED)])
    document = json.loads(envelope.to_json())
    document["payload"] = base64.urlsafe_b64encode(envelope.payload).decode().rstrip("=")
    document["signatures"][0]["sig"] = base64.urlsafe_b64encode(envelope.signatures[0].sig).decode().rstrip("=")
    parsed = parse_envelope(json.dumps(document).encode(), origin="b")
    assert parsed.payload == envelope.payload
    assert len(verify_envelope(parsed, trust(ED), 1, origin="b")) == 1


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ("[]", "envelope"),
        ("{", "envelope"),
        ('{"payload": "e30=", "signatures": [{"sig": "AA=="}]}', "payloadType"),
        ('{"payloadType": "t", "signatures": [{"sig": "AA=="}]}', "payload"),
        ('{"payloadType": "t", "payload": "e30=", "signatures": []}', "signatures"),
        ('{"payloadType": "t", "payload": "e30=", "signatures": [{}]}', "signatures[0]"),
        ('{"payloadType": "t", "payload": "e30=", "signatures": [{"sig": "!!"}]}', "signatures[0].sig"),
        ('{"payloadType": "t", "payload": "e30=", "signatures": [{"sig": ""}]}', "signatures[0].sig"),
        ('{"payloadType": "t", "payload": "e30=", "signatures": [{"sig": "AA==", "keyid": 1}]}',
         "signatures[0].keyid"),
        ('{"payloadType": "t", "payload": "e$0=", "signatures": [{"sig": "AA=="}]}', "payload"),
        ('{"payloadType": "t", "payload": "e30=", "signatures": [{"sig": "AA=="}], "x": 1}', "x"),
    ],
)
def test_malformed_envelopes(document: str, field: str) -> None:
    with pytest.raises(MalformedBundle) as caught:
        parse_envelope(document.encode(), origin="bundle.json")
    assert caught.value.field == field
    assert str(caught.value).startswith(f"bundle.json: {field}: ")


def test_oversized_envelope_and_too_many_signatures() -> None:
    with pytest.raises(InputTooLarge, match="envelope"):
        parse_envelope(b" " * (MAX_ENVELOPE_BYTES + 1), origin="b")
    many = {"payloadType": "t", "payload": "e30=", "signatures": [{"sig": "AA=="}] * 17}
    with pytest.raises(InputTooLarge, match="signatures: 17 exceeds the limit of 16"):
        parse_envelope(json.dumps(many).encode(), origin="b")


# --- keys ------------------------------------------------------------------------------------------------


def test_key_loading_errors() -> None:
    with pytest.raises(TrustStoreError, match="not a PEM public key"):
        load_public_key_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", origin="k.pem")
    with pytest.raises(TrustStoreError, match="no PEM public key found"):
        load_public_keys_pem(b"hello", origin="warden.trust")
    rsa_pem = (
        b"-----BEGIN PUBLIC KEY-----\n"
        b"MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAMvzXSTiPe0ZNdnnqRUbuqxl0iYCxHz7\n"
        b"VJdZP9y/fm4NnNNuRBWoAe6+PdOYpUWEn6qVmtwrrH6BlFwg4UdVdkECAwEAAQ==\n"
        b"-----END PUBLIC KEY-----\n"
    )
    with pytest.raises(TrustStoreError, match="RSAPublicKey keys are not supported"):
        load_public_key_pem(rsa_pem, origin="rsa.pem")
    with pytest.raises(TrustStoreError, match="private key"):
        load_signing_key_pem(public_pem(ED), origin="k.pem")


def test_pem_bundle_with_several_keys() -> None:
    keys = load_public_keys_pem(public_pem(ED) + b"\n" + public_pem(P384), origin="warden.trust")
    assert [k.algorithm for k in keys] == [KeyAlgorithm.ED25519, KeyAlgorithm.ECDSA_P384]


def test_trust_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(TrustStoreError, match="does not exist"):
        load_trust_dir(tmp_path / "absent")
    with pytest.raises(TrustStoreError, match="holds no"):
        load_trust_dir(tmp_path)
    (tmp_path / "bad.pem").write_text("garbage")
    with pytest.raises(TrustStoreError) as caught:
        load_trust_dir(tmp_path)
    assert caught.value.origin == str(tmp_path / "bad.pem")
    assert len(load_trust_dir(KEYS).keys) == 3  # the *.key files next to them are ignored


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_generated_keys_round_trip(algorithm: KeyAlgorithm) -> None:
    private_pem, pub = generate_signing_key(algorithm)
    key = load_signing_key_pem(private_pem, origin="new.key")
    assert key.public == load_public_key_pem(pub, origin="new.pem")
    assert key.public.algorithm is algorithm


# --- payload ---------------------------------------------------------------------------------------------


def _payload(**changes: object) -> bytes:
    document: dict[str, object] = {
        "version": 3,
        "expires": "2030-01-01T00:00:00Z",
        "policies": [{"name": "a.yaml", "text": "kind: KubeArmorPolicy\n"}],
        "bpf_objects": {"warden.bpf.o": "sha256:" + "0" * 64},
    }
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


def test_payload_fields() -> None:
    payload = parse_payload(_payload(agent={"log": "debug"}), origin="b")
    assert payload.version == 3
    assert payload.expires == datetime(2030, 1, 1, tzinfo=UTC)
    assert payload.policies == (PolicyFile("a.yaml", "kind: KubeArmorPolicy\n"),)
    assert dict(payload.bpf_objects) == {"warden.bpf.o": "sha256:" + "0" * 64}
    assert dict(payload.agent) == {"log": "debug"}
    assert payload.digest.startswith("sha256:")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"version": 0}, "payload.version"),
        ({"version": True}, "payload.version"),
        ({"version": "3"}, "payload.version"),
        ({"version": 2**63}, "payload.version"),
        ({"expires": "2030-01-01"}, "payload.expires"),
        ({"expires": "2030-01-01T00:00:00"}, "payload.expires"),  # no zone: ambiguous
        ({"expires": "2030-13-01T00:00:00Z"}, "payload.expires"),
        ({"policies": []}, "payload.policies"),
        ({"policies": [{"name": "../x.yaml", "text": "a"}]}, "payload.policies[0].name"),
        ({"policies": [{"name": "a.yaml", "text": " "}]}, "payload.policies[0].text"),
        ({"policies": [{"name": "a.yaml", "text": "a", "x": 1}]}, "payload.policies[0]"),
        ({"policies": [{"name": "a.yaml", "text": "a"}, {"name": "a.yaml", "text": "b"}]},
         "payload.policies[1].name"),
        ({"bpf_objects": {"x.o": "md5:00"}}, "payload.bpf_objects.x.o"),
        ({"bpf_objects": []}, "payload.bpf_objects"),
        ({"agent": []}, "payload.agent"),
        ({"surprise": 1}, "payload.surprise"),
    ],
)
def test_payload_errors(changes: dict[str, object], field: str) -> None:
    with pytest.raises(MalformedBundle) as caught:
        parse_payload(_payload(**changes), origin="bundle.json")
    assert caught.value.field == field


def test_payload_not_json() -> None:
    with pytest.raises(MalformedBundle, match="payload: not JSON"):
        parse_payload(b"\xff", origin="b")
    with pytest.raises(MalformedBundle, match="must be a JSON object"):
        parse_payload(b"[1]", origin="b")


def test_rfc3339_forms() -> None:
    assert parse_rfc3339("2030-01-01T01:00:00+01:00", origin="o", field="f") == datetime(2030, 1, 1, tzinfo=UTC)
    nanos = parse_rfc3339("2030-01-01t00:00:00.123456789z", origin="o", field="f")
    assert nanos.microsecond == 123456
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_expiry_argument("+30d", now=now) == now + timedelta(days=30)
    assert parse_expiry_argument("+12h", now=now) == now + timedelta(hours=12)


def test_build_payload_is_canonical_and_valid() -> None:
    kwargs: dict[str, object] = {
        "version": 1,
        "expires": datetime(2030, 1, 1, tzinfo=UTC),
        "policies": [PolicyFile("a.yaml", "x: 1\n")],
    }
    first = build_payload(**kwargs)  # type: ignore[arg-type]
    assert first == build_payload(**kwargs)  # type: ignore[arg-type]
    assert b" " not in first.replace(b"x: 1", b"")
    with pytest.raises(MalformedBundle):
        build_payload(version=0, expires=datetime(2030, 1, 1, tzinfo=UTC), policies=[PolicyFile("a.yaml", "x")])


def test_too_many_policy_files() -> None:
    policies = [{"name": f"p{i}.yaml", "text": "x"} for i in range(257)]
    with pytest.raises(InputTooLarge, match=r"payload\.policies: 257 files exceeds the limit of 256"):
        parse_payload(_payload(policies=policies), origin="b")
