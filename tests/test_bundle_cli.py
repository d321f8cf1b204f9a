"""`warden bundle sign|verify` through the real CLI entry point."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from initdata.bundle import parse_payload
from initdata.dsse import parse_envelope
from supervisor.cli import main
from tests.data.initdata.factory import KEYS, POLICIES
from tests.test_initdata_cli import one_error_line

ED_KEY = str(KEYS / "owner-ed25519.key")
P256_KEY = str(KEYS / "owner-p256.key")
P384_KEY = str(KEYS / "owner-p384.key")


def sign(tmp_path: Path, *extra: str, version: str = "2", expires: str = "+30d") -> Path:
    out = tmp_path / f"bundle-{version}.json"
    argv = ["bundle", "sign", str(POLICIES), "--key", ED_KEY, "--key", P256_KEY, "--version", version]
    assert main([*argv, "--expires", expires, "-o", str(out), *extra]) == 0
    return out


def test_sign_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bpf = tmp_path / "warden_lsm.bpf.o"
    bpf.write_bytes(b"\x7fELF fake object")
    agent = tmp_path / "agent.yaml"
    agent.write_text("log_level: debug\nstatus_interval: 30\n")
    out = sign(tmp_path, "--bpf-object", str(bpf), "--agent-settings", str(agent))
    assert "bundle v2 (2 policy files, 2 signatures" in capsys.readouterr().out

    envelope = parse_envelope(out.read_bytes(), origin="b")
    payload = parse_payload(envelope.payload, origin="b")
    assert payload.version == 2
    assert [p.name for p in payload.policies] == ["block-shadow.yaml", "net-raw-audit.yaml"]
    assert payload.policies[0].text == (POLICIES / "block-shadow.yaml").read_text()
    assert dict(payload.bpf_objects) == {"warden_lsm.bpf.o": "sha256:" + hashlib.sha256(bpf.read_bytes()).hexdigest()}
    assert dict(payload.agent) == {"log_level": "debug", "status_interval": 30}

    assert main(["bundle", "verify", str(out), "--trust-dir", str(KEYS), "--threshold", "2"]) == 0
    assert "bundle v2 (sha256:" in capsys.readouterr().out
    assert main(["bundle", "verify", str(out), "--trust-key", str(KEYS / "owner-p256.pem")]) == 0
    capsys.readouterr()


def test_verify_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = sign(tmp_path)
    capsys.readouterr()
    assert main(["bundle", "verify", str(out), "--trust-dir", str(KEYS), "--threshold", "3"]) == 1
    assert one_error_line(capsys) == f"warden: {out}: signatures: 2 of the 3 key(s) in {KEYS} signed, 3 required"

    assert main(["bundle", "verify", str(out), "--trust-key", str(KEYS / "owner-p384.pem")]) == 1
    assert "signatures: 0 of the 1 key(s)" in one_error_line(capsys)

    later = "2099-01-01T00:00:00Z"
    assert main(["bundle", "verify", str(out), "--trust-dir", str(KEYS), "--now", later]) == 1
    assert "payload.expires: expired at" in one_error_line(capsys)

    tampered = tmp_path / "tampered.json"
    document = json.loads(out.read_text())
    document["payload"] = document["payload"][:-8] + ("A" * 8 if document["payload"][-8:] != "A" * 8 else "B" * 8)
    tampered.write_text(json.dumps(document))
    assert main(["bundle", "verify", str(tampered), "--trust-dir", str(KEYS)]) == 1
    assert "signatures: 0 of the 3 key(s)" in one_error_line(capsys)

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{")
    assert main(["bundle", "verify", str(garbage), "--trust-dir", str(KEYS)]) == 1
    assert one_error_line(capsys) == (
        f"warden: {garbage}: envelope: not JSON (Expecting property name enclosed in double quotes)"
    )


def test_verify_checks_rollback_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "bundle-state.json").write_text(json.dumps({"version": 5, "digest": "sha256:" + "0" * 64}))
    out = sign(tmp_path, version="4")
    capsys.readouterr()
    assert main(["bundle", "verify", str(out), "--trust-dir", str(KEYS), "--state-dir", str(state)]) == 1
    assert "payload.version: version 4 is older than version 5" in one_error_line(capsys)


def test_sign_validates_policies_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    (policies / "broken.yaml").write_text("apiVersion: security.kubearmor.com/v1\nkind: KubeArmorPolicy\n")
    argv = ["bundle", "sign", str(policies), "--key", ED_KEY, "--version", "1", "--expires", "+1d"]
    assert main([*argv, "-o", str(tmp_path / "b.json")]) == 1
    expected = f"warden: {policies}: payload.policies[1] (broken.yaml): broken.yaml:1: metadata: is required"
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--version", "0", "--expires", "+1d"], "warden: --version: version: 0 is not >= 1"),
        (
            ["--version", "1", "--expires", "2001-01-01T00:00:00Z"],
            "warden: --expires: expires: 2001-01-01T00:00:00Z is already in the past",
        ),
        (["--version", "1", "--expires", "tomorrow"], "warden: --expires: expires: 'tomorrow' is not an RFC 3339 time"),
    ],
)
def test_sign_argument_errors(extra: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bundle", "sign", str(POLICIES), "--key", ED_KEY, *extra]) == 1
    assert one_error_line(capsys).startswith(expected)


def test_sign_key_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["bundle", "sign", str(POLICIES), "--version", "1", "--expires", "+1d"]
    assert main([*base, "--key", ED_KEY, "--key", ED_KEY]) == 1
    assert "the same key is given twice" in one_error_line(capsys)
    assert main([*base, "--key", str(KEYS / "owner-ed25519.pem")]) == 1
    assert "pem: not an unencrypted PEM private key" in one_error_line(capsys)
    assert main([*base, "--key", str(tmp_path / "missing.key")]) == 1
    assert one_error_line(capsys) == f"warden: {tmp_path / 'missing.key'}: key: does not exist"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bundle", "sign", str(empty), "--key", ED_KEY, "--version", "1", "--expires", "+1d"]) == 1
    assert one_error_line(capsys) == f"warden: {empty}: directory: holds no *.yaml policy files"


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["bundle", "sign", str(POLICIES), "--key", ED_KEY])  # --version and --expires missing
    assert caught.value.code == 2
    assert main(["bundle", "verify", "x.json"]) == 2
    assert "give --trust-dir or --trust-key" in capsys.readouterr().err
    assert main(["bundle"]) == 2
