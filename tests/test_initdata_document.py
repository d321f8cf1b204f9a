"""initdata documents: parsing, digests, TEE fields, annotation and block-image encodings, locations.

Vectors: Kata's 113-byte annotation (src/runtime/pkg/oci/utils_test.go) and the worked examples of
../shared/reference/coco-example (digests verified in coco.md 1.8).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import struct
from pathlib import Path

import pytest

from attest.tee import Tee, expected_measurement, vtpm_pcr8
from initdata.document import MAX_INITDATA_BYTES, HashAlgorithm, build_initdata_toml, parse_initdata
from initdata.encoding import (
    IMAGE_ALIGN,
    MAX_ANNOTATION_CHARS,
    decode_annotation,
    decode_any,
    decode_image,
    encode_annotation,
    encode_image,
    gunzip_bounded,
)
from initdata.errors import (
    GateError,
    InitdataNotFound,
    InputTooLarge,
    MalformedInitdata,
    UnsupportedAlgorithm,
)
from initdata.locate import load_initdata_file, locate_initdata

KATA_ANNOTATION = (
    "H4sIAFlC92cAAytLLSrOzM9TsFVQMtAz1DNQ4krMSc8vyizJyAWJFWckGpmaKXFFpySWJMZyKSUm6pXk5+YoAeXU1dW5QJhLKTkl"
    "A4toQX5OZnKlXlFqej6yBABS/5JkcQAAAA=="
)
KATA_TOML = (
    b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"aa.toml" = \'\'\'\n\'\'\'\n\n'
    b"\"cdh.toml\" = '''\n'''\n\n\"policy.rego\" = '''\n'''\n"
)
KATA_SHA256 = "c6694bb7a29d6f37ec72a15582e004b9f3142159682db8509a304407419a49e5"

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "coco-example"
EXAMPLE_SHA256 = "69babfbf8ac36922779f6cfcbbc92b9a353fae76cfa9ece1c5e2e01e18d53ce4"
EXAMPLE_SHA384 = (
    "16cd7d43776aade3f26435faadff8d6504f06e1fb148e05c585669c3c3b03cd0f4c25f043ffd5ceee1a243cb2c1a7f35"
)


def example(name: str) -> bytes:
    path = EXAMPLES / name
    if path.exists():
        return path.read_bytes()
    # The reference tree sits next to the repository; without it, rebuild the documented file
    # (coco.md 1.8 prints it in full) so the vectors still run.
    algorithm = "sha384" if "384" in name else "sha256"
    return (
        f'algorithm = "{algorithm}"\nversion = "0.1.0"\n\n[data]\n"aa.toml" = \'\'\'\n[token_configs]\n'
        "[token_configs.kbs]\nurl = \"http://10.0.0.1:8080\"\n'''\n\n\"cdh.toml\" = '''\n"
        "socket = 'unix:///run/confidential-containers/cdh.sock'\ncredentials = []\n\n[kbc]\n"
        "name = 'cc_kbc'\nurl = 'http://10.0.0.1:8080'\n'''\n\n\"policy.rego\" = '''\n"
        "package agent_policy\n\ndefault AllowRequestsFailingPolicy := true\n'''\n"
    ).encode()


# --- vectors ---------------------------------------------------------------------------------------


def test_kata_annotation_vector() -> None:
    toml = decode_annotation(KATA_ANNOTATION)
    assert toml == KATA_TOML
    assert len(toml) == 113
    document = parse_initdata(toml, origin="kata")
    assert document.algorithm is HashAlgorithm.SHA256
    assert document.digest_hex == KATA_SHA256
    assert dict(document.data) == {"aa.toml": "", "cdh.toml": "", "policy.rego": ""}


def test_builder_reproduces_kata_vector_byte_for_byte() -> None:
    built = build_initdata_toml(
        {"aa.toml": "", "cdh.toml": "", "policy.rego": ""}, algorithm=HashAlgorithm.SHA256
    )
    assert built == KATA_TOML


def test_coco_example_sha256_fields() -> None:
    raw = example("initdata-sha256.toml")
    assert len(raw) == 369
    document = parse_initdata(raw, origin="initdata-sha256.toml")
    digest = document.digest
    assert digest.hex() == EXAMPLE_SHA256
    assert base64.b64encode(digest).decode() == "abq/v4rDaSJ3n2z8u8krmjU/rnbPqezhxeLgHhjVPOQ="
    tdx = expected_measurement(digest, document.algorithm, Tee.TDX)
    assert tdx.hex() == EXAMPLE_SHA256 + "00" * 16
    assert expected_measurement(digest, document.algorithm, Tee.SNP) == digest
    assert expected_measurement(digest, document.algorithm, Tee.CCA) == digest + b"\0" * 32
    pcr8 = expected_measurement(digest, document.algorithm, Tee.VTPM)
    assert pcr8.hex() == "fe073ceb67d7d99b4690f65f2721bfa58664f3b6e15a5bd7b3e5425640771e14"


def test_coco_example_sha384_fields() -> None:
    raw = example("initdata-sha384.toml")
    document = parse_initdata(raw, origin="initdata-sha384.toml")
    assert document.digest_hex == EXAMPLE_SHA384
    tdx = expected_measurement(document.digest, document.algorithm, Tee.TDX)
    assert base64.b64encode(tdx).decode() == "Fs19Q3dqrePyZDX6rf+NZQTwbh+xSOBcWFZpw8OwPND0wl8EP/1c7uGiQ8ssGn81"
    snp = expected_measurement(document.digest, document.algorithm, Tee.SNP)
    assert base64.b64encode(snp).decode() == "Fs19Q3dqrePyZDX6rf+NZQTwbh+xSOBcWFZpw8OwPNA="
    # CAA's mkosi image extends PCR8 with the first 32 bytes; we refuse: Trustee needs sha256.
    truncated_pcr8 = hashlib.sha256(b"\0" * 32 + document.digest[:32]).hexdigest()
    assert truncated_pcr8 == "2784844d248b50b82ec8f7038af2aee7daad115e6d1b3168fa285901ac7e427b"
    with pytest.raises(UnsupportedAlgorithm, match="vTPM binding needs a sha256"):
        expected_measurement(document.digest, document.algorithm, Tee.VTPM, origin="initdata-sha384.toml")


def test_sha512_fits_every_field() -> None:
    raw = example("initdata-sha256.toml").replace(b'"sha256"', b'"sha512"')
    document = parse_initdata(raw, origin="x")
    assert len(document.digest) == 64
    assert expected_measurement(document.digest, document.algorithm, Tee.TDX) == document.digest[:48]
    assert expected_measurement(document.digest, document.algorithm, Tee.CCA) == document.digest
    with pytest.raises(UnsupportedAlgorithm):
        vtpm_pcr8(document.digest, document.algorithm)


def test_digest_is_over_exact_bytes() -> None:
    raw = example("initdata-sha256.toml")
    # Same parsed content, one extra trailing newline: a different measurement.
    a = parse_initdata(raw, origin="a")
    b = parse_initdata(raw + b"\n", origin="b")
    assert dict(a.data) == dict(b.data)
    assert a.digest != b.digest


# --- parse errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "error", "field"),
    [
        (b'version = "0.1.0"\nalgorithm = "md5"\n[data]\n', UnsupportedAlgorithm, "algorithm"),
        (b'version = "0.1.0"\nalgorithm = "sm3"\n[data]\n', UnsupportedAlgorithm, "algorithm"),
        (b'version = "0.1.0"\nalgorithm = "SHA256"\n[data]\n', UnsupportedAlgorithm, "algorithm"),
        (b'version = "0.1.0"\nalgorithm = 256\n[data]\n', UnsupportedAlgorithm, "algorithm"),
        (b'version = "0.2.0"\nalgorithm = "sha256"\n[data]\n', MalformedInitdata, "version"),
        (b'algorithm = "sha256"\n[data]\n', MalformedInitdata, "version"),
        (b'version = "0.1.0"\n[data]\n', MalformedInitdata, "algorithm"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\n', MalformedInitdata, "data"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\ndata = "x"\n', MalformedInitdata, "data"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\nn = 1\n', MalformedInitdata, "data.n"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n[data.t]\n', MalformedInitdata, "data.t"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\nextra = 1\n[data]\n', MalformedInitdata, "extra"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\n[data\n', MalformedInitdata, "toml"),
        (b'version = "0.1.0"\nversion = "0.1.0"\n', MalformedInitdata, "toml"),
        (b"\xff\xfe\x00", MalformedInitdata, "document"),
    ],
)
def test_parse_errors_name_the_field(raw: bytes, error: type[GateError], field: str) -> None:
    with pytest.raises(error) as caught:
        parse_initdata(raw, origin="pod.toml")
    assert caught.value.origin == "pod.toml"
    assert caught.value.field == field
    message = str(caught.value)
    assert message.startswith(f"pod.toml: {field}: ")
    assert "\n" not in message


def test_oversized_document_refused_before_parsing() -> None:
    raw = b"#" * (MAX_INITDATA_BYTES + 1)
    with pytest.raises(InputTooLarge, match="exceeds the 1048576-byte limit"):
        parse_initdata(raw, origin="big.toml")


# --- the builder -------------------------------------------------------------------------------------


def test_builder_round_trips_awkward_values() -> None:
    data = {
        "aa.toml": "[token_configs]\nurl = 'x'\n",
        "quote's": "a value ending in quotes ''",
        "tabs\tand \"quotes\"": "\ttabbed\n\n",
        "ünïcode": "ключ = 'значение'",
        "no-newline": "x",
        "empty": "",
    }
    raw = build_initdata_toml(data, algorithm=HashAlgorithm.SHA384)
    document = parse_initdata(raw, origin="built")
    assert dict(document.data) == data
    assert document.algorithm is HashAlgorithm.SHA384


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("has ''' inside", "contains '''"),
        ("bell \x07", "control character U+0007"),
        ("nul \x00", "control character U+0000"),
        ("crlf\r\n", "control character U+000D"),  # TOML would read CRLF back as LF
    ],
)
def test_builder_refuses_values_toml_cannot_hold(value: str, problem: str) -> None:
    with pytest.raises(MalformedInitdata, match=re.escape(problem)) as caught:
        build_initdata_toml({"cdh.toml": value}, algorithm=HashAlgorithm.SHA256, origin="cdh.toml")
    assert caught.value.field == "data.cdh.toml"


# --- annotation and block image -------------------------------------------------------------------------


def test_annotation_round_trip_is_deterministic() -> None:
    raw = example("initdata-sha384.toml")
    value = encode_annotation(raw)
    assert value == encode_annotation(raw)  # mtime 0: same TOML, same annotation
    assert decode_annotation(value) == raw
    wrapped = "\n".join(value[i : i + 76] for i in range(0, len(value), 76)) + "\n"
    assert decode_annotation(wrapped) == raw  # `base64` wraps lines; the Go decoder skips newlines


def test_annotation_multi_member_gzip_like_go() -> None:
    raw = example("initdata-sha256.toml")
    value = base64.b64encode(gzip.compress(raw[:100]) + gzip.compress(raw[100:])).decode()
    assert decode_annotation(value) == raw


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("not base64!", "invalid standard base64"),
        ("QUJD", "invalid gzip data"),  # base64 of "ABC": not gzip
        (base64.b64encode(gzip.compress(b"x" * 100)[:-9]).decode(), "truncated gzip stream"),
        (base64.b64encode(gzip.compress(b"x") + b"trailing").decode(), "invalid gzip data"),
        ("", "empty gzip stream"),
        ("ключ", "base64 must be ASCII"),
    ],
)
def test_malformed_annotations(value: str, problem: str) -> None:
    with pytest.raises(MalformedInitdata, match=problem) as caught:
        decode_annotation(value, origin="pod annotation")
    assert caught.value.field == "annotation"


def test_gzip_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (MAX_INITDATA_BYTES + 10))
    assert len(bomb) < 4096
    with pytest.raises(InputTooLarge, match="decompresses to more than"):
        decode_annotation(base64.b64encode(bomb).decode())
    assert gunzip_bounded(gzip.compress(b"\0" * 1000), origin="x", field="f", limit=1000) == b"\0" * 1000
    with pytest.raises(InputTooLarge):
        gunzip_bounded(gzip.compress(b"\0" * 1001), origin="x", field="f", limit=1000)


def test_oversized_annotation_refused_before_decoding() -> None:
    with pytest.raises(InputTooLarge, match="characters exceeds"):
        decode_annotation("A" * (MAX_ANNOTATION_CHARS + 1))


def test_block_image_layout_and_round_trip() -> None:
    raw = example("initdata-sha256.toml")
    image = encode_image(raw)
    assert image[:8] == b"initdata"
    (length,) = struct.unpack_from("<Q", image, 8)
    assert gzip.decompress(image[16 : 16 + length]) == raw
    assert len(image) % IMAGE_ALIGN == 0
    assert image[16 + length :] == b"\0" * (len(image) - 16 - length)
    assert decode_image(image) == raw
    # A disk is larger than the image: trailing sectors must not matter.
    assert decode_image(image + b"\0" * 4096) == raw


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda image: b"initdatb" + image[8:], "magic"),
        (lambda image: image[:8] + struct.pack("<Q", 10**6) + image[16:], "length"),
        (lambda image: image[:10], "header"),
        (lambda image: image[:16] + b"\x1f\x8b\x08" + b"\0" * (len(image) - 19), "gzip"),
    ],
)
def test_malformed_block_images(mutate: object, field: str) -> None:
    image = encode_image(example("initdata-sha256.toml"))
    with pytest.raises(MalformedInitdata) as caught:
        decode_image(mutate(image), origin="/dev/vdb")  # type: ignore[operator]
    assert caught.value.field == field
    assert str(caught.value).startswith(f"/dev/vdb: {field}: ")


def test_decode_any_recognises_each_encoding() -> None:
    raw = example("initdata-sha384.toml")
    assert decode_any(raw, origin="t") == raw
    assert decode_any(encode_image(raw), origin="i") == raw
    assert decode_any(gzip.compress(raw), origin="g") == raw
    assert decode_any(encode_annotation(raw).encode() + b"\n", origin="a") == raw
    assert decode_any(KATA_ANNOTATION.encode(), origin="k") == KATA_TOML


# --- where the guest finds it ----------------------------------------------------------------------------


def test_locate_prefers_explicit_then_kata_then_peerpod(tmp_path: Path) -> None:
    kata = tmp_path / "kata" / "initdata.toml"
    peer = tmp_path / "peerpod" / "initdata"
    digest_file = tmp_path / "peerpod" / "initdata.digest"
    paths = {"dev_dir": None, "kata_path": kata, "peerpod_path": peer, "peerpod_digest_path": digest_file}
    with pytest.raises(InitdataNotFound, match="none of"):
        locate_initdata(**paths)

    peer.parent.mkdir()
    sha384 = example("initdata-sha384.toml")
    peer.write_text(encode_annotation(sha384))
    digest_file.write_text(EXAMPLE_SHA384)  # CAA writes lowercase hex, no newline
    assert locate_initdata(**paths).digest_hex == EXAMPLE_SHA384

    kata.parent.mkdir()
    kata.write_bytes(example("initdata-sha256.toml"))
    assert locate_initdata(**paths).digest_hex == EXAMPLE_SHA256

    explicit = tmp_path / "given.img"
    explicit.write_bytes(encode_image(KATA_TOML))
    found = locate_initdata(explicit, **paths)
    assert found.digest_hex == KATA_SHA256
    assert found.origin == str(explicit)


def test_peerpod_digest_file_must_agree(tmp_path: Path) -> None:
    peer = tmp_path / "initdata"
    digest_file = tmp_path / "initdata.digest"
    peer.write_text(encode_annotation(example("initdata-sha256.toml")))
    digest_file.write_text("00" * 32)
    with pytest.raises(MalformedInitdata) as caught:
        locate_initdata(dev_dir=None, kata_path=tmp_path / "absent", peerpod_path=peer,
                        peerpod_digest_path=digest_file)
    assert caught.value.origin == str(digest_file)
    assert caught.value.field == "digest"


def test_load_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InitdataNotFound, match="does not exist"):
        load_initdata_file(tmp_path / "missing.toml")
    with pytest.raises(InitdataNotFound, match="is a directory"):
        load_initdata_file(tmp_path)
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"#" * (MAX_ANNOTATION_CHARS + 64 * 1024 + 1))
    with pytest.raises(InputTooLarge) as caught:
        load_initdata_file(huge)
    assert caught.value.origin == str(huge)
