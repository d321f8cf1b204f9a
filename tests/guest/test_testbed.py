"""The test bed itself: the guest is the Kata-like VM the brief describes."""

from __future__ import annotations

from tests.guest.vm import GuestVM


def test_guest_runs_debian_61_kernel_with_bpf_lsm(guest: GuestVM) -> None:
    release = guest.run("uname -r", check=True).stdout.strip()
    assert release.startswith("6.1."), release
    lsms = guest.run("cat /sys/kernel/security/lsm", check=True).stdout.split(",")
    assert "bpf" in lsms


def test_systemd_is_pid1_and_commands_run_as_root_under_it(guest: GuestVM) -> None:
    assert guest.run("cat /proc/1/comm", check=True).stdout.strip() == "systemd"
    assert guest.run("id -u", check=True).stdout.strip() == "0"
    cgroup = guest.run("cat /proc/self/cgroup", check=True).stdout
    assert "warden-testbed-agent.service" in cgroup


def test_root_is_host_root_under_a_writable_overlay(guest: GuestVM) -> None:
    mounts = guest.run("findmnt -n -o FSTYPE /", check=True).stdout.strip()
    assert mounts == "overlay"
    # Writes land in the tmpfs upper layer, never on the host.
    guest.run("echo guest-only > /etc/warden-testbed-probe", check=True)
    assert guest.run("cat /etc/warden-testbed-probe", check=True).stdout == "guest-only\n"


def test_exit_codes_stdout_and_stderr_are_returned(guest: GuestVM) -> None:
    result = guest.run("echo out; echo err >&2; exit 7")
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")


def test_a_command_over_its_timeout_is_killed(guest: GuestVM) -> None:
    result = guest.run("sleep 30", timeout=1)
    assert result.timed_out
    assert result.returncode != 0


def test_python_runs_with_the_project_venv(guest: GuestVM) -> None:
    result = guest.python("import bpf.kernel.libbpf, supervisor; print(supervisor.__version__)", check=True)
    assert result.stdout.strip() == "0.1.0"
