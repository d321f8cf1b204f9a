"""The peer-pod profile (tests/guest/profiles.py `peerpod`): the shipped units, unchanged, in a guest
booted to multi-user.target as a cloud-api-adaptor pod VM: process-user-data (stand-in) writes
/run/peerpod/initdata and extends PCR8, kata-agent (stand-in) is started by its .service and its .path.

Two boots, one per class: the pod's bundle signed by a key the image does not trust (the gate
refuses), then by the image's key (accepted). The accepted boot then starts the podvm's
attestation-agent.service (the AAEL record follows) and confidential-data-hub.service (KBS updates:
higher enforced, lower and foreign-signed refused).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from tests.guest import pod
from tests.guest.profiles import peerpod
from tests.guest.vm import GuestVM

ACCEPTED = pod.pod_image(signed_by=pod.TRUSTED_KEY, guest_components=True)


def check_process_user_data_first(guest: GuestVM, digest: str) -> None:
    """process-user-data wrote the initdata and extended PCR8 before warden started."""
    assert guest.run("cat /run/peerpod/initdata.digest", check=True).stdout == digest
    pcr8 = guest.run("cat /sys/class/tpm/tpm0/pcr-sha256/8", check=True).stdout.strip().lower()
    assert pcr8 == hashlib.sha256(b"\0" * 32 + bytes.fromhex(digest[:64])).hexdigest()
    provisioned = int(pod.props(guest, "process-user-data.service", "ActiveEnterTimestampMonotonic")
                      ["ActiveEnterTimestampMonotonic"])
    warden_started = int(pod.props(guest, "warden.service", "ExecMainStartTimestampMonotonic")
                         ["ExecMainStartTimestampMonotonic"])
    assert 0 < provisioned <= warden_started, (provisioned, warden_started)


class TestRefusedGate:
    @pytest.fixture(scope="class")
    @classmethod
    def guest(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestVM]:
        yield from pod.boot(peerpod(pod.pod_image(signed_by=pod.FOREIGN_KEY)), tmp_path_factory)

    def test_kata_agent_never_starts_and_no_container_runs(self, guest: GuestVM) -> None:
        pod.check_refused(guest)
        # kata-agent.path stays armed, and would start kata-agent.service through the same gate.
        assert pod.props(guest, "kata-agent.path", "ActiveState")["ActiveState"] == "active"


class TestAcceptedGate:
    @pytest.fixture(scope="class")
    @classmethod
    def guest(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestVM]:
        yield from pod.boot(peerpod(ACCEPTED), tmp_path_factory)

    def test_kata_agent_starts_after_ready_with_initdata_from_process_user_data(self, guest: GuestVM) -> None:
        pod.check_kata_agent_after_ready(guest)
        check_process_user_data_first(guest, pod.initdata_digest(ACCEPTED))
        assert "/run/peerpod/initdata" in pod.journal(guest, "warden.service", 200)

    def test_seed_policies_hold_in_kata_agent_containers(self, guest: GuestVM) -> None:
        pod.check_seed_policies(guest)

    def test_a_warden_crash_leaves_kata_agent_running(self, guest: GuestVM) -> None:
        pod.check_warden_crash_keeps_kata_agent(guest)

    def test_aael_record_written_once_the_attestation_agent_comes_up(self, guest: GuestVM) -> None:
        pod.check_aael_recorded_once_the_aa_is_up(guest)

    def test_kbs_update_higher_enforced_lower_and_foreign_refused(self, guest: GuestVM) -> None:
        pod.check_kbs_updates(guest)
