"""`warden agent`: turn enforcement events from the pinned ring buffer into KubeArmor-style alerts.

One JSON object per line on stdout (journald, when run by the supervisor) and, optionally, appended
to a file (KubeArmor's `logPath`). Field names are KubeArmor's alert fields (Timestamp, HostName,
ContainerName, PolicyName, Severity, Type, Operation, Resource, Action, Result, Enforcer, ...), as
decoded by `bpf.events.decode_event`.

The ring buffer is a pinned map (/sys/fs/bpf/warden/events), so it outlives any agent: events the
kernel wrote while no agent ran wait there and are delivered by the next agent. What did not fit is
counted by the kernel side; the agent reports increases of that drop counter as `SystemEvent` lines.

Throttling follows KubeArmor (alertThrottling, maxAlertPerSec, throttleSec): when more than
maxAlertPerSec alerts arrive within one second, one `AlertThreshold` alert is written and further
alerts are dropped for throttleSec seconds; the count of dropped alerts is reported when the
throttling interval ends.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

log = logging.getLogger("warden.agent")

EVENTS_PIN = "events"


class AgentError(Exception):
    """The agent cannot read events (ring buffer missing, engine module absent); one line."""


def alert_fields(alert: object) -> dict[str, Any]:
    """An Alert object (dataclass, to_json()/to_dict() or mapping) -> its KubeArmor field dict."""
    for method in ("to_dict", "to_json"):
        fn = getattr(alert, method, None)
        if callable(fn):
            value = fn()
            if isinstance(value, str):
                value = json.loads(value)
            if isinstance(value, dict):
                return value
    if is_dataclass(alert) and not isinstance(alert, type):
        return asdict(alert)
    if isinstance(alert, Mapping):
        return dict(alert)
    raise AgentError(f"cannot serialise alert of type {type(alert).__name__}")


def _timestamp() -> int:
    return int(time.time())


def system_event(operation: str, message: str, **extra: Any) -> dict[str, Any]:
    """A warden-generated line in the same shape as the alerts (KubeArmor Type "SystemEvent")."""
    return {
        "Timestamp": _timestamp(),
        "UpdatedTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "HostName": socket.gethostname(),
        "Type": "SystemEvent",
        "Operation": operation,
        "Message": message,
        "Enforcer": "BPFLSM",
        **extra,
    }


@dataclass
class Throttle:
    """KubeArmor's alert throttling; `admit` says whether an alert may be written now."""

    enabled: bool
    max_per_sec: int
    throttle_sec: int
    clock: Callable[[], float] = time.monotonic
    _window_start: float = 0.0
    _window_count: int = 0
    _throttled_until: float = 0.0
    dropped: int = 0
    _dropped_this_interval: int = field(default=0)

    def admit(self) -> tuple[bool, list[dict[str, Any]]]:
        """(write this alert?, extra lines to write before it)."""
        if not self.enabled:
            return True, []
        now = self.clock()
        extra: list[dict[str, Any]] = []
        if self._throttled_until:
            if now < self._throttled_until:
                self.dropped += 1
                self._dropped_this_interval += 1
                return False, []
            extra.append(system_event(
                "AlertThreshold",
                f"alert throttling ended; {self._dropped_this_interval} alerts were dropped",
                DroppedAlerts=self._dropped_this_interval,
            ))
            self._throttled_until = 0.0
            self._dropped_this_interval = 0
            self._window_start, self._window_count = now, 0
        if now - self._window_start >= 1.0:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        if self._window_count > self.max_per_sec:
            self._throttled_until = now + self.throttle_sec
            self.dropped += 1
            self._dropped_this_interval = 1
            extra.append(system_event(
                "AlertThreshold",
                f"more than {self.max_per_sec} alerts per second: dropping alerts for {self.throttle_sec}s",
                MaxAlertsPerSec=self.max_per_sec,
                DroppingAlertsInterval=self.throttle_sec,
            ))
            return False, extra
        return True, extra


class AlertWriter:
    """stdout plus an optional append-only file; a line is flushed as soon as it is written."""

    def __init__(self, stdout: IO[str], log_path: Path | None) -> None:
        self.stdout = stdout
        self.file: IO[str] | None = None
        self.written = 0
        if log_path is not None:
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self.file = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, sort_keys=False, separators=(",", ":"), default=str) + "\n"
        self.stdout.write(line)
        self.stdout.flush()
        if self.file is not None:
            self.file.write(line)
            self.file.flush()
        self.written += 1

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class EventSource(Protocol):
    """Where raw events come from: the pinned ring buffer, through the engine's decoder."""

    def poll(self, timeout_ms: int) -> Iterator[object]: ...

    def drops(self) -> int | None: ...

    def close(self) -> None: ...


