"""`warden run`: the supervisor, a systemd `Type=notify` service in the guest VM.

Start-up, in order (STATUS says which step it is in):
1. read /etc/warden/warden.yaml (supervisor.config; unknown keys refused);
2. check the kernel side: bpffs mounted under pin_dir, securityfs mounted, `bpf` in the active LSMs;
3. open the control socket (register requests are answered "not ready, retry" until step 5);
4. run the attestation gate (trust.gate, fed by supervisor.gate_inputs) in a worker thread while the
   main thread keeps systemd's start timeout extended (EXTEND_TIMEOUT_USEC), since attestation may be slow;
5. load the accepted policies into the kernel, or adopt the pinned links a previous instance left
   (bpf.kernel.engine via supervisor.enforcement), then READY=1 with a STATUS naming bundle version,
   RuleSet digest and measurement source;
6. after READY, in the background: record the RuleSet digest in the AA event log, retried until the
   attestation-agent answers (supervisor.aael), and, when `kbs_update` is configured, poll the KBS
   resource for a newer bundle (supervisor.kbs_updates).

When the gate refuses: if nothing is enforced yet, enforce the baseline bundle shipped in the image
(its own signed bundle, verified with the image trust keys); if something is already enforced (a
previous instance's pins), keep it. Never READY; STATUS says why; exit 1 after
`gate_failure_exit_s` so that systemd's Restart= policy applies. Nothing enforced is removed: the
supervisor never unpins anything on any exit path.

Running: the watchdog is pinged at half of WATCHDOG_USEC only while health checks pass (the
engine's: pinned links attached, maps match the RuleSet digest; ours: the agent runner alive); a
failed check withholds the ping and logs why, so systemd restarts the supervisor. SIGHUP or a
control `reload` gates a newer bundle (RELOADING=1 ... READY=1); a refused bundle changes nothing.
A newer bundle polled from the KBS goes through the same gate (`apply_update`).
SIGTERM: STOPPING=1, stop the agent, exit 0; enforcement stays pinned.

This module is the state machine (Phase, in supervisor.status) and nothing else: the kernel
prerequisites are supervisor.prerequisites, the gate's I/O supervisor.gate_inputs and its decisions
trust/, registered containers supervisor.registry, and what is reported supervisor.status.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from attest.cdh import ResourceUri
from bpf.policy.model import Policy
from initdata.errors import GateError, MeasurementUnavailable
from supervisor.aael import AaelRecorder
from supervisor.agent_runner import AgentRunner, AgentSnapshot
from supervisor.config import WardenConfig
from supervisor.control import (
    ControlServer,
    RegisterRequest,
    ReloadRequest,
    Reply,
    Request,
    StatusRequest,
    UnregisterRequest,
)
from supervisor.enforcement import (
    Enforcement,
    EnforcementError,
    LoadSummary,
    check_shipped_objects,
    postures_from,
)
from supervisor.exit_codes import EXIT_FAILURE, EXIT_OK
from supervisor.gate_inputs import (
    accepted_update_path,
    gate_update,
    read_baseline,
    read_update_bundle,
    remember_update,
    start_gate,
)
from supervisor.kbs_updates import KbsPoller
from supervisor.notify import Notifier, child_environment, watchdog_interval
from supervisor.prerequisites import check_prerequisites
from supervisor.registry import REGISTRY_NAME, ContainerRegistry
from supervisor.status import (
    Enforced,
    EnforcedOrigin,
    Phase,
    SupervisorState,
    ready_line,
    status_document,
)
from trust.gate import VerifiedPolicy
from trust.identity import policies_for_pod

log = logging.getLogger("warden.daemon")

IDLE_TICK_S = 5.0


class AttestationDeadline(MeasurementUnavailable):
    """The whole gate (every source, every retry) did not finish within attestation_deadline_s."""


def enforced_by_gate(verified: VerifiedPolicy, summary: LoadSummary) -> Enforced:
    """What is enforced once the engine holds a bundle the gate (or a reload) accepted."""
    return Enforced(EnforcedOrigin.GATE, verified.bundle_version, verified.bundle_digest, summary.ruleset_digest,
                    adopted=summary.adopted, policy_warnings=summary.policy_warnings)


class Supervisor:
    """`warden run`'s state machine: gate, enforce, serve, watch; the module docstring has the steps.

    Threads: the main thread runs the phases and the watchdog loop; the gate runs in a worker during
    start-up; the control server and the agent runner call back from their own threads. `_lock`
    serialises every engine call, phase change and registry update between them.
    """

    def __init__(
        self,
        config: WardenConfig,
        *,
        notifier: Notifier | None = None,
        engine_factory: Callable[[Path, Path], Enforcement] = Enforcement,
    ) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self._engine_factory = engine_factory
        self.engine: Enforcement | None = None
        self.state = SupervisorState()
        self.started_at = time.monotonic()
        self._lock = threading.RLock()  # engine calls, phase and container registry
        self._wake = threading.Event()
        self._stop_requested = False
        self._reload_requested = False
        self._registry = ContainerRegistry(config.state_dir / REGISTRY_NAME)
        self._control: ControlServer | None = None
        self._agent: AgentRunner | None = None
        self._last_agent_degraded = False
        self._aael = AaelRecorder(config.gate.aa_client)
        self._kbs: KbsPoller | None = None

    # -- status ------------------------------------------------------------------------------

    def _set_status(self, text: str) -> None:
        self.state.status_line = text
        log.info("status: %s", text)
        self.notifier.status(text)

    def _ready_status(self) -> str:
        state = self.state
        assert state.enforced is not None and state.verified is not None
        return ready_line(state.verified, state.enforced, self._agent.snapshot() if self._agent is not None else None)

    def status(self) -> dict[str, Any]:
        engine_status: dict[str, Any] | None = None
        if self.engine is not None:
            with self._lock:
                engine_status = self.engine.status()
        agent = self._agent.snapshot() if self._agent is not None else None
        return status_document(self.state, engine=engine_status, agent=agent, containers=self._registry.ids(),
                               aael=self._aael.snapshot() if self.config.record_ruleset else None,
                               kbs=self._kbs.snapshot() if self._kbs is not None else None)

    # -- control socket ----------------------------------------------------------------------

    def handle_request(self, request: Request) -> Reply:
        if isinstance(request, StatusRequest):
            return Reply(ok=True, body={"status": self.status()})
        if isinstance(request, ReloadRequest):
            return self.reload(origin="control socket")
        if self.state.phase is not Phase.READY:
            return Reply.failure(f"supervisor is not ready (phase {self.state.phase}): {self.state.status_line}",
                                 retry=self.state.phase is not Phase.STOPPING)
        engine = self.engine
        assert engine is not None
        with self._lock:
            if isinstance(request, RegisterRequest):
                verified = self.state.verified
                return self._registry.register(engine, request, verified.pod if verified is not None else None)
            if isinstance(request, UnregisterRequest):
                return self._registry.unregister(engine, request)
        return Reply.failure("unsupported request")  # pragma: no cover - parse_request is exhaustive

    # -- gate and enforcement ----------------------------------------------------------------

    def _run_gate_with_extensions(self) -> VerifiedPolicy:
        """The gate in a worker thread; meanwhile keep systemd's start timeout extended, up to the
        total `attestation_deadline_s`: a trickling attestation-agent cannot keep us waiting longer.
        At the deadline the gate is refused (AttestationDeadline); the worker is abandoned (a daemon
        thread) and whatever it returns later is ignored."""
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["verified"] = start_gate(self.config)
            except BaseException as exc:
                result["error"] = exc

        worker = threading.Thread(target=work, name="warden-gate", daemon=True)
        started = time.monotonic()
        deadline = started + self.config.attestation_deadline_s
        worker.start()
        step = self.config.extend_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AttestationDeadline(
                    "attestation", "deadline",
                    f"the gate did not finish within attestation_deadline_s={self.config.attestation_deadline_s:g}s")
            # Never ask systemd for more than the deadline leaves (+ time to enforce the baseline).
            self.notifier.extend_timeout(min(step * 2, remaining + step))
            worker.join(timeout=min(step, remaining))
            if not worker.is_alive():
                break
            log.info("attestation still running after %.0fs", time.monotonic() - started)
        if "error" in result:
            raise result["error"]
        verified: VerifiedPolicy = result["verified"]
        return verified

    def _load(self, policies: tuple[Policy, ...]) -> LoadSummary:
        engine = self.engine
        assert engine is not None
        # Loading is bounded work, but the verifier is slow on an emulated CPU (about 9 s for all objects
        # under TCG, far more when the CPUs are shared): ask for the time once, so that systemd's start
        # timeout does not kill a load in progress.
        self.notifier.extend_timeout(self.config.enforce_timeout_s)
        container, host = self.config.postures, self.config.host_postures
        with self._lock:
            summary = engine.load(policies, postures_from(container.file, container.network, container.capabilities),
                                  postures_from(host.file, host.network, host.capabilities),
                                  node_labels=self.config.node_labels)
        for line in summary.policy_warnings:
            # Nothing accepted is silently not enforced: say so where the operator looks.
            log.warning("policy %s", line)
        return summary

    def _something_enforced(self) -> bool:
        """Whether an earlier instance left pinned enforcement (which must not be replaced by the baseline)."""
        engine = self.engine
        assert engine is not None
        with self._lock:
            return engine.is_loaded()

    def _on_gate_refused(self, error: str) -> int:
        self.state.phase = Phase.GATE_REFUSED
        self.state.gate_error = error
        deadline = f"exiting 1 in {self.config.gate_failure_exit_s:g}s"
        if self._something_enforced():
            # A previous instance was accepted and its pins are still attached: that is the policy the
            # owner signed for this VM; replacing it with the baseline would weaken or change it.
            self.state.enforced = Enforced(EnforcedOrigin.KEPT, None, None, "", adopted=True)
            self._set_status(f"NOT READY: gate refused: {error}; keeping the enforcement already pinned in "
                             f"{self.config.pin_dir}; {deadline}")
        else:
            try:
                baseline = read_baseline(self.config)
                summary = self._load(baseline.policies)
            except (GateError, EnforcementError) as exc:
                self._set_status(f"NOT READY: gate refused: {error}; baseline FAILED: {exc}; {deadline}")
            except Exception as exc:  # report it; the exit below lets systemd restart us
                self._set_status(f"NOT READY: gate refused: {error}; baseline FAILED: internal error "
                                 f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}; {deadline}")
            else:
                version, digest = baseline.payload.version, baseline.payload.digest
                self.state.enforced = Enforced(EnforcedOrigin.BASELINE, version, digest, summary.ruleset_digest,
                                               adopted=summary.adopted, policy_warnings=summary.policy_warnings)
                self._set_status(f"NOT READY: gate refused: {error}; enforcing baseline bundle v{version} "
                                 f"({digest[:19]}) ruleset {summary.ruleset_digest[:19]}; {deadline}")
        self._sleep_unless_stopped(self.config.gate_failure_exit_s)
        return EXIT_OK if self._stop_requested else EXIT_FAILURE

    def _sleep_unless_stopped(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.wait(min(remaining, 1.0))
            self._wake.clear()

    def _record(self, summary: LoadSummary, version: int) -> None:
        """Record the RuleSet in the AA event log, in the background (supervisor.aael): never delays READY."""
        if self.config.record_ruleset and summary.ruleset_digest:
            self._aael.record(summary.ruleset_digest, version)

    # -- reload ------------------------------------------------------------------------------

    def reload(self, *, origin: str) -> Reply:
        """Gate the update bundle file against the one in force; apply it only if accepted (a refused one
        changes nothing). Called for SIGHUP by the main loop and for `reload` by the control server."""
        with self._lock:
            not_ready = self._not_ready_for_updates()
            if not_ready is not None:
                return not_ready
            try:
                envelope = read_update_bundle(self.config)
            except GateError as exc:
                self.state.last_reload = {"result": "refused", "error": str(exc), "via": origin}
                log.warning("reload (%s) refused, running policy unchanged: %s", origin, exc)
                return Reply.failure(f"reload refused: {exc}")
            return self.apply_update(envelope, source=str(self.config.update_bundle), origin=origin)

    def _not_ready_for_updates(self) -> Reply | None:
        state = self.state
        if state.phase is not Phase.READY or state.verified is None:
            return Reply.failure(f"cannot reload in phase {state.phase}",
                                 retry=state.phase in (Phase.ATTESTING, Phase.ENFORCING, Phase.RELOADING))
        return None

    def apply_update(self, envelope: bytes, *, source: str, origin: str) -> Reply:
        """The one update gate (SIGHUP, control `reload`, KBS polling): `envelope` against the bundle in
        force (signatures, version > current, expiry, object digests); applied only if accepted."""
        state = self.state
        with self._lock:
            not_ready = self._not_ready_for_updates()
            if not_ready is not None or state.verified is None:
                return not_ready or Reply.failure("nothing verified to update")
            current = state.verified
            try:
                new = gate_update(envelope, current, self.config.gate, origin=source)
                check_shipped_objects(new)
            except (GateError, EnforcementError) as exc:
                self.state.last_reload = {"result": "refused", "error": str(exc), "via": origin}
                log.warning("reload (%s) refused, running policy unchanged: %s", origin, exc)
                return Reply.failure(f"reload refused: {exc}")
            if new is current:
                state.last_reload = {"result": "unchanged", "bundle_version": current.bundle_version, "via": origin}
                return Reply(ok=True, body={"reload": "unchanged", "bundle_version": current.bundle_version})
            # The rollback state now names the new version; a restart must find the envelope to resume it.
            try:
                remember_update(self.config, envelope)
            except OSError as exc:  # applying still gives the signers' newer policy; a restart fails closed
                log.error("%s: cannot keep the accepted update (%s): a restart will refuse the boot bundle as "
                          "older and keep the pinned enforcement", accepted_update_path(self.config), exc.strerror)
            self.state.phase = Phase.RELOADING
            self.notifier.reloading(f"reloading: bundle v{current.bundle_version} -> v{new.bundle_version}")
            try:
                summary = self._load(policies_for_pod(new.parsed_policies, new.pod))
            except EnforcementError as exc:
                self.state.phase = Phase.READY
                self.state.last_reload = {"result": "failed", "error": str(exc), "via": origin}
                self.notifier.ready(f"{self._ready_status()}; reload to v{new.bundle_version} FAILED: {exc}")
                return Reply.failure(f"reload failed: {exc}")
            state.verified = new
            state.enforced = enforced_by_gate(new, summary)
            self._record(summary, new.bundle_version)
            self.state.phase = Phase.READY
            self.state.last_reload = {"result": "applied", "bundle_version": new.bundle_version, "via": origin}
            self.state.status_line = self._ready_status()
            self.notifier.ready(self.state.status_line)
            log.info("reloaded: %s", self.state.status_line)
            return Reply(ok=True, body={"reload": "applied", "bundle_version": new.bundle_version,
                                        "ruleset": summary.ruleset_digest})

    # -- signals -----------------------------------------------------------------------------

    def _on_signal(self, signo: int, _frame: FrameType | None) -> None:
        if signo == signal.SIGHUP:
            self._reload_requested = True
        else:
            self._stop_requested = True
        self._wake.set()

    def install_signal_handlers(self) -> None:
        for signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signo, self._on_signal)

    # -- health and the watchdog -------------------------------------------------------------

    def check_health(self) -> list[str]:
        problems: list[str] = []
        engine = self.engine
        if engine is not None:
            with self._lock:
                problems.extend(engine.health())
        if self._agent is not None and not self._agent.healthy():
            problems.append("agent runner thread is not running")
        return problems

    def _serve(self) -> int:
        interval = watchdog_interval()
        period = interval / 2 if interval else IDLE_TICK_S
        next_ping = time.monotonic()
        withheld: list[str] = []
        while True:
            if self._stop_requested:
                return self._shutdown()
            if self._reload_requested:
                self._reload_requested = False
                self.reload(origin="SIGHUP")
            now = time.monotonic()
            if now >= next_ping:
                problems = self.check_health()
                self.state.health_problems = problems
                if not problems:
                    if interval:
                        self.notifier.watchdog()
                        self.state.watchdog_pings += 1
                    if withheld:
                        log.info("health restored; watchdog pings resume")
                    withheld = []
                elif problems != withheld:
                    log.error("health check failed, withholding the watchdog ping: %s", "; ".join(problems))
                    withheld = problems
                self._refresh_agent_status()
                next_ping = now + period
            self._wake.wait(max(0.0, next_ping - time.monotonic()))
            self._wake.clear()

    def _refresh_agent_status(self) -> None:
        if self._agent is None or self.state.phase is not Phase.READY:
            return
        degraded = self._agent.snapshot().degraded
        if degraded != self._last_agent_degraded:
            self._last_agent_degraded = degraded
            with self._lock:
                self._set_status(self._ready_status())

    def _on_agent_change(self, snapshot: AgentSnapshot) -> None:
        self._wake.set()  # the main loop refreshes STATUS (degraded or not) at its next tick

    def _shutdown(self) -> int:
        self.state.phase = Phase.STOPPING
        self.notifier.stopping("stopping: enforcement stays pinned")
        if self._kbs is not None:
            self._kbs.stop()
        self._aael.stop()
        if self._agent is not None:
            self._agent.stop()
        if self._control is not None:
            self._control.close()
        log.info("stopped; enforcement remains pinned in %s", self.config.pin_dir)
        return EXIT_OK

    # -- the whole run -----------------------------------------------------------------------

    def run(self) -> int:
        self.install_signal_handlers()
        self.config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._set_status("checking bpffs, securityfs and the BPF LSM")
        problems = check_prerequisites(self.config.pin_dir)
        if problems:
            self._set_status("NOT READY: " + "; ".join(problems))
            return EXIT_FAILURE
        self.engine = self._engine_factory(self.config.pin_dir, self.config.state_dir)
        # Self-protection first: it is not policy, so it holds whatever the gate decides.
        try:
            started = time.monotonic()
            log.info("%s", self.engine.protect_self())
            self.state.timings["self_protection_s"] = round(time.monotonic() - started, 3)
        except EnforcementError as exc:
            self._set_status(f"NOT READY: {exc}")
            return EXIT_FAILURE
        self._registry.load()
        self._control = ControlServer(self.config.control_socket, self.handle_request,
                                      allowed_cgroups=self.config.control_allowed_cgroups)
        self._control.start()
        try:
            return self._run_started()
        finally:
            if self._control is not None and self.state.phase is not Phase.STOPPING:
                self._control.close()

    def _run_started(self) -> int:
        self.state.phase = Phase.ATTESTING
        self._set_status("attesting: running the initdata gate")
        started = time.monotonic()
        try:
            verified = self._run_gate_with_extensions()
        except GateError as exc:
            log.error("gate refused: %s", exc)
            return self._on_gate_refused(str(exc))
        except Exception as exc:  # whatever escapes the gate still ends in the baseline
            reason = f"gate failed: internal error {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            log.error("%s", reason)
            return self._on_gate_refused(reason)
        finally:
            self.state.timings["gate_s"] = round(time.monotonic() - started, 3)
        try:
            check_shipped_objects(verified)
        except (GateError, EnforcementError) as exc:
            log.error("gate refused: %s", exc)
            return self._on_gate_refused(str(exc))
        if self._stop_requested:
            return self._shutdown()
        self.state.phase = Phase.ENFORCING
        self._set_status(f"gate accepted bundle v{verified.bundle_version}; loading enforcement")
        started = time.monotonic()
        try:
            summary = self._load(policies_for_pod(verified.parsed_policies, verified.pod))
        except EnforcementError as exc:
            log.error("%s", exc)
            self.state.gate_error = None
            self._set_status(f"NOT READY: bundle v{verified.bundle_version} accepted but {exc}")
            self._sleep_unless_stopped(self.config.gate_failure_exit_s)
            return EXIT_FAILURE
        self.state.timings["enforce_s"] = round(time.monotonic() - started, 3)
        self.state.timings["engine"] = dict(summary.timings_s)
        self.state.verified = verified
        self.state.enforced = enforced_by_gate(verified, summary)
        if self.config.agent.enabled:
            self._agent = AgentRunner(self.config.agent.argv(), self.config.agent, env=child_environment(),
                                      on_change=self._on_agent_change)
            self._agent.start()
        with self._lock:
            self.state.phase = Phase.READY
            self.state.ready_after_s = round(time.monotonic() - self.started_at, 3)
            self.state.status_line = self._ready_status()
            self.notifier.ready(self.state.status_line)
        log.info("READY after %.2fs: %s (%s)", self.state.ready_after_s, self.state.status_line,
                 "adopted existing pins" if summary.adopted else "loaded")
        self._record(summary, verified.bundle_version)
        self._start_kbs_polling()
        return self._serve()


    def _start_kbs_polling(self) -> None:
        kbs = self.config.kbs_update
        if kbs is None:
            return
        uri: ResourceUri = kbs.resource

        def apply(envelope: bytes, origin: str) -> Reply:
            return self.apply_update(envelope, source=origin, origin=f"kbs {origin}")

        self._kbs = KbsPoller(kbs.source(), uri, kbs.interval_s, apply)
        self._kbs.start()


def configure_logging(debug: bool = False) -> None:
    # journald adds its own timestamps; systemd-cat style "<level>" prefixes are not needed here.
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
