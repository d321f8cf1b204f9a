"""The Kata guest profile (tests/guest/profiles.py `kata`): the shipped units, unchanged, in a guest
booted to kata-containers.target, initdata on a virtio-blk disk, kata-agent (stand-in) gated on warden.

Two boots, one per class: the pod's bundle signed by a key the image does not trust (the gate
refuses), then by the image's key (accepted). In both, PID 1's bpffs and securityfs mounts are undone
before warden-mounts.service, which must mount them again. The accepted boot then starts the
attestation-agent (the AAEL record follows) and the CDH (KBS updates: higher enforced, lower and
foreign-signed refused), as kata-agent launches them after it started.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.guest import pod
from tests.guest.profiles import kata
from tests.guest.vm import GuestVM


def mounted_by_warden_mounts(guest: GuestVM) -> None:
    undone = pod.props(guest, "testbed-no-early-mounts.service", "Result", "ActiveState")
    assert undone == {"Result": "success", "ActiveState": "active"}, undone  # both were unmounted
    kinds = guest.run("findmnt -n -o FSTYPE /sys/fs/bpf; findmnt -n -o FSTYPE /sys/kernel/security").stdout.split()
    assert kinds == ["bpf", "securityfs"], kinds
    assert pod.props(guest, "warden-mounts.service", "Result")["Result"] == "success"


class TestRefusedGate:
    @pytest.fixture(scope="class")
    @classmethod
    def guest(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestVM]:
        image = pod.pod_image(signed_by=pod.FOREIGN_KEY)
        yield from pod.boot(kata(image, tmp_path_factory.mktemp("disk")), tmp_path_factory)

    def test_kata_agent_never_starts_and_no_container_runs(self, guest: GuestVM) -> None:
        pod.check_refused(guest)
        mounted_by_warden_mounts(guest)


class TestAcceptedGate:
    @pytest.fixture(scope="class")
    @classmethod
    def guest(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestVM]:
        image = pod.pod_image(signed_by=pod.TRUSTED_KEY, guest_components=True)
        yield from pod.boot(kata(image, tmp_path_factory.mktemp("disk")), tmp_path_factory)

    def test_kata_agent_starts_after_ready_with_initdata_from_the_disk(self, guest: GuestVM) -> None:
        pod.check_kata_agent_after_ready(guest)
        mounted_by_warden_mounts(guest)
        disk = guest.run("readlink -f /dev/disk/by-id/virtio-initdata").stdout.strip()
        assert disk.startswith("/dev/vd"), disk
        # warden read the disk before kata-agent existed (through udev's by-id link); kata-agent then
        # found it by its magic and made its own copy: the same bytes, the same digest.
        warden_log = pod.journal(guest, "warden.service", 200)
        assert "initdata: /dev/disk/by-id/virtio-initdata " in warden_log, warden_log
        # The verifier ran while the supervisor started (bpf.kernel.loading.Preload): nothing loaded twice.
        assert "engine objects taken from the preload" in warden_log, warden_log
        assert "self_guard taken from the preload" in warden_log, warden_log
        assert f"initdata from {disk} written" in pod.journal(guest, "kata-agent.service")
        copy = guest.run("sha256sum /run/confidential-containers/initdata/initdata.toml", check=True).stdout.split()[0]
        assert f"sha256 {copy})" in warden_log, (copy, warden_log)

    def test_seed_policies_hold_in_kata_agent_containers(self, guest: GuestVM) -> None:
        pod.check_seed_policies(guest)

    def test_the_control_socket_admits_service_cgroups_and_refuses_a_scope(self, guest: GuestVM) -> None:
        """SO_PEERCRED uid 0 and the expected cgroup (issue 15 item 10), under the shipped default.

        The hooks above connected from kata-agent.service (their prestart was "ok"); `warden status`
        from the test bed's command agent (a service) is answered. The same root command in a
        transient scope, where kata-agent's systemd driver puts containers (kata_agent-<id>.scope),
        is refused with one line naming its cgroup.
        """
        assert guest.run("warden status").returncode == 0
        refused = guest.run("systemd-run --scope --quiet --unit=warden-cgroup-probe warden status")
        assert refused.returncode != 0
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
        assert " in cgroup /system.slice/warden-cgroup-probe.scope may not use the control socket " \
               "(control_allowed_cgroups: /, /system.slice/*.service)" in refused.stderr, refused.stderr
        assert "warden-cgroup-probe.scope" in pod.journal(guest, "warden.service", 50)

    def test_a_warden_crash_leaves_kata_agent_running(self, guest: GuestVM) -> None:
        pod.check_warden_crash_keeps_kata_agent(guest)

    def test_aael_record_written_once_the_attestation_agent_comes_up(self, guest: GuestVM) -> None:
        pod.check_aael_recorded_once_the_aa_is_up(guest)

    def test_kbs_update_higher_enforced_lower_and_foreign_refused(self, guest: GuestVM) -> None:
        pod.check_kbs_updates(guest)
