"""`warden agent` logic: KubeArmor throttling, the alert writer, drop reporting (the ring buffer itself is
exercised in the guest, tests/guest/test_supervisor_units.py)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

from supervisor.agent import AlertWriter, Throttle, alert_fields, run_agent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_admits_max_per_second_then_drops_for_throttle_sec() -> None:
    clock = Clock()
    throttle = Throttle(enabled=True, max_per_sec=3, throttle_sec=30, clock=clock)
    verdicts = [throttle.admit() for _ in range(5)]
    assert [admit for admit, _ in verdicts] == [True, True, True, False, False]
    threshold = verdicts[3][1][0]
    assert (threshold["Operation"], threshold["MaxAlertsPerSec"], threshold["DroppingAlertsInterval"]) == (
        "AlertThreshold", 3, 30)
    clock.now += 29.9
    assert throttle.admit() == (False, [])
    clock.now += 0.2
    admit, extra = throttle.admit()
    assert admit and extra[0]["DroppedAlerts"] == 3
    assert throttle.dropped == 3  # alerts 4, 5 and the one at +29.9 s


def test_throttle_window_slides_per_second() -> None:
    clock = Clock()
    throttle = Throttle(enabled=True, max_per_sec=2, throttle_sec=5, clock=clock)
    for _ in range(10):
        assert throttle.admit()[0]
        assert throttle.admit()[0]
        clock.now += 1.0


def test_disabled_throttle_admits_everything() -> None:
    throttle = Throttle(enabled=False, max_per_sec=1, throttle_sec=5)
    assert all(throttle.admit()[0] for _ in range(100))


class ListSource:
    def __init__(self, batches: list[list[object]], drops: list[int | None]) -> None:
        self.batches = batches
        self.drop_values = drops

    def poll(self, timeout_ms: int) -> Iterator[object]:
        yield from (self.batches.pop(0) if self.batches else [])

    def drops(self) -> int | None:
        return self.drop_values.pop(0) if len(self.drop_values) > 1 else self.drop_values[0]

    def close(self) -> None:
        pass


def test_run_agent_writes_json_lines_to_stdout_and_file(tmp_path: Path) -> None:
    alerts = [{"PolicyName": "block-shadow", "Action": "Block", "Result": "Permission denied", "Resource": f"/x{i}"}
              for i in range(3)]
    out = io.StringIO()
    log_path = tmp_path / "alerts.json"
    writer = AlertWriter(out, log_path)
    stats = run_agent(ListSource([alerts[:2], alerts[2:]], [2, 2, 5]), writer,
                      Throttle(enabled=False, max_per_sec=10, throttle_sec=30),
                      should_stop=lambda: False, max_events=3)
    writer.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["Operation"] for line in lines[:2]] == ["Drops", "AgentStarted"]
    assert lines[0]["Drops"] == 2
    assert [line.get("Resource") for line in lines[2:]] == ["/x0", "/x1", "/x2"]
    assert log_path.read_text() == out.getvalue()
    assert stats.events == 3 and stats.written == 3


def test_alert_fields_accepts_dataclasses_and_to_json() -> None:
    class WithJson:
        def to_json(self) -> str:
            return '{"Type": "MatchedPolicy"}'

    assert alert_fields(WithJson()) == {"Type": "MatchedPolicy"}
    assert alert_fields({"Type": "MatchedHostPolicy"}) == {"Type": "MatchedHostPolicy"}
