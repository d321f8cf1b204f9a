"""DSSE envelopes (secure-systems-lab/dsse protocol v1.0.0): parse, sign, verify with a threshold.

Signatures are over PAE(payloadType, payload), never over the JSON envelope, so the envelope's
encoding does not matter. Verification follows the protocol's order: signatures over PAE first,
then the payloadType, and only then does anyone parse the payload.

Threshold rule: count *distinct trusted keys* that produced at least one valid signature. Every
signature is tried against every trusted key (keyid is an unauthenticated hint and decides nothing),
so one key signing twice counts once (the "threshold-two-one-key-twice" vector).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from initdata import strict_json
from initdata.document import MAX_INITDATA_BYTES
from initdata.errors import (
    InputTooLarge,
    MalformedBundle,
    SignatureThresholdNotMet,
    UnsupportedPayloadType,
)
from initdata.keys import PublicKey, SigningKey, TrustStore

BUNDLE_PAYLOAD_TYPE = "application/vnd.coco-warden.bundle+json"
# The envelope lives inside an initdata value (or arrives from the CDH); it cannot be larger.
MAX_ENVELOPE_BYTES = MAX_INITDATA_BYTES
MAX_SIGNATURES = 16  # bounds the verify work: signatures x trusted keys
MAX_SIGNATURE_BYTES = 512
ENVELOPE_KEYS = frozenset({"payload", "payloadType", "signatures"})
_B64_STD = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_B64_URL = re.compile(rb"[A-Za-z0-9_-]*={0,2}")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSEv1 SP LEN(type) SP type SP LEN(body) SP body, lengths in bytes as ASCII decimal."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str  # a hint for people reading the envelope; never used to decide anything
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def to_json(self) -> bytes:
        document = {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")} for s in self.signatures],
        }
        return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def decode_base64_either(value: object, *, origin: str, field: str) -> bytes:
    """Standard or URL-safe base64, padded or not: DSSE verifiers MUST accept either alphabet."""
    if not isinstance(value, str):
        raise MalformedBundle(origin, field, "must be a base64 string")
    raw = value.encode("ascii", errors="replace")
    alphabet_ok = _B64_STD.fullmatch(raw) or _B64_URL.fullmatch(raw)
    if not alphabet_ok:
        raise MalformedBundle(origin, field, "is not standard or URL-safe base64")
    padded = raw.rstrip(b"=") + b"=" * (-len(raw.rstrip(b"=")) % 4)
    try:
        if b"-" in raw or b"_" in raw:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedBundle(origin, field, f"invalid base64 ({exc})") from None


def parse_envelope(data: bytes, *, origin: str) -> Envelope:
    """Envelope JSON -> Envelope. Structure only: nothing here is trusted yet."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise InputTooLarge(origin, "envelope", f"{len(data)} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit")
    document = strict_json.loads(data, origin=origin, field="envelope", error=MalformedBundle)
    if not isinstance(document, dict):
        raise MalformedBundle(origin, "envelope", "must be a JSON object")
    unknown = sorted(set(document) - ENVELOPE_KEYS)
    if unknown:
        raise MalformedBundle(origin, unknown[0], "unknown envelope field")
    payload_type = document.get("payloadType")
    if not isinstance(payload_type, str):
        raise MalformedBundle(origin, "payloadType", "missing or not a string")
    payload = decode_base64_either(document.get("payload"), origin=origin, field="payload")
    raw_signatures = document.get("signatures")
    if not isinstance(raw_signatures, list) or not raw_signatures:
        raise MalformedBundle(origin, "signatures", "missing or empty")
    if len(raw_signatures) > MAX_SIGNATURES:
        raise InputTooLarge(origin, "signatures", f"{len(raw_signatures)} exceeds the limit of {MAX_SIGNATURES}")
    signatures: list[Signature] = []
    for index, entry in enumerate(raw_signatures):
        field = f"signatures[{index}]"
        if not isinstance(entry, dict) or "sig" not in entry:
            raise MalformedBundle(origin, field, "must be an object with a 'sig'")
        keyid = entry.get("keyid", "")
        if not isinstance(keyid, str):
            raise MalformedBundle(origin, f"{field}.keyid", "must be a string")
        sig = decode_base64_either(entry["sig"], origin=origin, field=f"{field}.sig")
        if not sig or len(sig) > MAX_SIGNATURE_BYTES:
            raise MalformedBundle(origin, f"{field}.sig", f"{len(sig)} bytes is not a plausible signature")
        signatures.append(Signature(keyid=keyid, sig=sig))
    return Envelope(payload=payload, payload_type=payload_type, signatures=tuple(signatures))


def sign_envelope(payload: bytes, payload_type: str, keys: list[SigningKey]) -> Envelope:
    message = pae(payload_type, payload)
    signatures = tuple(Signature(keyid=k.public.keyid, sig=k.sign(message)) for k in keys)
    return Envelope(payload=payload, payload_type=payload_type, signatures=signatures)


def verify_envelope(
    envelope: Envelope,
    trust: TrustStore,
    threshold: int,
    *,
    origin: str,
    payload_type: str = BUNDLE_PAYLOAD_TYPE,
) -> tuple[PublicKey, ...]:
    """The distinct trusted keys that signed; raises unless there are at least `threshold` of them."""
    trust.check_threshold(threshold)
    message = pae(envelope.payload_type, envelope.payload)
    signers: list[PublicKey] = []
    for key in trust.keys:
        if any(key.verify(signature.sig, message) for signature in envelope.signatures):
            signers.append(key)
    if len(signers) < threshold:
        raise SignatureThresholdNotMet(
            origin,
            "signatures",
            f"{len(signers)} of the {len(trust.keys)} key(s) in {trust.origin} signed, {threshold} required",
        )
    if envelope.payload_type != payload_type:
        raise UnsupportedPayloadType(origin, "payloadType", f"{envelope.payload_type!r} is not {payload_type!r}")
    return tuple(signers)
