"""What the supervisor reports about itself: the STATUS line and the `warden status` document.

The state machine (supervisor.daemon) changes one `SupervisorState`; this module renders it, for
systemd's STATUS= (`ready_line`) and for the control socket's `status` request (`status_document`,
which `warden status` prints). Nothing here decides anything.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import Any

from supervisor.agent_runner import AgentSnapshot
from supervisor.notify import watchdog_interval
from trust.gate import VerifiedPolicy


class Phase(enum.StrEnum):
    """Where the supervisor is in its life (supervisor.daemon describes the transitions)."""

    STARTING = "starting"
    ATTESTING = "attesting"
    ENFORCING = "enforcing"
    READY = "ready"
    RELOADING = "reloading"
    GATE_REFUSED = "gate-refused"
    STOPPING = "stopping"


class EnforcedOrigin(enum.StrEnum):
    """Why the kernel enforces what it enforces."""

    GATE = "gate"  # the bundle the gate (or a reload) accepted
    BASELINE = "baseline"  # the image's baseline bundle, after a refused gate with nothing pinned
    KEPT = "kept"  # an earlier instance's pins, left as they were after a refused gate


@dataclass(frozen=True)
class Enforced:
    """What the kernel enforces now, and where it came from."""

    origin: EnforcedOrigin
    bundle_version: int | None  # None for KEPT: this instance never verified those pins' bundle
    bundle_digest: str | None
    ruleset_digest: str
    adopted: bool
    # Fields the enforced policies give that are not enforced as written, one line per policy
    # (bpf.policy.model.Policy.warning_summary); empty for KEPT (this instance never read those policies).
    policy_warnings: tuple[str, ...] = ()


@dataclass
class SupervisorState:
    """Everything the supervisor reports, changed only by the state machine."""

    phase: Phase = Phase.STARTING
    status_line: str = "starting"
    verified: VerifiedPolicy | None = None  # what the gate (or the last reload) accepted
    gate_error: str | None = None
    enforced: Enforced | None = None
    last_reload: dict[str, Any] | None = None
    health_problems: list[str] = field(default_factory=list)
    watchdog_pings: int = 0
    ready_after_s: float | None = None
    # Start-up split for `warden status` and the benchmark: self-protection, gate, enforcement (s).
    timings: dict[str, Any] = field(default_factory=dict)


def ready_line(verified: VerifiedPolicy, enforced: Enforced, agent: AgentSnapshot | None) -> str:
    """The STATUS line while READY: bundle, RuleSet digest, measurement source, and the agent."""
    insecure = f" INSECURE({verified.tee or 'sample'})" if verified.insecure else ""
    text = (
        f"enforcing bundle v{verified.bundle_version} ({verified.bundle_digest[:19]}), "
        f"ruleset {enforced.ruleset_digest[:19] or '?'}, measured by {verified.measurement_source}{insecure}"
    )
    if agent is not None:
        text += f"; {agent.summary()}"
    return text


def status_document(
    state: SupervisorState,
    *,
    engine: dict[str, Any] | None,
    agent: AgentSnapshot | None,
    containers: list[str],
    aael: dict[str, Any] | None = None,
    kbs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON object the control socket's `status` request answers with. `aael`: the AA event log
    record (supervisor.aael; None when record_ruleset is off); `kbs`: KBS polling (None when off)."""
    verified, enforced = state.verified, state.enforced
    return {
        "phase": str(state.phase),
        "status": state.status_line,
        "pid": os.getpid(),
        "ready_after_s": state.ready_after_s,
        "timings": state.timings,
        "gate": {
            "result": "accepted" if verified is not None else ("refused" if state.gate_error else "pending"),
            "error": state.gate_error,
            "measurement_source": verified.measurement_source if verified else None,
            "tee": verified.tee if verified else None,
            "insecure": verified.insecure if verified else None,
            "bundle_version": verified.bundle_version if verified else None,
            "bundle_digest": verified.bundle_digest if verified else None,
            "initdata_digest": f"{verified.initdata_algorithm}:{verified.initdata_digest}" if verified else None,
        },
        "enforcement": None if enforced is None else {
            "origin": enforced.origin.value,
            "bundle_version": enforced.bundle_version,
            "bundle_digest": enforced.bundle_digest,
            "ruleset_digest": enforced.ruleset_digest,
            "adopted": enforced.adopted,
            # None: not asked to (record_ruleset off, or not the gate's bundle); False: not yet
            "recorded_in_aael": (aael["recorded"] if aael is not None and enforced.origin is EnforcedOrigin.GATE
                                 and aael["ruleset"] == enforced.ruleset_digest else None),
            "policy_warnings": list(enforced.policy_warnings),
        },
        "aael": aael,
        "kbs_update": kbs,
        "engine": engine,
        "health": list(state.health_problems),
        "watchdog": {"interval_s": watchdog_interval(), "pings": state.watchdog_pings},
        "agent": agent.to_json() if agent is not None else None,
        "containers": containers,
        "last_reload": state.last_reload,
    }