class PinnedRingBufferSource:
    """The engine's pinned ring buffer, decoded by bpf.events.decode_event."""

    def __init__(self, pin_dir: Path, state_dir: Path) -> None:
        try:
            events_module = importlib.import_module("bpf.events")
            from bpf.loader import BpfError, Libbpf, RingBuffer
        except ImportError as exc:
            raise AgentError(f"the BPF event decoder is not available: {exc}") from None
        self._events = events_module
        self._pending: list[object] = []
        self._lib = Libbpf()
        path = pin_dir / EVENTS_PIN
        try:
            self._fd = self._lib.obj_get(path)
        except BpfError as exc:
            raise AgentError(f"{path}: cannot open the events ring buffer ({exc})") from None
        self._manifest = _load_manifest(events_module, pin_dir, state_dir)
        self._ring = RingBuffer(self._lib, self._fd, self._on_event)
        self._drops_reader: Callable[[], int | None] = _drops_reader(events_module, self._lib, pin_dir)

    def _on_event(self, raw: bytes) -> None:
        self._pending.append(self._events.decode_event(raw, self._manifest))

    def poll(self, timeout_ms: int) -> Iterator[object]:
        self._ring.poll(timeout_ms)
        pending, self._pending = self._pending, []
        yield from pending

    def drops(self) -> int | None:
        return self._drops_reader()

    def close(self) -> None:
        self._ring.free()
        os.close(self._fd)


def _load_manifest(events_module: Any, pin_dir: Path, state_dir: Path) -> object:
    loader = getattr(events_module, "load_manifest", None)
    if callable(loader):
        return loader(state_dir)
    return None


def _drops_reader(events_module: Any, lib: Any, pin_dir: Path) -> Callable[[], int | None]:
    reader = getattr(events_module, "read_drops", None)
    if callable(reader):
        return lambda: reader(pin_dir)
    return lambda: None


@dataclass
class AgentStats:
    events: int = 0
    written: int = 0
    throttled: int = 0
    drops: int | None = None


def run_agent(
    source: EventSource,
    writer: AlertWriter,
    throttle: Throttle,
    *,
    should_stop: Callable[[], bool],
    max_events: int | None = None,
    poll_ms: int = 250,
) -> AgentStats:
    stats = AgentStats()
    last_drops = source.drops()
    if last_drops:
        writer.write(system_event("Drops", f"{last_drops} events were dropped by the kernel before this agent started",
                                  Drops=last_drops))
    writer.write(system_event("AgentStarted", f"warden agent {os.getpid()} reading events"))
    while not should_stop():
        for alert in source.poll(poll_ms):
            stats.events += 1
            admit, extra = throttle.admit()
            for record in extra:
                writer.write(record)
            if admit:
                writer.write(alert_fields(alert))
                stats.written += 1
            else:
                stats.throttled += 1
            if max_events is not None and stats.events >= max_events:
                return stats
        drops = source.drops()
        if drops is not None and last_drops is not None and drops > last_drops:
            writer.write(system_event("Drops", f"{drops - last_drops} events dropped (ring buffer full)",
                                      Drops=drops))
        if drops is not None:
            last_drops = drops
        stats.drops = drops
    return stats


def main_with(pin_dir: Path, state_dir: Path, throttle: Throttle, log_path: Path | None,
              max_events: int | None) -> int:
    stopping = False

    def on_signal(_signo: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        source = PinnedRingBufferSource(pin_dir, state_dir)
    except AgentError as exc:
        print(f"warden agent: {exc}", file=sys.stderr)
        return 1
    try:
        writer = AlertWriter(sys.stdout, log_path)
    except OSError as exc:
        print(f"warden agent: {log_path}: cannot open for appending ({exc.strerror})", file=sys.stderr)
        source.close()
        return 1
    try:
        stats = run_agent(source, writer, throttle, should_stop=lambda: stopping, max_events=max_events)
    finally:
        writer.close()
        source.close()
    print(f"warden agent: stopped after {stats.events} events ({stats.throttled} throttled)", file=sys.stderr)
    return 0
