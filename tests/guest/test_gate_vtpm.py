"""The attestation gate in a guest with a real TPM 2.0 (swtpm), as on a vTPM-based pod VM.

The test does what the pod-VM image does (`tpm2_pcrextend 8:sha256=<initdata digest>`), then runs
`warden verify` with the vTPM source reading the kernel's /sys/class/tpm/tpm0/pcr-sha256/8: the
measured initdata passes; any other initdata fails with a PCR8 mismatch.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from initdata.document import HashAlgorithm, parse_initdata
from tests.data.initdata.factory import HERE, KEYS, make_envelope, make_initdata, signing_key
from tests.guest.vm import VENV_BIN, GuestOptions, GuestVM

PCR8 = "/sys/class/tpm/tpm0/pcr-sha256/8"
MEASURED = HERE / "initdata-v1.toml"  # in the repository, so visible in the guest's root
WARDEN = VENV_BIN / "warden"


@pytest.fixture(scope="module")
def guest_options() -> GuestOptions:
    return GuestOptions(tpm=True)


@pytest.fixture(scope="module")
def extended(guest: GuestVM) -> str:
    """PCR8 extended once with the sha256 digest of the measured initdata (done once per VM)."""
    digest = parse_initdata(MEASURED.read_bytes(), origin=str(MEASURED)).digest_hex
    assert guest.run(f"cat {PCR8}", check=True).stdout.strip() == "00" * 32
    guest.run(f"tpm2_pcrextend 8:sha256={digest}", check=True)
    return digest


def verify(guest: GuestVM, initdata: str, *extra: str) -> tuple[int, str, str]:
    result = guest.run(f"{WARDEN} verify {initdata} --trust-dir {KEYS} --threshold 2 {' '.join(extra)}", timeout=120)
    return result.returncode, result.stdout, result.stderr


def test_measured_initdata_passes_with_auto_detection(guest: GuestVM, extended: str) -> None:
    expected_pcr8 = hashlib.sha256(bytes(32) + bytes.fromhex(extended)).hexdigest().upper()
    assert guest.run(f"cat {PCR8}", check=True).stdout.strip() == expected_pcr8
    # No --source: the default order (tdx, snp, vtpm, attestation-agent, sample) finds the vTPM.
    code, out, err = verify(guest, str(MEASURED), "--json")
    assert code == 0, err
    assert '"measurement_source": "vtpm"' in out
    assert '"insecure": false' in out
    assert f'"initdata_digest": "sha256:{extended}"' in out


def test_measured_initdata_passes_with_the_vtpm_source(guest: GuestVM, extended: str) -> None:
    code, out, err = verify(guest, str(MEASURED), "--source", "vtpm", "--state-dir", "/run/warden")
    assert code == 0, err
    assert "vtpm PCR8 matches initdata sha256:" in out
    state = guest.run("stat -c %a /run/warden/bundle-state.json", check=True).stdout.strip()
    assert state == "600"


def test_other_initdata_fails(guest: GuestVM, extended: str) -> None:
    # A correctly signed bundle in an initdata the TEE did not measure.
    other = make_initdata(make_envelope([signing_key("owner-ed25519"), signing_key("owner-p256")], version=2))
    encoded = base64.b64encode(other).decode()
    guest.run(f"mkdir -p /run/warden-test && echo {encoded} | base64 -d > /run/warden-test/other.toml", check=True)
    code, out, err = verify(guest, "/run/warden-test/other.toml", "--source", "vtpm")
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"warden: {PCR8}: PCR8: measured ")
    assert parse_initdata(other, origin="other").digest_hex in lines[0]


def test_sha384_initdata_is_refused_on_vtpm(guest: GuestVM, extended: str) -> None:
    sha384 = make_initdata(make_envelope([signing_key("owner-ed25519")]), algorithm=HashAlgorithm.SHA384)
    encoded = base64.b64encode(sha384).decode()
    guest.run(f"mkdir -p /run/warden-test && echo {encoded} | base64 -d > /run/warden-test/sha384.toml", check=True)
    code, _out, err = verify(guest, "/run/warden-test/sha384.toml", "--source", "vtpm")
    assert code == 1
    assert "algorithm: vTPM binding needs a sha256 initdata digest" in err
