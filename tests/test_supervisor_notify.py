"""The sd_notify wrapper against a real AF_UNIX datagram socket (what systemd listens on)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.notify import Notifier, ascii_status, child_environment, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def receive(sock: socket.socket) -> bytes:
    return sock.recv(65536)


def test_ready_and_status_arrive_as_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("enforcing bundle v1")
    assert receive(sock) == b"READY=1\nSTATUS=enforcing bundle v1"
    assert notifier.watchdog()
    assert receive(sock) == b"WATCHDOG=1"
    assert notifier.extend_timeout(2.5)
    assert receive(sock) == b"EXTEND_TIMEOUT_USEC=2500000"


def test_status_is_ascii_one_line_even_for_text_sdnotify_would_lose(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    # U+2192 is above U+00FF: plain sdnotify raises inside and silently drops the whole message.
    assert notifier.status("bundle v1 \u2192 v2: caf\u00e9\nsecond line\x07")
    data = receive(sock)
    assert data == b"STATUS=bundle v1 \\u2192 v2: caf\\xe9 second line\\x07"
    assert data.decode("ascii")


def test_reloading_carries_monotonic_usec(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    Notifier({"NOTIFY_SOCKET": path}).reloading("reloading")
    fields = dict(line.split("=", 1) for line in receive(sock).decode().splitlines())
    assert fields["RELOADING"] == "1"
    assert fields["MONOTONIC_USEC"].isdigit()


def test_abstract_socket_address() -> None:
    name = f"warden-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("abstract")
        assert receive(sock) == b"STATUS=abstract"
    finally:
        sock.close()


def test_missing_socket_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="warden.notify")
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    for _ in range(5):
        assert not notifier.watchdog()
    records = [r for r in caplog.records if r.name == "warden.notify"]
    assert len(records) == 1
    assert "nobody-listens" in records[0].getMessage()


def test_unset_socket_is_logged_once_and_nothing_is_sent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="warden.notify")
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert len([r for r in caplog.records if r.name == "warden.notify"]) == 1


def test_socket_vanishing_later_is_logged_once_and_counted(
    listener: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = listener
    caplog.set_level(logging.INFO, logger="warden.notify")
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.watchdog()
    sock.close()
    os.unlink(path)
    for _ in range(4):
        assert not notifier.watchdog()
    assert notifier.failures == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1


def test_vsock_address_is_reported_not_silently_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="warden.notify")
    notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "vsock" in caplog.text


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "10000000"}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4242"}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),  # someone else's watchdog
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_honours_watchdog_pid(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, pid=4242) == expected


def test_children_do_not_inherit_the_notify_socket() -> None:
    env = child_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin"})
    assert env == {"PATH": "/bin"}


def test_long_status_is_truncated() -> None:
    assert len(ascii_status("x" * 5000)) == 512
