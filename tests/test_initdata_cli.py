"""`warden keygen` and `warden initdata ...` through the real CLI entry point."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from initdata.document import parse_initdata
from initdata.encoding import decode_image, encode_annotation
from supervisor.cli import main
from tests.data.initdata.factory import HERE, KEYS, public_pem
from tests.test_initdata_document import EXAMPLE_SHA256, EXAMPLE_SHA384, KATA_ANNOTATION, KATA_TOML, example

BUNDLE = HERE / "bundle-v1.json"


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("warden: ")
    assert "Traceback" not in captured.err
    return lines[0]


def test_keygen_writes_a_usable_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "owner"
    assert main(["keygen", str(prefix), "--algorithm", "ecdsa-p256"]) == 0
    out = capsys.readouterr().out
    assert "ecdsa-p256 key " in out
    private = tmp_path / "owner.key"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in (tmp_path / "owner.pem").read_bytes()
    # Never silently replace a key.
    assert main(["keygen", str(prefix)]) == 1
    assert one_error_line(capsys) == f"warden: {private}: output: already exists (use --force to overwrite)"
    assert main(["keygen", str(prefix), "--force"]) == 0


def test_build_digest_annotation_decode_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aa = tmp_path / "aa.toml"
    aa.write_text("[token_configs]\n[token_configs.kbs]\nurl = \"http://10.0.0.1:8080\"\n")
    out = tmp_path / "initdata.toml"
    args = ["initdata", "build", "--bundle", str(BUNDLE), "--aa-toml", str(aa), "--algorithm", "sha384"]
    assert main([*args, "--trust-key", str(KEYS / "owner-p384.pem"), "-o", str(out)]) == 0
    capsys.readouterr()
    document = parse_initdata(out.read_bytes(), origin="built")
    assert document.data["aa.toml"] == aa.read_text()
    assert document.data["warden.bundle"] == BUNDLE.read_text()
    assert document.data["warden.trust"].strip() == public_pem("owner-p384").decode().strip()

    assert main(["initdata", "digest", str(out)]) == 0
    assert capsys.readouterr().out.strip() == document.digest_hex
    assert main(["initdata", "digest", str(out), "--tee", "snp"]) == 0
    assert capsys.readouterr().out.strip() == document.digest_hex[:64]
    assert main(["initdata", "digest", str(out), "--tee", "vtpm"]) == 1  # sha384: no vTPM binding
    assert "vTPM binding needs a sha256" in one_error_line(capsys)

    assert main(["initdata", "annotation", str(out)]) == 0
    annotation = capsys.readouterr().out.strip()
    assert annotation == encode_annotation(out.read_bytes())
    assert main(["initdata", "decode", annotation]) == 0
    assert capsys.readouterr().out.encode() == out.read_bytes()

    image = tmp_path / "data.img"
    assert main(["initdata", "image", str(out), "-o", str(image)]) == 0
    capsys.readouterr()
    assert decode_image(image.read_bytes()) == out.read_bytes()
    assert main(["initdata", "digest", str(image)]) == 0  # any encoding is accepted as FILE
    assert capsys.readouterr().out.strip() == document.digest_hex


def test_build_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["initdata", "build", "--bundle", str(BUNDLE), "--algorithm", "sha256"]
    assert main([*base, "--format", "annotation"]) == 0
    annotation = capsys.readouterr().out.strip()
    assert main(["initdata", "decode", annotation]) == 0
    toml = capsys.readouterr().out.encode()
    assert parse_initdata(toml, origin="x").data["warden.bundle"] == BUNDLE.read_text()
    image = tmp_path / "img"
    assert main([*base, "--format", "image", "-o", str(image)]) == 0
    assert decode_image(image.read_bytes()) == toml


def test_digest_vectors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sha256 = tmp_path / "sha256.toml"
    sha256.write_bytes(example("initdata-sha256.toml"))
    sha384 = tmp_path / "sha384.toml"
    sha384.write_bytes(example("initdata-sha384.toml"))
    expectations = [
        ([str(sha256)], EXAMPLE_SHA256),
        ([str(sha256), "--tee", "tdx"], EXAMPLE_SHA256 + "00" * 16),
        ([str(sha256), "--tee", "vtpm"], "fe073ceb67d7d99b4690f65f2721bfa58664f3b6e15a5bd7b3e5425640771e14"),
        ([str(sha384), "--tee", "tdx"], EXAMPLE_SHA384),
        ([str(sha384), "--tee", "snp", "--base64"], "Fs19Q3dqrePyZDX6rf+NZQTwbh+xSOBcWFZpw8OwPNA="),
    ]
    for args, expected in expectations:
        assert main(["initdata", "digest", *args]) == 0
        assert capsys.readouterr().out.strip() == expected


def test_decode_kata_vector_from_stdin_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["initdata", "decode", KATA_ANNOTATION]) == 0
    assert capsys.readouterr().out.encode() == KATA_TOML
    saved = tmp_path / "annotation.txt"
    saved.write_text(KATA_ANNOTATION + "\n")
    assert main(["initdata", "decode", f"@{saved}"]) == 0
    assert capsys.readouterr().out.encode() == KATA_TOML
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(KATA_ANNOTATION.encode())))
    assert main(["initdata", "decode", "-"]) == 0
    assert capsys.readouterr().out.encode() == KATA_TOML


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["initdata", "decode", "!!!"], "warden: annotation: annotation: invalid standard base64"),
        (["initdata", "decode", base64.b64encode(b"plain").decode()], "warden: annotation: annotation: invalid gzip"),
        (["initdata", "digest", "/nonexistent/i.toml"], "warden: /nonexistent/i.toml: document: does not exist"),
        (["initdata", "build", "--bundle", "/nonexistent/b.json", "--algorithm", "sha256"],
         "warden: /nonexistent/b.json: bundle: does not exist"),
    ],
)
def test_errors_are_one_line(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    assert one_error_line(capsys).startswith(expected)


def test_decode_refuses_non_initdata(capsys: pytest.CaptureFixture[str]) -> None:
    annotation = encode_annotation(b'version = "0.1.0"\nalgorithm = "md5"\n[data]\n')
    assert main(["initdata", "decode", annotation]) == 1
    assert one_error_line(capsys) == (
        "warden: annotation: algorithm: unsupported 'md5' (expected one of sha256, sha384, sha512)"
    )


def test_build_refuses_a_bad_bundle_and_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_envelope = tmp_path / "b.json"
    not_envelope.write_text('{"hello": 1}')
    assert main(["initdata", "build", "--bundle", str(not_envelope), "--algorithm", "sha256"]) == 1
    assert one_error_line(capsys) == f"warden: {not_envelope}: hello: unknown envelope field"
    rego = tmp_path / "policy.rego"
    rego.write_text("x := '''oops'''\n")
    argv = ["initdata", "build", "--bundle", str(BUNDLE), "--policy-rego", str(rego), "--algorithm", "sha256"]
    assert main(argv) == 1
    assert "data.policy.rego: contains '''" in one_error_line(capsys)
    bad_key = tmp_path / "k.pem"
    bad_key.write_text("not a key")
    argv = ["initdata", "build", "--bundle", str(BUNDLE), "--trust-key", str(bad_key), "--algorithm", "sha256"]
    assert main(argv) == 1
    assert one_error_line(capsys) == f"warden: {bad_key}: pem: no PEM public key found"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["initdata", "build", "--bundle", str(BUNDLE), "--algorithm", "md5"])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        main(["initdata", "digest", "x", "--tee", "sgx"])
    assert caught.value.code == 2
    assert main(["initdata"]) == 2
    capsys.readouterr()
