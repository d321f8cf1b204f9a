"""Hypothesis fuzzing: hostile bytes into every parser of untrusted input.

The property: a parser either returns or raises a GateError subclass. Anything else (KeyError,
UnicodeError, RecursionError, MemoryError...) would become a traceback or, worse, an accepted input.
"""

from __future__ import annotations

import base64
import gzip
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.aa import measurement_from_evidence
from attest.snp import hostdata_from_report
from attest.tdx import mrconfigid_from_quote
from initdata.bundle import parse_payload
from initdata.document import parse_initdata
from initdata.dsse import parse_envelope, verify_envelope
from initdata.encoding import decode_annotation, decode_any, decode_image, encode_image
from initdata.errors import GateError
from initdata.keys import TrustStore, load_public_key_pem, load_public_keys_pem
from supervisor.config import parse_gate_config
from tests.data.initdata.factory import HERE, make_envelope, public_pem, signing_key

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIXTURE_TOML = (HERE / "initdata-v1.toml").read_bytes()
FIXTURE_ENVELOPE = (HERE / "bundle-v1.json").read_bytes()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def mutate(data: bytes, positions: list[int], values: list[int]) -> bytes:
    out = bytearray(data)
    for position, value in zip(positions, values, strict=False):
        if out:
            out[position % len(out)] = value
    return bytes(out)


def only_gate_errors(func: object, *args: object, **kwargs: object) -> None:
    try:
        func(*args, **kwargs)  # type: ignore[operator]
    except GateError as exc:
        assert "\n" not in str(exc)  # always one line


@FUZZ
@given(st.binary(max_size=2048))
def test_initdata_toml_bytes(raw: bytes) -> None:
    only_gate_errors(parse_initdata, raw, origin="fuzz")


@FUZZ
@given(st.text(max_size=512))
def test_initdata_toml_text(text: str) -> None:
    only_gate_errors(parse_initdata, text.encode("utf-8", errors="surrogatepass"), origin="fuzz")


@FUZZ
@given(st.lists(st.integers(0, 10**6), max_size=6), st.lists(st.integers(0, 255), max_size=6))
def test_mutated_initdata(positions: list[int], values: list[int]) -> None:
    only_gate_errors(parse_initdata, mutate(FIXTURE_TOML, positions, values), origin="fuzz")


@FUZZ
@given(st.text(max_size=512))
def test_annotation_text(text: str) -> None:
    only_gate_errors(decode_annotation, text, origin="fuzz")


@FUZZ
@given(st.binary(max_size=512))
def test_annotation_of_arbitrary_gzip_input(payload: bytes) -> None:
    value = base64.b64encode(gzip.compress(payload)).decode()
    decoded = decode_annotation(value)
    assert decoded == payload
    only_gate_errors(parse_initdata, decoded, origin="fuzz")


@FUZZ
@given(st.lists(st.integers(0, 10**6), max_size=6), st.lists(st.integers(0, 255), max_size=6))
def test_mutated_gzip_and_image(positions: list[int], values: list[int]) -> None:
    image = encode_image(FIXTURE_TOML[:300])
    only_gate_errors(decode_image, mutate(image, positions, values), origin="fuzz")
    compressed = gzip.compress(FIXTURE_TOML[:300])
    only_gate_errors(decode_annotation, base64.b64encode(mutate(compressed, positions, values)), origin="fuzz")


@FUZZ
@given(st.binary(max_size=1024))
def test_any_encoding(raw: bytes) -> None:
    only_gate_errors(decode_any, raw, origin="fuzz")
    only_gate_errors(decode_any, b"initdata" + raw, origin="fuzz")


@FUZZ
@given(st.binary(max_size=1024))
def test_envelope_bytes(raw: bytes) -> None:
    only_gate_errors(parse_envelope, raw, origin="fuzz")


@FUZZ
@given(json_values)
def test_envelope_json_shapes(value: object) -> None:
    only_gate_errors(parse_envelope, json.dumps(value).encode(), origin="fuzz")
    if isinstance(value, dict):
        shaped = {"payloadType": "t", "payload": "e30=", "signatures": [value]}
        only_gate_errors(parse_envelope, json.dumps(shaped).encode(), origin="fuzz")


@FUZZ
@given(st.lists(st.integers(0, 10**6), max_size=4), st.lists(st.integers(0, 255), max_size=4))
def test_mutated_envelope_never_verifies_with_a_changed_payload(positions: list[int], values: list[int]) -> None:
    trust = TrustStore.from_keys([load_public_key_pem(public_pem("owner-ed25519"), origin="k")], origin="t")
    original = parse_envelope(FIXTURE_ENVELOPE, origin="fixture")
    try:
        envelope = parse_envelope(mutate(FIXTURE_ENVELOPE, positions, values), origin="fuzz")
        verify_envelope(envelope, trust, 1, origin="fuzz")
    except GateError:
        return
    # Verified: then the signed content must be exactly the original.
    assert envelope.payload == original.payload
    assert envelope.payload_type == original.payload_type


@FUZZ
@given(json_values)
def test_payload_json_shapes(value: object) -> None:
    only_gate_errors(parse_payload, json.dumps(value).encode(), origin="fuzz")
    base = {"version": 1, "expires": "2030-01-01T00:00:00Z", "policies": [{"name": "a.yaml", "text": "x"}]}
    for key in ("version", "expires", "policies", "bpf_objects", "agent"):
        only_gate_errors(parse_payload, json.dumps({**base, key: value}).encode(), origin="fuzz")


@FUZZ
@given(st.binary(max_size=1024))
def test_payload_bytes(raw: bytes) -> None:
    only_gate_errors(parse_payload, raw, origin="fuzz")


@FUZZ
@given(st.binary(max_size=2048))
def test_evidence_and_reports(raw: bytes) -> None:
    only_gate_errors(measurement_from_evidence, raw, origin="fuzz", source="aa")
    only_gate_errors(mrconfigid_from_quote, raw, origin="fuzz")
    only_gate_errors(hostdata_from_report, raw, origin="fuzz")
    for key in ("quote", "attestation_report"):
        document = {key: base64.b64encode(raw).decode()}
        only_gate_errors(measurement_from_evidence, json.dumps(document).encode(), origin="fuzz", source="aa")


@FUZZ
@given(json_values)
def test_evidence_json_shapes(value: object) -> None:
    for key in ("quote", "attestation_report", "svn"):
        document = {key: value, "report_data": value}
        only_gate_errors(measurement_from_evidence, json.dumps(document).encode(), origin="fuzz", source="aa")


@FUZZ
@given(st.binary(max_size=1024))
def test_pem_bytes(raw: bytes) -> None:
    only_gate_errors(load_public_keys_pem, raw, origin="fuzz")
    only_gate_errors(load_public_keys_pem, b"-----BEGIN PUBLIC KEY-----\n" + raw, origin="fuzz")


@FUZZ
@given(st.dictionaries(st.sampled_from(["threshold", "trust_modes", "trust_dir", "state_dir",
                                        "measurement_sources", "insecure_allow_sample",
                                        "attestation_agent_url", "attestation_agent_timeout", "other"]),
                       json_values, max_size=4))
def test_config_mappings(mapping: dict[str, object]) -> None:
    only_gate_errors(parse_gate_config, mapping, origin="fuzz")


def test_fuzz_harness_sees_real_acceptance() -> None:
    """The properties above are not vacuous: valid inputs pass through the same functions."""
    assert parse_initdata(FIXTURE_TOML, origin="fixture").data["warden.bundle"]
    envelope = make_envelope([signing_key("owner-ed25519")])
    assert parse_envelope(envelope.to_json(), origin="e") == envelope
