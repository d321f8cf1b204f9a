"""sd_notify for the supervisor, over the `sdnotify` package, with its flaws covered.

What `sdnotify.SystemdNotifier` gets wrong for us (anchors.md 1.7), and what this wrapper does:
- It encodes with Latin-1, while systemd reads `STATUS=` as UTF-8: characters above U+00FF raise
  (and the message is silently lost), U+0080..U+00FF arrive as invalid UTF-8. We send only ASCII:
  every other character, and every control character, is escaped as `\\uXXXX`-style text, and the
  status is one line, bounded in length. ASCII is the same bytes in Latin-1 and UTF-8.
- It swallows every error unless `debug=True`. We construct it with `debug=True` and catch the
  errors ourselves: a missing or unreachable socket is logged once (not on every watchdog ping),
  later failures are counted and logged when the state changes.
- It reads `$NOTIFY_SOCKET` once and knows nothing of `vsock:`; we say so instead of failing silently.
- It has no watchdog helpers: `watchdog_interval()` applies `$WATCHDOG_USEC` and `$WATCHDOG_PID`
  as sd_watchdog_enabled(3) says (use the watchdog only when WATCHDOG_PID is unset or ours).
- It leaves `$NOTIFY_SOCKET` in the environment: `child_environment()` removes the notify and
  watchdog variables so a supervised child never speaks for the supervisor.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import sdnotify

log = logging.getLogger("warden.notify")

MAX_STATUS_CHARS = 512  # systemd shows one line; a long message is truncated, not rejected
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def ascii_status(text: str, limit: int = MAX_STATUS_CHARS) -> str:
    """One printable-ASCII line: non-ASCII and control characters become escapes."""
    out: list[str] = []
    for char in " ".join(text.splitlines()):
        code = ord(char)
        if 0x20 <= code < 0x7F:
            out.append(char)
        elif code == 0x09:
            out.append(" ")
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    line = "".join(out)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between required pings (WATCHDOG_USEC), or None when the watchdog is not for us."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID", "")
    if watchdog_pid and (not watchdog_pid.isdigit() or int(watchdog_pid) != (os.getpid() if pid is None else pid)):
        return None
    return int(usec) / 1_000_000


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    for name in NOTIFY_ENV:
        env.pop(name, None)
    return env


class Notifier:
    """sd_notify with ASCII-safe STATUS and logged (once) failures. Never raises."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET")
        self.sent = 0
        self.failures = 0
        self._failing = False
        self._notifier: sdnotify.SystemdNotifier | None = None
        if not self.address:
            log.info("NOTIFY_SOCKET is not set: not running under systemd Type=notify; notifications are skipped")
            return
        if self.address.startswith("vsock"):
            log.warning("NOTIFY_SOCKET=%s is a vsock address, which sdnotify cannot reach; notifications skipped",
                        self.address)
            return
        # sdnotify reads the variable itself; make sure it reads the one we were given.
        previous = os.environ.get("NOTIFY_SOCKET")
        os.environ["NOTIFY_SOCKET"] = self.address
        try:
            self._notifier = sdnotify.SystemdNotifier(debug=True)
        except OSError as exc:
            log.warning("cannot connect to NOTIFY_SOCKET %s (%s); notifications are skipped",
                        self.address, exc.strerror or exc)
            self._notifier = None
        finally:
            if previous is None:
                os.environ.pop("NOTIFY_SOCKET", None)
            else:
                os.environ["NOTIFY_SOCKET"] = previous

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    def send(self, **fields: str | int) -> bool:
        """Send `NAME=value` lines (keyword names are the sd_notify field names); True if sent."""
        if self._notifier is None:
            return False
        lines = []
        for name, value in fields.items():
            text = ascii_status(str(value)) if name == "STATUS" else str(value)
            if "\n" in text or not text.isascii():
                raise ValueError(f"sd_notify field {name} must be one ASCII line")
            lines.append(f"{name}={text}")
        try:
            self._notifier.notify("\n".join(lines))
        except OSError as exc:
            self.failures += 1
            if not self._failing:
                log.warning("sd_notify to %s failed (%s); further failures are counted, not logged",
                            self.address, exc.strerror or exc)
                self._failing = True
            return False
        if self._failing:
            log.info("sd_notify to %s works again after %d failure(s)", self.address, self.failures)
            self._failing = False
        self.sent += 1
        return True

    # The messages warden sends, named for what they mean.
    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def reloading(self, status: str) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload (v253+) match this reload to its request.
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
                         STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        return self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))
