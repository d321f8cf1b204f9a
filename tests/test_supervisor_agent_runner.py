"""Agent supervision with real child processes: backoff growth, cap, jitter bounds, degraded, stop."""

from __future__ import annotations

import time
from dataclasses import replace

from tenacity import RetryCallState, Retrying

from supervisor.agent_runner import AgentRunner, AgentState, backoff_policy
from supervisor.config import AgentConfig

FAST = AgentConfig(backoff_initial_s=0.05, backoff_max_s=0.4, backoff_jitter_s=0.0, crash_budget=3,
                   crash_window_s=60, stable_after_s=30, stop_timeout_s=2)


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def delays(config: AgentConfig, attempts: int) -> list[float]:
    policy = backoff_policy(config)
    out = []
    for attempt in range(1, attempts + 1):
        state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        out.append(policy(state))
    return out


def test_backoff_policy_doubles_from_initial_and_is_capped() -> None:
    config = AgentConfig(backoff_initial_s=0.5, backoff_max_s=30)
    assert delays(config, 9) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_crashing_agent_backs_off_exponentially_and_turns_degraded() -> None:
    runner = AgentRunner(["/bin/sh", "-c", "exit 3"], FAST)
    runner.start()
    try:
        wait_for(lambda: len(runner.snapshot().backoff_history) >= 5)
        snap = runner.snapshot()
    finally:
        runner.stop()
    assert list(snap.backoff_history[:5]) == [0.05, 0.1, 0.2, 0.4, 0.4]
    assert snap.last_exit == 3
    assert snap.degraded and snap.crashes_in_window >= 3
    assert "DEGRADED" in snap.summary()
    assert runner.snapshot().state is AgentState.STOPPED


def test_jitter_stays_within_its_bound() -> None:
    config = replace(FAST, backoff_jitter_s=0.05)
    runner = AgentRunner(["/bin/false"], config)
    runner.start()
    try:
        wait_for(lambda: len(runner.snapshot().backoff_history) >= 4)
        history = runner.snapshot().backoff_history
    finally:
        runner.stop()
    for attempt, delay in enumerate(history[:4], start=1):
        base = min(0.05 * 2 ** (attempt - 1), 0.4)
        assert base <= delay <= base + 0.05 + 1e-9


def test_a_missing_program_is_a_crash_not_an_exception() -> None:
    runner = AgentRunner(["/nonexistent/agent"], FAST)
    runner.start()
    try:
        wait_for(lambda: runner.snapshot().crashes >= 2)
    finally:
        runner.stop()
    assert runner.snapshot().last_exit == 127


def test_stop_terminates_a_running_agent_and_no_restart_follows() -> None:
    runner = AgentRunner(["/bin/sleep", "60"], FAST)
    runner.start()
    wait_for(lambda: runner.snapshot().state is AgentState.RUNNING and runner.snapshot().pid is not None)
    started = time.monotonic()
    runner.stop()
    assert time.monotonic() - started < 3
    snap = runner.snapshot()
    assert (snap.state, snap.starts, snap.crashes, snap.pid) == (AgentState.STOPPED, 1, 0, None)
    assert runner.healthy()


def test_a_stable_run_resets_the_backoff() -> None:
    config = replace(FAST, stable_after_s=0.3)
    runner = AgentRunner(["/bin/sh", "-c", "sleep 0.4; exit 1"], config)
    runner.start()
    try:
        wait_for(lambda: runner.snapshot().starts >= 3, timeout=15)
    finally:
        runner.stop()
    # every run was stable: restarted at once, never backed off
    assert runner.snapshot().backoff_history == ()


def test_stop_ends_a_long_backoff_at_once() -> None:
    config = replace(FAST, backoff_initial_s=20, backoff_max_s=20)
    runner = AgentRunner(["/bin/false"], config)
    runner.start()
    wait_for(lambda: runner.snapshot().state is AgentState.BACKOFF)
    started = time.monotonic()
    runner.stop()
    assert time.monotonic() - started < 2


def test_disabled_agent_is_never_started() -> None:
    runner = AgentRunner(["/bin/false"], replace(FAST, enabled=False))
    runner.start()
    assert runner.snapshot().state is AgentState.DISABLED and runner.healthy()
