"""The guest's TPM is a real TPM 2.0 (swtpm), as a vTPM-based pod VM has."""

from __future__ import annotations

import hashlib

import pytest

from tests.guest.vm import GuestOptions, GuestVM


@pytest.fixture(scope="module")
def guest_options() -> GuestOptions:
    return GuestOptions(tpm=True)


def test_pcr8_starts_at_zero_and_extends_like_a_tpm(guest: GuestVM) -> None:
    pcr8 = "/sys/class/tpm/tpm0/pcr-sha256/8"
    assert guest.run(f"cat {pcr8}", check=True).stdout.strip() == "00" * 32
    digest = hashlib.sha256(b"initdata").hexdigest()
    guest.run(f"tpm2_pcrextend 8:sha256={digest}", check=True)
    expected = hashlib.sha256(bytes(32) + bytes.fromhex(digest)).hexdigest().upper()
    assert guest.run(f"cat {pcr8}", check=True).stdout.strip() == expected
