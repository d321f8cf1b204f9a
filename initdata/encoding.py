"""How initdata travels to the guest: the Kata annotation and the block-device image.

- Annotation `io.katacontainers.config.hypervisor.cc_init_data`: standard (padded) base64 of
  gzip(TOML).
- Block-device image (Kata `prepareInitdataImage`): b"initdata", u64 little-endian gzip length,
  gzip, zero padding to a multiple of 512.

How the TEE carries the digest (MRCONFIGID, HOSTDATA, PCR8) is the TEE side's business: attest.tee.

Decompression is bounded: a gzip bomb stops at the initdata size limit instead of filling memory.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import struct
import zlib

from initdata.document import MAX_INITDATA_BYTES
from initdata.errors import InputTooLarge, MalformedInitdata

ANNOTATION_KEY = "io.katacontainers.config.hypervisor.cc_init_data"
IMAGE_MAGIC = b"initdata"
IMAGE_HEADER = struct.Struct("<8sQ")
IMAGE_ALIGN = 512
# base64 of gzip of MAX_INITDATA_BYTES can in the worst case (incompressible) be ~4/3 larger plus
# gzip framing.
MAX_ANNOTATION_CHARS = (MAX_INITDATA_BYTES * 4) // 3 + 4096
MAX_IMAGE_BYTES = MAX_INITDATA_BYTES + 64 * 1024


def gunzip_bounded(blob: bytes, *, origin: str, field: str, limit: int = MAX_INITDATA_BYTES) -> bytes:
    """gunzip (all members, like Go's gzip.Reader) without ever holding more than `limit` + 1 output bytes."""
    out = bytearray()
    rest = blob
    if not rest:
        raise MalformedInitdata(origin, field, "empty gzip stream")
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        pending = rest
        while True:
            try:
                chunk = inflater.decompress(pending, limit + 1 - len(out))
            except zlib.error as exc:
                raise MalformedInitdata(origin, field, f"invalid gzip data ({exc})") from None
            out += chunk
            if len(out) > limit:
                raise InputTooLarge(origin, field, f"decompresses to more than the {limit}-byte limit")
            if inflater.eof:
                break
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                raise MalformedInitdata(origin, field, "truncated gzip stream")
        rest = inflater.unused_data
    return bytes(out)


def gzip_deterministic(data: bytes) -> bytes:
    # mtime=0 so the same TOML always gives the same annotation (the digest is over the TOML, not the gzip).
    return gzip.compress(data, compresslevel=9, mtime=0)


def encode_annotation(toml_bytes: bytes) -> str:
    return base64.b64encode(gzip_deterministic(toml_bytes)).decode("ascii")


def decode_annotation(value: str | bytes, *, origin: str = "annotation") -> bytes:
    """Annotation value -> TOML bytes. Line breaks and surrounding blanks are tolerated (`base64`
    wraps at 76)."""
    if len(value) > MAX_ANNOTATION_CHARS:
        raise InputTooLarge(origin, "annotation", f"{len(value)} characters exceeds the {MAX_ANNOTATION_CHARS} limit")
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            raise MalformedInitdata(origin, "annotation", "base64 must be ASCII") from None
    compact = b"".join(value.split())
    try:
        blob = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedInitdata(origin, "annotation", f"invalid standard base64 ({exc})") from None
    return gunzip_bounded(blob, origin=origin, field="annotation")


def encode_image(toml_bytes: bytes) -> bytes:
    blob = gzip_deterministic(toml_bytes)
    image = IMAGE_HEADER.pack(IMAGE_MAGIC, len(blob)) + blob
    padding = (-len(image)) % IMAGE_ALIGN
    return image + b"\0" * padding


def decode_image(image: bytes, *, origin: str = "initdata image") -> bytes:
    """Block-device image -> TOML bytes (what kata-agent does with the first /dev/vd* whose first 8
    bytes match)."""
    if len(image) > MAX_IMAGE_BYTES:
        raise InputTooLarge(origin, "image", f"{len(image)} bytes exceeds the {MAX_IMAGE_BYTES}-byte limit")
    if len(image) < IMAGE_HEADER.size:
        raise MalformedInitdata(origin, "header", f"{len(image)} bytes is shorter than the 16-byte header")
    magic, length = IMAGE_HEADER.unpack_from(image)
    if magic != IMAGE_MAGIC:
        raise MalformedInitdata(origin, "magic", f"expected b'initdata', found {magic!r}")
    available = len(image) - IMAGE_HEADER.size
    if length > available:
        raise MalformedInitdata(origin, "length", f"says {length} gzip bytes but only {available} follow the header")
    blob = image[IMAGE_HEADER.size : IMAGE_HEADER.size + length]
    return gunzip_bounded(blob, origin=origin, field="gzip")


def looks_like_image(data: bytes) -> bool:
    return data.startswith(IMAGE_MAGIC) and len(data) >= IMAGE_HEADER.size


def decode_any(data: bytes, *, origin: str) -> bytes:
    """TOML bytes from a file holding the TOML itself, a block-device image, gzip, or an annotation.

    Used where a person hands us a file (CLI, a path on the command line); the guest's well-known
    locations each have one fixed encoding and do not guess.
    """
    if looks_like_image(data):
        return decode_image(data, origin=origin)
    if data.startswith(b"\x1f\x8b"):
        return gunzip_bounded(data, origin=origin, field="gzip")
    stripped = data.strip()
    # A TOML initdata document always has '=' or '[' in it; base64 never has '[' and has '=' only
    # as trailing padding.
    if stripped and b"[" not in stripped and b"=" not in stripped.rstrip(b"="):
        return decode_annotation(stripped, origin=origin)
    return data
