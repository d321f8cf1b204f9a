"""`warden run`: the supervisor, a systemd `Type=notify` service in the guest VM.

Start-up, in order (STATUS says which step it is in):
1. read /etc/warden/warden.yaml (supervisor.config; unknown keys refused);
2. check the kernel side: bpffs mounted under pin_dir, securityfs mounted, `bpf` in the active LSMs;
3. open the control socket (register requests are answered "not ready, retry" until step 5);
4. run the attestation gate (initdata.gate) in a worker thread while the main thread keeps systemd's
   start timeout extended (EXTEND_TIMEOUT_USEC), since attestation may be slow;
5. load the accepted policies into the kernel, or adopt the pinned links a previous instance left
   (bpf.engine via supervisor.enforcement), record the RuleSet digest in the AA event log, then
   READY=1 with a STATUS naming bundle version, RuleSet digest and measurement source.

When the gate refuses: if nothing is enforced yet, enforce the baseline bundle shipped in the image
(its own signed bundle, verified with the image trust keys); if something is already enforced (a
previous instance's pins), keep it. Never READY; STATUS says why; exit 1 after
`gate_failure_exit_s` so that systemd's Restart= policy applies. Nothing enforced is removed: the
supervisor never unpins anything on any exit path.

Running: the watchdog is pinged at half of WATCHDOG_USEC only while health checks pass (the
engine's: pinned links attached, maps match the RuleSet digest; ours: the agent runner alive); a
failed check withholds the ping and logs why, so systemd restarts the supervisor. SIGHUP or a
control `reload` gates a newer bundle (RELOADING=1 ... READY=1); a refused bundle changes nothing.
SIGTERM: STOPPING=1, stop the agent, exit 0; enforcement stays pinned.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from attest.aa import record_ruleset_digest
from bpf.policy.model import Policy
from initdata.errors import GateError, MalformedBundle
from initdata.gate import VerifiedPolicy, gate, gate_update, verify_bundle
from initdata.keys import load_trust_dir, read_bounded
from initdata.locate import locate_initdata
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
    check_expected_objects,
    postures_from,
)
from supervisor.notify import Notifier, child_environment, watchdog_interval

log = logging.getLogger("warden.daemon")

EXIT_OK = 0
EXIT_GATE_REFUSED = 1
EXIT_PREREQUISITES = 1
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
ACCEPTED_UPDATE_NAME = "accepted-update.bundle.json"
IDLE_TICK_S = 5.0


class Phase(enum.StrEnum):
    STARTING = "starting"
    ATTESTING = "attesting"
    ENFORCING = "enforcing"
    READY = "ready"
    RELOADING = "reloading"
    GATE_REFUSED = "gate-refused"
    STOPPING = "stopping"


class PrerequisiteError(Exception):
    """The kernel side is not usable (bpffs, securityfs, BPF LSM); one line."""


@dataclass(frozen=True)
class Enforced:
    """What the kernel enforces now, and where it came from."""

    origin: str  # "gate", "baseline", or "kept" (pins of an earlier instance left as they were)
    bundle_version: int | None
    bundle_digest: str | None
    ruleset_digest: str
    adopted: bool
    recorded_in_aael: bool | None


# -- kernel prerequisites ------------------------------------------------------------------------


def _mounts(mountinfo: Path) -> list[tuple[str, str]]:
    """(mount point, fs type) from /proc/self/mountinfo, in mount order."""
    mounts = []
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right:
            point = fields[4].replace("\\040", " ")
            mounts.append((point, right.split()[0]))
    return mounts


def check_prerequisites(pin_dir: Path, *, proc: Path = Path("/proc"),
                        securityfs: Path = Path("/sys/kernel/security")) -> list[str]:
    """Problems that make enforcement impossible; empty when bpffs, securityfs and BPF LSM are there."""
    problems = []
    try:
        mounts = _mounts(proc / "self" / "mountinfo")
    except OSError as exc:
        return [f"{proc}/self/mountinfo: cannot read ({exc.strerror})"]

    def fs_at(path: Path) -> str | None:
        best: tuple[int, str] | None = None
        for point, fstype in mounts:  # later mounts shadow earlier ones at the same point
            covers = path == Path(point) or Path(point) in path.parents
            if covers and (best is None or len(point) >= best[0]):
                best = (len(point), fstype)
        return None if best is None else best[1]

    if fs_at(pin_dir) != "bpf":
        problems.append(f"{pin_dir}: not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)")
    if fs_at(securityfs) != "securityfs":
        problems.append(f"{securityfs}: securityfs is not mounted")
    else:
        try:
            lsms = (securityfs / "lsm").read_text().strip().split(",")
        except OSError as exc:
            problems.append(f"{securityfs}/lsm: cannot read ({exc.strerror})")
        else:
            if "bpf" not in lsms:
                problems.append(f"BPF LSM is not active (lsm={','.join(lsms)}); boot with lsm=...,bpf")
    return problems


# -- the supervisor ------------------------------------------------------------------------------


class Supervisor:
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
        self.phase = Phase.STARTING
        self.status_line = "starting"
        self.verified: VerifiedPolicy | None = None
        self.gate_error: str | None = None
        self.enforced: Enforced | None = None
        self.last_reload: dict[str, Any] | None = None
        self.health_problems: list[str] = []
        self.watchdog_pings = 0
        self.started_at = time.monotonic()
        self.ready_after_s: float | None = None
        # Start-up split for `warden status` and the benchmark: self-protection, gate, enforcement (s).
        self.timings: dict[str, Any] = {}
        self._lock = threading.RLock()  # engine calls, phase and container registry
        self._wake = threading.Event()
        self._stop_requested = False
        self._reload_requested = False
        self._containers: dict[str, dict[str, Any]] = {}
        self._control: ControlServer | None = None
        self._agent: AgentRunner | None = None
        self._last_agent_degraded = False

    # -- status ------------------------------------------------------------------------------

    def _set_status(self, text: str) -> None:
        self.status_line = text
        log.info("status: %s", text)
        self.notifier.status(text)

    def _ready_status(self) -> str:
        enforced, verified = self.enforced, self.verified
        assert enforced is not None and verified is not None
        insecure = " INSECURE(sample)" if verified.insecure else ""
        text = (
            f"enforcing bundle v{verified.bundle_version} ({verified.bundle_digest[:19]}), "
            f"ruleset {enforced.ruleset_digest[:19] or '?'}, measured by {verified.measurement_source}{insecure}"
        )
        if self._agent is not None:
            text += f"; {self._agent.snapshot().summary()}"
        return text

    def status(self) -> dict[str, Any]:
        engine_status: dict[str, Any] | None = None
        if self.engine is not None:
            with self._lock:
                engine_status = self.engine.status()
        verified = self.verified
        agent: AgentSnapshot | None = self._agent.snapshot() if self._agent is not None else None
        return {
            "phase": str(self.phase),
            "status": self.status_line,
            "pid": os.getpid(),
            "ready_after_s": self.ready_after_s,
            "timings": self.timings,
            "gate": {
                "result": "accepted" if verified is not None else ("refused" if self.gate_error else "pending"),
                "error": self.gate_error,
                "measurement_source": verified.measurement_source if verified else None,
                "tee": verified.tee if verified else None,
                "insecure": verified.insecure if verified else None,
                "bundle_version": verified.bundle_version if verified else None,
                "bundle_digest": verified.bundle_digest if verified else None,
                "initdata_digest": f"{verified.initdata_algorithm}:{verified.initdata_digest}" if verified else None,
            },
            "enforcement": None if self.enforced is None else {
                "origin": self.enforced.origin,
                "bundle_version": self.enforced.bundle_version,
                "bundle_digest": self.enforced.bundle_digest,
                "ruleset_digest": self.enforced.ruleset_digest,
                "adopted": self.enforced.adopted,
                "recorded_in_aael": self.enforced.recorded_in_aael,
            },
            "engine": engine_status,
            "health": list(self.health_problems),
            "watchdog": {"interval_s": watchdog_interval(), "pings": self.watchdog_pings},
            "agent": agent.to_json() if agent is not None else None,
            "containers": sorted(self._containers),
            "last_reload": self.last_reload,
        }

    # -- container registry (persisted: poststop after a supervisor restart still finds the ids) --

    @property
    def _registry_path(self) -> Path:
        return self.config.state_dir / "containers.json"

    def _load_registry(self) -> None:
        try:
            data = json.loads(self._registry_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); starting with no registered containers", self._registry_path, exc)
            return
        if isinstance(data, dict):
            self._containers = {k: v for k, v in data.items() if isinstance(v, dict)}

    def _save_registry(self) -> None:
        tmp = self._registry_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._containers, sort_keys=True))
        os.replace(tmp, self._registry_path)

    # -- control socket ----------------------------------------------------------------------

    def handle_request(self, request: Request) -> Reply:
        if isinstance(request, StatusRequest):
            return Reply(ok=True, body={"status": self.status()})
        if isinstance(request, ReloadRequest):
            return self.reload(origin="control socket")
        if self.phase is not Phase.READY:
            return Reply.failure(f"supervisor is not ready (phase {self.phase}): {self.status_line}",
                                 retry=self.phase is not Phase.STOPPING)
        engine = self.engine
        assert engine is not None
        if isinstance(request, RegisterRequest):
            return self._register(engine, request)
        if isinstance(request, UnregisterRequest):
            return self._unregister(engine, request)
        return Reply.failure("unsupported request")  # pragma: no cover - parse_request is exhaustive

    def _register(self, engine: Enforcement, request: RegisterRequest) -> Reply:
        with self._lock:
            try:
                digest = engine.register_container(request.name, dict(request.labels), request.pid_ns, request.mnt_ns)
            except EnforcementError as exc:
                log.error("register %s failed: %s", request.container_id, exc)
                return Reply.failure(f"engine refused {request.container_id}: {exc}")
            self._containers[request.container_id] = {
                "name": request.name, "pid_ns": request.pid_ns, "mnt_ns": request.mnt_ns, "ruleset": digest,
            }
            self._save_registry()
        log.info("registered container %s (%s) pid_ns=%d mnt_ns=%d ruleset %s",
                 request.container_id, request.name, request.pid_ns, request.mnt_ns, digest)
        return Reply(ok=True, body={"ruleset": digest, "id": request.container_id})

    def _unregister(self, engine: Enforcement, request: UnregisterRequest) -> Reply:
        with self._lock:
            entry = self._containers.get(request.container_id)
            if entry is None:
                return Reply(ok=True, body={"id": request.container_id, "known": False})
            try:
                engine.unregister_container(int(entry["pid_ns"]), int(entry["mnt_ns"]))
            except EnforcementError as exc:
                return Reply.failure(f"engine could not unregister {request.container_id}: {exc}")
            del self._containers[request.container_id]
            self._save_registry()
        log.info("unregistered container %s", request.container_id)
        return Reply(ok=True, body={"id": request.container_id, "known": True})

    # -- gate and enforcement ----------------------------------------------------------------

    def _run_gate_with_extensions(self) -> VerifiedPolicy:
        """The gate in a worker thread; meanwhile keep systemd's start timeout extended."""
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["verified"] = self._gate()
            except BaseException as exc:
                result["error"] = exc

        worker = threading.Thread(target=work, name="warden-gate", daemon=True)
        worker.start()
        step = self.config.extend_timeout_s
        while True:
            self.notifier.extend_timeout(step * 2)
            worker.join(timeout=step)
            if not worker.is_alive():
                break
            log.info("attestation still running after %.0fs", time.monotonic() - self.started_at)
        if "error" in result:
            raise result["error"]
        verified: VerifiedPolicy = result["verified"]
        return verified

    @property
    def _accepted_update_path(self) -> Path:
        return self.config.state_dir / ACCEPTED_UPDATE_NAME

    def _gate(self) -> VerifiedPolicy:
        """The boot gate; after a reload earlier in this boot, the boot gate plus that update again.

        The rollback state (per boot) then names the update, so the initdata bundle alone would be
        refused as older: its measurement and signatures are checked without rollback memory (the
        measurement binds it to this VM for the whole boot), and the update must pass gate_update
        against it, rollback state included, exactly as when it was first applied."""
        document = locate_initdata(self.config.initdata)
        try:
            update = self._accepted_update_path.read_bytes()
        except FileNotFoundError:
            return gate(document, self.config.gate)
        except OSError as exc:
            raise MalformedBundle(str(self._accepted_update_path), "file", f"cannot be read ({exc.strerror})") from None
        boot = gate(document, replace(self.config.gate, state_dir=None))
        verified = gate_update(update, boot, self.config.gate, origin=str(self._accepted_update_path))
        log.info("resumed bundle v%d accepted by a reload earlier in this boot", verified.bundle_version)
        return verified

    def _remember_update(self, envelope: bytes) -> None:
        path = self._accepted_update_path
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(envelope)
        os.replace(tmp, path)

    def _load(self, policies: tuple[Policy, ...]) -> LoadSummary:
        engine = self.engine
        assert engine is not None
        container, host = self.config.postures, self.config.host_postures
        with self._lock:
            return engine.load(policies, postures_from(container.file, container.network, container.capabilities),
                               postures_from(host.file, host.network, host.capabilities))

    def _something_enforced(self) -> bool:
        """Whether an earlier instance left pinned enforcement (which must not be replaced by the baseline)."""
        engine = self.engine
        assert engine is not None
        with self._lock:
            return engine.is_loaded()

    def _load_baseline(self) -> tuple[int, str, tuple[Policy, ...]]:
        path = self.config.baseline_bundle
        envelope = read_bounded(path, MAX_BUNDLE_BYTES, field="baseline_bundle", error=MalformedBundle)
        trust = load_trust_dir(self.config.gate.trust_dir)
        payload, _signers, parsed = verify_bundle(
            envelope, origin=str(path), trust=trust, threshold=self.config.gate.threshold,
            state=None, now=datetime.now(UTC), parser=None,
        )
        return payload.version, payload.digest, parsed

    def _on_gate_refused(self, error: str) -> int:
        self.phase = Phase.GATE_REFUSED
        self.gate_error = error
        deadline = f"exiting 1 in {self.config.gate_failure_exit_s:g}s"
        if self._something_enforced():
            # A previous instance was accepted and its pins are still attached: that is the policy the
            # owner signed for this VM; replacing it with the baseline would weaken or change it.
            self.enforced = Enforced("kept", None, None, "", adopted=True, recorded_in_aael=None)
            self._set_status(f"NOT READY: gate refused: {error}; keeping the enforcement already pinned in "
                             f"{self.config.pin_dir}; {deadline}")
        else:
            try:
                version, digest, parsed = self._load_baseline()
                summary = self._load(parsed)
            except (GateError, EnforcementError) as exc:
                self._set_status(f"NOT READY: gate refused: {error}; baseline FAILED: {exc}; {deadline}")
            else:
                self.enforced = Enforced("baseline", version, digest, summary.ruleset_digest,
                                         adopted=summary.adopted, recorded_in_aael=None)
                self._set_status(f"NOT READY: gate refused: {error}; enforcing baseline bundle v{version} "
                                 f"({digest[:19]}) ruleset {summary.ruleset_digest[:19]}; {deadline}")
        self._sleep_unless_stopped(self.config.gate_failure_exit_s)
        return EXIT_OK if self._stop_requested else EXIT_GATE_REFUSED

    def _sleep_unless_stopped(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.wait(min(remaining, 1.0))
            self._wake.clear()

    def _record(self, summary: LoadSummary, version: int) -> bool | None:
        if not self.config.record_ruleset or not summary.ruleset_digest:
            return None
        recorded = record_ruleset_digest(summary.ruleset_digest, bundle_version=version,
                                         client=self.config.gate.aa_client())
        if not recorded:
            log.warning("RuleSet digest %s not recorded in the attestation-agent event log", summary.ruleset_digest)
        return recorded

    # -- reload ------------------------------------------------------------------------------

    def reload(self, *, origin: str) -> Reply:
        with self._lock:
            if self.phase is not Phase.READY or self.verified is None:
                return Reply.failure(f"cannot reload in phase {self.phase}", retry=self.phase is Phase.ATTESTING)
            path = self.config.update_bundle
            current = self.verified
            try:
                envelope = read_bounded(path, MAX_BUNDLE_BYTES, field="update_bundle", error=MalformedBundle)
                new = gate_update(envelope, current, self.config.gate, origin=str(path))
                check_expected_objects(new.bpf_objects)
            except (GateError, EnforcementError) as exc:
                self.last_reload = {"result": "refused", "error": str(exc), "via": origin}
                log.warning("reload (%s) refused, running policy unchanged: %s", origin, exc)
                return Reply.failure(f"reload refused: {exc}")
            if new is current:
                self.last_reload = {"result": "unchanged", "bundle_version": current.bundle_version, "via": origin}
                return Reply(ok=True, body={"reload": "unchanged", "bundle_version": current.bundle_version})
            # The rollback state now names the new version; a restart must find the envelope to resume it.
            try:
                self._remember_update(envelope)
            except OSError as exc:  # applying still gives the signers' newer policy; a restart fails closed
                log.error("%s: cannot keep the accepted update (%s): a restart will refuse the boot bundle as "
                          "older and keep the pinned enforcement", self._accepted_update_path, exc.strerror)
            self.phase = Phase.RELOADING
            self.notifier.reloading(f"reloading: bundle v{current.bundle_version} -> v{new.bundle_version}")
            try:
                summary = self._load(new.parsed_policies)
            except EnforcementError as exc:
                self.phase = Phase.READY
                self.last_reload = {"result": "failed", "error": str(exc), "via": origin}
                self.notifier.ready(f"{self._ready_status()}; reload to v{new.bundle_version} FAILED: {exc}")
                return Reply.failure(f"reload failed: {exc}")
            self.verified = new
            recorded = self._record(summary, new.bundle_version)
            self.enforced = Enforced("gate", new.bundle_version, new.bundle_digest, summary.ruleset_digest,
                                     adopted=summary.adopted, recorded_in_aael=recorded)
            self.phase = Phase.READY
            self.last_reload = {"result": "applied", "bundle_version": new.bundle_version, "via": origin}
            self.status_line = self._ready_status()
            self.notifier.ready(self.status_line)
            log.info("reloaded: %s", self.status_line)
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
                self.health_problems = problems
                if not problems:
                    if interval:
                        self.notifier.watchdog()
                        self.watchdog_pings += 1
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
        if self._agent is None or self.phase is not Phase.READY:
            return
        degraded = self._agent.snapshot().degraded
        if degraded != self._last_agent_degraded:
            self._last_agent_degraded = degraded
            with self._lock:
                self._set_status(self._ready_status())

    def _on_agent_change(self, snapshot: AgentSnapshot) -> None:
        self._wake.set()  # the main loop refreshes STATUS (degraded or not) at its next tick

    def _shutdown(self) -> int:
        self.phase = Phase.STOPPING
        self.notifier.stopping("stopping: enforcement stays pinned")
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
            return EXIT_PREREQUISITES
        self.engine = self._engine_factory(self.config.pin_dir, self.config.state_dir)
        # Self-protection first: it is not policy, so it holds whatever the gate decides.
        try:
            started = time.monotonic()
            log.info("%s", self.engine.protect_self())
            self.timings["self_protection_s"] = round(time.monotonic() - started, 3)
        except EnforcementError as exc:
            self._set_status(f"NOT READY: {exc}")
            return EXIT_PREREQUISITES
        self._load_registry()
        self._control = ControlServer(self.config.control_socket, self.handle_request)
        self._control.start()
        try:
            return self._run_started()
        finally:
            if self._control is not None and self.phase is not Phase.STOPPING:
                self._control.close()

    def _run_started(self) -> int:
        self.phase = Phase.ATTESTING
        self._set_status("attesting: running the initdata gate")
        started = time.monotonic()
        try:
            verified = self._run_gate_with_extensions()
        except GateError as exc:
            log.error("gate refused: %s", exc)
            return self._on_gate_refused(str(exc))
        finally:
            self.timings["gate_s"] = round(time.monotonic() - started, 3)
        try:
            check_expected_objects(verified.bpf_objects)
        except EnforcementError as exc:
            log.error("gate refused: %s", exc)
            return self._on_gate_refused(str(exc))
        if self._stop_requested:
            return self._shutdown()
        self.phase = Phase.ENFORCING
        self._set_status(f"gate accepted bundle v{verified.bundle_version}; loading enforcement")
        started = time.monotonic()
        try:
            summary = self._load(verified.parsed_policies)
        except EnforcementError as exc:
            log.error("%s", exc)
            self.gate_error = None
            self._set_status(f"NOT READY: bundle v{verified.bundle_version} accepted but {exc}")
            self._sleep_unless_stopped(self.config.gate_failure_exit_s)
            return EXIT_GATE_REFUSED
        self.timings["enforce_s"] = round(time.monotonic() - started, 3)
        self.timings["engine"] = dict(summary.timings_s)
        self.verified = verified
        self.enforced = Enforced("gate", verified.bundle_version, verified.bundle_digest, summary.ruleset_digest,
                                 adopted=summary.adopted,
                                 recorded_in_aael=self._record(summary, verified.bundle_version))
        if self.config.agent.enabled:
            self._agent = AgentRunner(self.config.agent.argv(), self.config.agent, env=child_environment(),
                                      on_change=self._on_agent_change)
            self._agent.start()
        with self._lock:
            self.phase = Phase.READY
            self.ready_after_s = round(time.monotonic() - self.started_at, 3)
            self.status_line = self._ready_status()
            self.notifier.ready(self.status_line)
        log.info("READY after %.2fs: %s (%s)", self.ready_after_s, self.status_line,
                 "adopted existing pins" if summary.adopted else "loaded")
        return self._serve()


def configure_logging(debug: bool = False) -> None:
    # journald adds its own timestamps; systemd-cat style "<level>" prefixes are not needed here.
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
