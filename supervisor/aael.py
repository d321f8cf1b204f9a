"""Recording the enforced RuleSet digest in the attestation-agent's event log (AAEL), after READY.

The AA is often not there when warden becomes READY: in Kata it is started after kata-agent, which
starts after warden; in peer pods it may still be starting. So the record is written in the
background: once READY (it never delays READY), retried with capped exponential backoff (tenacity)
until the AA answers, then done. A reload that enforces a new RuleSet replaces the target: what is
recorded is what is enforced now (an unrecorded older RuleSet is not recorded after the fact).
`warden status` shows the state (`snapshot()`): which RuleSet, whether recorded, attempts, the last
error (e.g. "Extend eventlog not enabled" when aa.toml lacks `[eventlog_config] enable_eventlog = true`).

The event: domain `github.com/coco-warden`, operation `EnforcePolicy`, content
`{"bundle_version":N,"ruleset":"sha256:..."}` (attest.aa.record_ruleset_digest).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from attest.aa import AttestationAgentApi, record_ruleset_digest
from initdata.errors import GateError

log = logging.getLogger("warden.aael")


@dataclass(frozen=True)
class _Target:
    ruleset: str
    bundle_version: int | None
    since: float


class AaelRecorder:
    def __init__(self, client: Callable[[], AttestationAgentApi], *, wait_initial_s: float = 0.5,
                 wait_max_s: float = 15.0) -> None:
        self._client = client
        self._wait = wait_exponential(multiplier=wait_initial_s, max=wait_max_s)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._target: _Target | None = None
        self._recorded = False
        self._attempts = 0
        self._last_error: str | None = None
        self._recorded_after_s: float | None = None
        self._thread: threading.Thread | None = None
        self._given_up: _Target | None = None  # an unexpected error: not retried for this target

    def record(self, ruleset: str, bundle_version: int | None) -> None:
        """Record this RuleSet (replacing any earlier target), in the background."""
        with self._lock:
            self._target = _Target(ruleset, bundle_version, time.monotonic())
            self._recorded, self._attempts, self._last_error, self._recorded_after_s = False, 0, None, None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="warden-aael", daemon=True)
                self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            target = self._target
            return {
                "ruleset": target.ruleset if target else None,
                "bundle_version": target.bundle_version if target else None,
                "recorded": self._recorded if target else None,
                "attempts": self._attempts,
                "last_error": self._last_error,
                "recorded_after_s": self._recorded_after_s,
            }

    def recorded(self, ruleset: str) -> bool | None:
        """Whether this RuleSet is recorded; None when it is not the one being recorded."""
        with self._lock:
            if self._target is None or self._target.ruleset != ruleset:
                return None
            return self._recorded

    # -- the background thread ---------------------------------------------------------------------

    def _attempt(self, target: _Target) -> None:
        with self._lock:
            self._attempts += 1
        record_ruleset_digest(target.ruleset, bundle_version=target.bundle_version, client=self._client())

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)  # a stop or a new target cuts the wait short
        self._wake.clear()

    def _note_failure(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        with self._lock:
            first = self._last_error is None
            self._last_error = str(error)
        if first:
            log.info("RuleSet digest not recorded in the AA event log yet, retrying: %s", error)

    def _run(self) -> None:
        while not self._stopped:
            with self._lock:
                target = self._target if not self._recorded and self._target is not self._given_up else None
            if target is None:
                self._sleep(3600)
                continue

            def superseded(_state: RetryCallState, target: _Target = target) -> bool:
                return self._stopped or self._target is not target

            try:
                for attempt in Retrying(retry=retry_if_exception_type(GateError), wait=self._wait, stop=superseded,
                                        sleep=self._sleep, before_sleep=self._note_failure, reraise=True):
                    with attempt:
                        self._attempt(target)
            except GateError:
                continue  # stopped or superseded: the loop looks at the new target
            except Exception as exc:  # a bug must not end the thread silently; the state says it
                log.exception("recording in the AA event log failed")
                with self._lock:
                    self._last_error, self._given_up = f"{type(exc).__name__}: {exc}", target
                continue
            with self._lock:
                if self._target is target:
                    self._recorded = True
                    self._recorded_after_s = round(time.monotonic() - target.since, 3)
            log.info("RuleSet digest %s recorded in the AA event log (EnforcePolicy)", target.ruleset)
