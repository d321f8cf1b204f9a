"""`warden verify INITDATA`: the whole gate from the command line (CI pipelines, guests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attest.tee import Tee, expected_measurement
from initdata.document import parse_initdata
from initdata.encoding import encode_annotation, encode_image
from supervisor.cli import main
from tests.data.initdata.factory import HERE, KEYS, make_envelope, make_initdata, signing_key
from tests.test_initdata_cli import one_error_line

INITDATA = HERE / "initdata-v1.toml"
DOCUMENT = parse_initdata(INITDATA.read_bytes(), origin=str(INITDATA))
NOW = ["--now", "2026-06-01T00:00:00Z"]


def register(tee: Tee) -> str:
    return expected_measurement(DOCUMENT.digest, DOCUMENT.algorithm, tee).hex()


def verify(*args: str) -> int:
    return main(["verify", *args, *NOW])


@pytest.mark.parametrize("tee", list(Tee))
def test_accepts_with_the_right_measurement(tee: Tee, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(INITDATA), "--trust-dir", str(KEYS), "--threshold", "2", "--tee", tee.value]
    assert verify(*argv, "--measurement-hex", register(tee)) == 0
    out = capsys.readouterr().out
    assert out.startswith("policy bundle v1 (sha256:")
    assert "INSECURE" not in out


def test_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(INITDATA), "--trust-dir", str(KEYS), "--tee", "tdx", "--measurement-hex", register(Tee.TDX)]
    assert verify(*argv, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bundle_version"] == 1
    assert summary["initdata_digest"] == f"sha256:{DOCUMENT.digest_hex}"
    assert summary["policies"] == ["block-shadow.yaml", "net-raw-audit.yaml"]
    assert summary["policy_count"] == 3
    assert summary["tee"] == "tdx" and summary["insecure"] is False
    assert summary["trust_mode"] == "image"
    assert len(summary["signers"]) == 2


def test_mismatch_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    wrong = "00" * 32
    assert verify(str(INITDATA), "--trust-dir", str(KEYS), "--tee", "snp", "--measurement-hex", wrong) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"warden: --measurement-hex: HOSTDATA: measured {wrong} but initdata {INITDATA}")


def test_tampered_initdata_one_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = INITDATA.read_bytes()
    position = raw.index(b"[token_configs]") + 1
    tampered = tmp_path / "tampered.toml"
    tampered.write_bytes(raw[:position] + b"T" + raw[position + 1 :])
    assert verify(str(tampered), "--trust-dir", str(KEYS), "--tee", "snp", "--measurement-hex", register(Tee.SNP)) == 1
    assert ": HOSTDATA: measured " in one_error_line(capsys)


def test_other_encodings_of_the_same_initdata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    annotation = tmp_path / "annotation.txt"
    annotation.write_text(encode_annotation(INITDATA.read_bytes()))
    image = tmp_path / "data.img"
    image.write_bytes(encode_image(INITDATA.read_bytes()))
    for path in (annotation, image):
        assert verify(str(path), "--trust-dir", str(KEYS), "--tee", "tdx", "--measurement-hex", register(Tee.TDX)) == 0
        assert "tdx MRCONFIGID matches" in capsys.readouterr().out


def test_sample(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify(str(INITDATA), "--trust-dir", str(KEYS), "--tee", "sample") == 1
    assert "insecure_allow_sample is not set" in one_error_line(capsys)
    assert verify(str(INITDATA), "--trust-dir", str(KEYS), "--tee", "sample", "--insecure-allow-sample") == 0
    assert capsys.readouterr().out.startswith("INSECURE (no TEE, sample source): policy bundle v1")


def test_live_vtpm_source_on_a_fake_sysfs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pcr = tmp_path / "class" / "tpm" / "tpm0" / "pcr-sha256" / "8"
    pcr.parent.mkdir(parents=True)
    pcr.write_text(register(Tee.VTPM).upper() + "\n")
    argv = [str(INITDATA), "--trust-dir", str(KEYS), "--source", "vtpm", "--sysfs-root", str(tmp_path)]
    # Issue 15 item 5: a TPM alone is not a TEE: refused unless opted in, then INSECURE.
    assert verify(*argv) == 1
    assert "insecure_sources lists vtpm" in one_error_line(capsys)
    argv += ["--insecure-source", "vtpm"]
    assert verify(*argv) == 0
    out = capsys.readouterr().out
    assert "vtpm PCR8 matches" in out and out.startswith("INSECURE (vtpm not vouched for by a TEE)")
    pcr.write_text("00" * 32 + "\n")
    assert verify(*argv) == 1
    assert ": PCR8: measured " in one_error_line(capsys)


def test_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "warden.yaml"
    config.write_text(f"trust_dir: {KEYS}\nthreshold: 3\n")
    argv = [str(INITDATA), "--config", str(config), "--tee", "snp", "--measurement-hex", register(Tee.SNP)]
    assert verify(*argv) == 1
    assert "signatures: 2 of the 3 key(s)" in one_error_line(capsys)
    assert verify(*argv, "--threshold", "2") == 0  # the command line wins over the file
    capsys.readouterr()
    config.write_text("treshold: 2\n")
    assert verify(*argv) == 1
    assert one_error_line(capsys).startswith(f"warden: {config}: treshold: unknown key")
    config.write_text("- a list\n")
    assert verify(*argv) == 1
    assert one_error_line(capsys) == f"warden: {config}: config: must be a mapping"


def test_rollback_with_state_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    newer = make_initdata(make_envelope([signing_key("owner-ed25519")], version=7))
    newer_path = tmp_path / "v7.toml"
    newer_path.write_bytes(newer)
    hexvalue = parse_initdata(newer, origin="v7").digest_hex
    base = ["--trust-dir", str(KEYS), "--state-dir", str(state), "--tee", "snp"]
    assert verify(str(newer_path), *base, "--measurement-hex", hexvalue) == 0
    capsys.readouterr()
    assert verify(str(INITDATA), *base, "--measurement-hex", register(Tee.SNP)) == 1
    assert "payload.version: version 1 is older than version 7 accepted in this boot" in one_error_line(capsys)


def test_expired(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(INITDATA), "--trust-dir", str(KEYS), "--tee", "snp", "--measurement-hex", register(Tee.SNP)]
    assert main(["verify", *argv, "--now", "2036-01-01T00:00:00Z"]) == 1
    assert "payload.expires: expired at 2036-01-01T00:00:00Z" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--tee", "snp", "--measurement-hex", "xyz"], "warden: --measurement-hex: measurement: is not an even number"),
        # The measurement is checked before the trust directory is even read.
        (
            ["--trust-dir", "/nonexistent", "--tee", "snp", "--measurement-hex", "00"],
            "warden: --measurement-hex: HOSTDATA",
        ),
    ],
)
def test_bad_arguments(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify(str(INITDATA), *argv) == 1
    assert one_error_line(capsys).startswith(expected)


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify(str(INITDATA), "--measurement-hex", "00") == 2
    assert verify(str(INITDATA), "--tee", "tdx") == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        main(["verify", str(INITDATA), "--tee", "sgx"])
    assert caught.value.code == 2


def test_missing_initdata_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert verify(str(missing), "--tee", "sample", "--insecure-allow-sample") == 1
    assert one_error_line(capsys) == f"warden: {missing}: document: does not exist"
