"""`warden agent`: turn enforcement events from the pinned ring buffer into KubeArmor-style alerts.

One JSON object per line on stdout (journald, when run by the supervisor) and, optionally, appended
to a file (KubeArmor's `logPath`). Field names are KubeArmor's alert fields (Timestamp, HostName,
ContainerName, PolicyName, Severity, Type, Operation, Resource, Action, Result, Enforcer, ...), as
decoded by `bpf.kernel.events.decode_event`.

The ring buffer is a pinned map (/sys/fs/bpf/warden/events), so it outlives any agent: events the
kernel wrote while no agent ran wait there and are delivered by the next agent. What did not fit is
counted by the kernel side; the agent reports increases of that drop counter as `SystemEvent` lines.

Throttling follows KubeArmor (alertThrottling, maxAlertPerSec, throttleSec): when more than
maxAlertPerSec alerts arrive within one second, one `AlertThreshold` alert is written and further
alerts are dropped for throttleSec seconds; the count of dropped alerts is reported when the
throttling interval ends.
"""

from __future__ import annotations

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

from supervisor.exit_codes import EXIT_FAILURE, EXIT_OK

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
    """The engine's pinned events ring buffer and self_guard's, decoded into alert field dicts.

    Raw events are decoded after each poll with the engine manifest as it is then, so a container
    registered after this agent started is still named in its alerts."""

    def __init__(self, pin_dir: Path, state_dir: Path) -> None:
        from bpf.kernel.engine import Engine
        from bpf.kernel.libbpf import BpfError, MapHandle, RingBuffer
        from bpf.kernel.self_protect import SelfGuard

        self._engine = Engine(pin_dir=pin_dir, state_dir=state_dir)
        self._guard = SelfGuard(pin_root=pin_dir, lib=self._engine.lib)
        self._raw: list[bytes] = []
        self._self_raw: list[bytes] = []
        self._handles: list[MapHandle] = []
        self._rings: list[RingBuffer] = []
        for path, sink, required in ((self._engine.events_pin, self._raw, True),
                                     (self._guard.pin_dir / "self_events", self._self_raw, False)):
            if not required and not path.exists():
                continue  # self-protection not loaded (a test bed, a tool): engine events only
            try:
                handle = MapHandle.open_pinned(self._engine.lib, path)
            except BpfError as exc:
                self.close()
                raise AgentError(f"{path}: cannot open the ring buffer ({exc})") from None
            self._handles.append(handle)
            self._rings.append(RingBuffer(self._engine.lib, handle.fd, sink.append))
        self._has_guard = len(self._rings) == 2

    def poll(self, timeout_ms: int) -> Iterator[object]:
        from bpf.kernel.events import EventDecodeError, decode_event
        from bpf.kernel.self_protect import decode_self_event

        self._rings[0].poll(timeout_ms)
        for ring in self._rings[1:]:
            ring.poll(0)
        # Drain in place: the ring buffer callbacks hold these very lists.
        raw, self_raw = list(self._raw), list(self._self_raw)
        self._raw.clear()
        self._self_raw.clear()
        if raw:
            context = self._engine.event_context()
            for item in raw:
                try:
                    yield decode_event(item, context)
                except EventDecodeError as exc:
                    yield system_event("UndecodableEvent", str(exc))
        for item in self_raw:
            try:
                yield self_protection_alert(decode_self_event(item))
            except ValueError as exc:
                yield system_event("UndecodableEvent", str(exc))

    def drops(self) -> int | None:
        return self._engine.event_drops() + (self._guard.drops() if self._has_guard else 0)

    def close(self) -> None:
        for ring in self._rings:
            ring.free()
        for handle in self._handles:
            handle.close()


def self_protection_alert(event: Any) -> dict[str, Any]:
    """A self_guard denial (bpf.kernel.self_protect.SelfEvent) in KubeArmor's alert shape."""
    from bpf.kernel.events import boot_to_unix_ns

    unix_ns = boot_to_unix_ns(event.ts_ns)
    return {
        "Timestamp": unix_ns // 1_000_000_000,
        "UpdatedTime": datetime.fromtimestamp(unix_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "HostName": socket.gethostname(),
        "HostPID": event.pid,
        "UID": event.uid,
        "ProcessName": event.comm,
        "PolicyName": "warden-self-protection",
        "Severity": "10",
        "Type": "MatchedHostPolicy",
        "Operation": event.attack,
        "Resource": event.name or (f"pid {event.target_pid}" if event.target_pid else ""),
        "Data": f"target_pid={event.target_pid} detail={event.detail} mnt_ns={event.mnt_ns}",
        "Enforcer": "BPFLSM",
        "Action": "Block",
        "Result": "Permission denied",
    }


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
        return EXIT_FAILURE
    try:
        writer = AlertWriter(sys.stdout, log_path)
    except OSError as exc:
        print(f"warden agent: {log_path}: cannot open for appending ({exc.strerror})", file=sys.stderr)
        source.close()
        return EXIT_FAILURE
    try:
        stats = run_agent(source, writer, throttle, should_stop=lambda: stopping, max_events=max_events)
    finally:
        writer.close()
        source.close()
    print(f"warden agent: stopped after {stats.events} events ({stats.throttled} throttled)", file=sys.stderr)
    return EXIT_OK
