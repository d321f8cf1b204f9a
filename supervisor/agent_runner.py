"""Supervise one agent child process: restart with capped exponential backoff and jitter (tenacity).

Policy:
- Any exit of the agent that the supervisor did not ask for is a crash (exit 0 included: the agent
  is meant to run forever). A program that cannot be started counts as a crash with code 127.
- Restart delay after the k-th consecutive crash: min(backoff_initial_s * 2^(k-1), backoff_max_s)
  plus a uniform jitter in [0, backoff_jitter_s] (tenacity wait_exponential + wait_random), so a
  crash-looping agent costs little and restarts of several guests do not synchronise.
- A run that lasted at least stable_after_s resets the backoff: the next crash is "the first" again.
- When crash_budget crashes fall within crash_window_s, the agent is `degraded`: reported in STATUS
  and status output. Enforcement does not depend on the agent (the BPF links are pinned), and the
  runner keeps restarting it; degraded clears once the window holds fewer crashes.
- The runner never gives up, so "healthy" for the watchdog means: the runner thread is alive and
  the agent is running or waiting out its backoff. Withholding the ping because the agent is
  degraded would only make systemd kill the supervisor, which restarts the same failing agent and
  forgets its crash history.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tenacity import RetryCallState, RetryError, Retrying, retry_if_result, wait_exponential, wait_random

from supervisor.config import AgentConfig

log = logging.getLogger("warden.agent_runner")


class AgentState(enum.StrEnum):
    DISABLED = "disabled"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass(frozen=True)
class AgentRun:
    returncode: int
    duration_s: float
    stopped: bool  # the supervisor asked it to stop


@dataclass(frozen=True)
class AgentSnapshot:
    state: AgentState
    pid: int | None
    starts: int
    crashes: int
    crashes_in_window: int
    degraded: bool
    last_exit: int | None
    last_backoff_s: float | None
    backoff_history: tuple[float, ...]  # most recent restart delays, oldest first

    def to_json(self) -> dict[str, object]:
        return {
            "state": str(self.state),
            "pid": self.pid,
            "starts": self.starts,
            "restarts": max(0, self.starts - 1),
            "crashes": self.crashes,
            "crashes_in_window": self.crashes_in_window,
            "degraded": self.degraded,
            "last_exit": self.last_exit,
            "last_backoff_s": self.last_backoff_s,
            "backoff_history": list(self.backoff_history),
        }

    def summary(self) -> str:
        text = f"agent {self.state}"
        if self.degraded:
            text += f" DEGRADED ({self.crashes_in_window} crashes in window)"
        if self.starts > 1:
            text += f", {self.starts - 1} restarts"
        return text


def backoff_policy(config: AgentConfig) -> wait_exponential:
    """The restart delay (without jitter): exponential from backoff_initial_s, capped at backoff_max_s."""
    return wait_exponential(multiplier=config.backoff_initial_s, max=config.backoff_max_s, exp_base=2)


class AgentRunner:
    """Runs `argv` as a child until stop(); see the module docstring for the restart policy."""

    def __init__(
        self,
        argv: Sequence[str],
        config: AgentConfig,
        *,
        env: Mapping[str, str] | None = None,
        on_change: Callable[[AgentSnapshot], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.argv = tuple(argv)
        self.config = config
        self.env = dict(env) if env is not None else None
        self._on_change = on_change
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._state = AgentState.DISABLED if not config.enabled else AgentState.STOPPED
        self._starts = 0
        self._crash_times: collections.deque[float] = collections.deque()
        self._crashes = 0
        self._last_exit: int | None = None
        self._backoffs: collections.deque[float] = collections.deque(maxlen=16)
        self._thread = threading.Thread(target=self._loop, name="warden-agent-runner", daemon=True)
        self._wait = backoff_policy(config) + wait_random(0, config.backoff_jitter_s)

    # -- public ------------------------------------------------------------------------

    def start(self) -> None:
        if self.config.enabled:
            self._thread.start()

    def stop(self) -> None:
        """Stop restarting, SIGTERM the agent, SIGKILL it after stop_timeout_s."""
        self._stop.set()
        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.config.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._thread.is_alive():
            self._thread.join(timeout=self.config.stop_timeout_s + 1)
        self._set_state(AgentState.STOPPED if self.config.enabled else AgentState.DISABLED)

    def healthy(self) -> bool:
        if not self.config.enabled or self._stop.is_set():
            return True
        return self._thread.is_alive()

    def snapshot(self) -> AgentSnapshot:
        with self._lock:
            now = self._clock()
            self._expire(now)
            in_window = len(self._crash_times)
            process = self._process
            return AgentSnapshot(
                state=self._state,
                pid=process.pid if process is not None and process.poll() is None else None,
                starts=self._starts,
                crashes=self._crashes,
                crashes_in_window=in_window,
                degraded=in_window >= self.config.crash_budget,
                last_exit=self._last_exit,
                last_backoff_s=self._backoffs[-1] if self._backoffs else None,
                backoff_history=tuple(self._backoffs),
            )

    # -- internals ---------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        while self._crash_times and now - self._crash_times[0] > self.config.crash_window_s:
            self._crash_times.popleft()

    def _set_state(self, state: AgentState) -> None:
        with self._lock:
            changed = state is not self._state
            self._state = state
        if changed and self._on_change is not None:
            self._on_change(self.snapshot())

    def _run_once(self) -> AgentRun:
        started = self._clock()
        self._set_state(AgentState.STARTING)
        try:
            process = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, close_fds=True,
            )
        except OSError as exc:
            log.error("agent %s cannot be started: %s", self.argv[0], exc.strerror or exc)
            return AgentRun(returncode=127, duration_s=0.0, stopped=self._stop.is_set())
        with self._lock:
            self._process = process
            self._starts += 1
        self._set_state(AgentState.RUNNING)
        log.info("agent started: pid %d (%s)", process.pid, " ".join(self.argv))
        while True:
            try:
                returncode = process.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if self._stop.is_set():
                    continue  # stop() signals the process; keep reaping
        duration = self._clock() - started
        return AgentRun(returncode=returncode, duration_s=duration, stopped=self._stop.is_set())

    def _should_restart(self, run: AgentRun) -> bool:
        """tenacity's retry predicate: True = crashed quickly, back off and restart."""
        if run.stopped or self._stop.is_set():
            return False
        now = self._clock()
        with self._lock:
            self._last_exit = run.returncode
            self._crashes += 1
            self._crash_times.append(now)
            self._expire(now)
            degraded = len(self._crash_times) >= self.config.crash_budget
        log.warning(
            "agent exited with %s after %.1fs%s",
            _describe_exit(run.returncode), run.duration_s, " (degraded: crash budget exhausted)" if degraded else "",
        )
        # A long, stable run ends this tenacity sequence: the outer loop restarts at once with a
        # fresh attempt counter, i.e. the backoff starts over.
        return run.duration_s < self.config.stable_after_s

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        delay = retry_state.upcoming_sleep
        with self._lock:
            self._backoffs.append(round(delay, 3))
        log.info("agent restart %d in %.2fs", retry_state.attempt_number, delay)
        self._set_state(AgentState.BACKOFF)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _stopped(self, _retry_state: RetryCallState) -> bool:
        return self._stop.is_set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            retrying = Retrying(
                retry=retry_if_result(self._should_restart),
                wait=self._wait,
                stop=self._stopped,
                sleep=self._sleep,  # interruptible: stop() ends a backoff at once
                before_sleep=self._before_sleep,
            )
            # RetryError: stop was requested while a restart was due.
            with contextlib.suppress(RetryError):
                retrying(self._run_once)
        with self._lock:
            self._process = None


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
