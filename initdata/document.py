"""The CoCo initdata document: parse it, hash it, write it.

The digest is the document's hash algorithm over the document's *exact bytes*
(trustee kbs/docs/initdata.md; kata-agent, attestation-agent and the Kata Go runtime all hash the
TOML text as delivered). So we keep the raw bytes next to the parsed fields and never re-serialise a
parsed document for hashing: one changed space is a different measurement.
"""

from __future__ import annotations

import enum
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from initdata.errors import InputTooLarge, MalformedInitdata, UnsupportedAlgorithm

INITDATA_VERSION = "0.1.0"  # kata-types validate() rejects every other version
# A pod annotation is bounded by Kubernetes (256 KiB for all annotations); 1 MiB of decompressed
# TOML leaves room for
# peer-pod user-data and is still cheap to hash and parse.
MAX_INITDATA_BYTES = 1 << 20
TOP_LEVEL_KEYS = frozenset({"version", "algorithm", "data"})
# The `[data]` keys warden reads: the signed policy bundle (a DSSE envelope) and, for the `initdata`
# trust mode, the PEM public keys that may sign it.
BUNDLE_KEY = "warden.bundle"
TRUST_KEY = "warden.trust"


class HashAlgorithm(enum.StrEnum):
    """The `algorithm` values Kata and the attestation-agent both accept (sm3 is AA-only, so refused)."""

    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    @property
    def digest_size(self) -> int:
        return hashlib.new(self.value).digest_size

    def hash(self, data: bytes) -> bytes:
        return hashlib.new(self.value, data).digest()

    @classmethod
    def parse(cls, value: object, *, origin: str, field: str = "algorithm") -> HashAlgorithm:
        if isinstance(value, str):
            for member in cls:
                if member.value == value:
                    return member
        allowed = ", ".join(m.value for m in cls)
        raise UnsupportedAlgorithm(origin, field, f"unsupported {value!r} (expected one of {allowed})")


@dataclass(frozen=True)
class InitdataDocument:
    """A parsed initdata document. `raw` is what was measured; the other fields are read from it."""

    raw: bytes
    origin: str
    version: str
    algorithm: HashAlgorithm
    data: Mapping[str, str] = field(hash=False)

    @property
    def digest(self) -> bytes:
        return self.algorithm.hash(self.raw)

    @property
    def digest_hex(self) -> str:
        return self.digest.hex()


def _one_line(message: str) -> str:
    return " ".join(message.split())


def parse_initdata(raw: bytes, *, origin: str) -> InitdataDocument:
    """Parse initdata TOML bytes. Raises MalformedInitdata / UnsupportedAlgorithm / InputTooLarge."""
    if len(raw) > MAX_INITDATA_BYTES:
        raise InputTooLarge(origin, "document", f"{len(raw)} bytes exceeds the {MAX_INITDATA_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedInitdata(origin, "document", f"not UTF-8 at byte {exc.start}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MalformedInitdata(origin, "toml", _one_line(str(exc))) from None
    except (RecursionError, ValueError) as exc:  # pathological nesting; tomllib does not bound it itself
        raise MalformedInitdata(origin, "toml", f"cannot parse: {type(exc).__name__}") from None

    unknown = sorted(set(table) - TOP_LEVEL_KEYS)
    if unknown:
        raise MalformedInitdata(origin, unknown[0], "unknown top-level key (expected version, algorithm, [data])")
    for key in ("version", "algorithm", "data"):
        if key not in table:
            raise MalformedInitdata(origin, key, "missing")
    version = table["version"]
    if version != INITDATA_VERSION:
        raise MalformedInitdata(origin, "version", f"{version!r} is not the supported {INITDATA_VERSION!r}")
    algorithm = HashAlgorithm.parse(table["algorithm"], origin=origin)
    data = table["data"]
    if not isinstance(data, dict):
        raise MalformedInitdata(origin, "data", "must be a table of string keys to string values")
    for key, value in data.items():
        if not isinstance(value, str):
            raise MalformedInitdata(origin, f"data.{key}", f"must be a string, not a {type(value).__name__}")
    return InitdataDocument(
        raw=raw, origin=origin, version=version, algorithm=algorithm, data=MappingProxyType(dict(data))
    )


def _toml_key(key: str) -> str:
    # A JSON string literal is a valid TOML basic string (same escapes; json never emits `\/`).
    return json.dumps(key, ensure_ascii=False)


def _literal_multiline(value: str, *, origin: str, key: str) -> str:
    if "'''" in value:
        raise MalformedInitdata(origin, f"data.{key}", "contains ''' which a TOML literal string cannot hold")
    for ch in value:
        code = ord(ch)
        if (code < 0x20 and ch not in "\t\n") or code == 0x7F:
            raise MalformedInitdata(origin, f"data.{key}", f"contains control character U+{code:04X}")
    # A newline right after the opening ''' is trimmed by TOML, so the value starts on the next
    # line as CoCo writes it.
    return "'''\n" + value + "'''"


def build_initdata_toml(
    data: Mapping[str, str],
    *,
    algorithm: HashAlgorithm,
    origin: str = "initdata",
) -> bytes:
    """Write an initdata document the way CoCo's tooling does: one literal multi-line string per data key.

    The output is parsed back and compared before it is returned, so a value that TOML would read
    differently is
    refused here rather than measured and then misread in the guest.
    """
    # Same layout as Kata's own test vector (src/runtime/pkg/oci/utils_test.go), so empty values
    # reproduce it byte for byte.
    lines = [f'version = "{INITDATA_VERSION}"', f'algorithm = "{algorithm.value}"', "[data]"]
    for key in data:
        lines.append(f"{_toml_key(key)} = {_literal_multiline(data[key], origin=origin, key=key)}")
        lines.append("")
    raw = ("\n".join(lines)).encode("utf-8")
    document = parse_initdata(raw, origin=origin)
    if dict(document.data) != dict(data):
        raise MalformedInitdata(origin, "data", "a value does not survive a TOML round trip")
    return raw
