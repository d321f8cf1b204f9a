"""The supervisor's side of the kernel: the BPF engine and self-protection (bpf.kernel.engine, .self_protect).

`Enforcement` is the one object the daemon drives. It keeps the two BPF lifecycles apart, as the
objects are: self-protection is armed first and unconditionally (it is not policy: no bundle can
switch it off), the engine enforces whichever bundle the gate accepted. Every failure of either
becomes `EnforcementError` with a one-line message for STATUS and the journal.

The digest the supervisor reports as "the enforced RuleSet" covers the scopes every workload gets
(host and any-container): sha256 over their per-scope RuleSet digests. Registered containers add
scopes of their own; their digests are reported per container by the control socket.

It also supplies the kernel-side facts two other parts need: the digests of the BPF objects this
image ships, which trust.objects compares with the ones a bundle names (`check_shipped_objects`),
and the paths self-protection guards (`protected_paths`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trust
from bpf.kernel.engine import ContainerIdentity, Engine, EngineReport
from bpf.kernel.errors import EngineError
from bpf.kernel.libbpf import BpfError
from bpf.kernel.loading import OBJECTS, Preload
from bpf.kernel.objects import ObjectNotFound, object_digest, object_dir, object_path
from bpf.kernel.self_protect import SelfGuard, SelfGuardReport, SelfProtectionConfig, SelfProtectionError
from bpf.policy.compiler import Postures
from bpf.policy.model import Policy
from bpf.policy.ruleset import Posture
from trust.gate import VerifiedPolicy
from trust.objects import check_bpf_objects

# What a failing kernel-side call raises, besides bugs: the engine's and libbpf's errors, self-protection's,
# and OS errors (bpffs, /proc).
FAILURES: tuple[type[BaseException], ...] = (EngineError, BpfError, SelfProtectionError, ObjectNotFound, OSError)

# Scopes that apply without any registration; their digests make up the reported RuleSet digest.
STANDING_SCOPES = ("host", "any-container")


class EnforcementError(Exception):
    """The engine or self-protection failed; the message is one line for STATUS and logs."""


@dataclass(frozen=True)
class LoadSummary:
    """The parts of an EngineReport the supervisor reports (STATUS, status output, AAEL)."""

    ruleset_digest: str
    scope_digests: Mapping[str, str]
    adopted: bool  # every object's pinned links were kept (nothing loaded or attached)
    timings_s: Mapping[str, float]
    # One line per loaded policy with fields accepted but not enforced as written (Policy.warning_summary).
    policy_warnings: tuple[str, ...] = ()


def enforced_digest(scope_digests: Mapping[str, str]) -> str:
    standing = {name: scope_digests[name] for name in STANDING_SCOPES if name in scope_digests}
    canonical = json.dumps(standing, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def summarize(report: EngineReport, policies: Sequence[Policy] = ()) -> LoadSummary:
    return LoadSummary(ruleset_digest=enforced_digest(report.ruleset_digests),
                       scope_digests=dict(report.ruleset_digests), adopted=not report.loaded,
                       timings_s=dict(report.timings_s), policy_warnings=policy_warnings(policies))


def policy_warnings(policies: Sequence[Policy]) -> tuple[str, ...]:
    """What the policies say that is not enforced as written: one line per policy, in policy order."""
    return tuple(w for p in policies if (w := p.warning_summary()) is not None)


def shipped_objects() -> dict[str, str]:
    """File name -> sha256 of every BPF object this installation loads (what a bundle may pin)."""
    return {f"{name}.bpf.o": object_digest(object_path(name)) for name in (*OBJECTS, "self_guard")}


def check_shipped_objects(verified: VerifiedPolicy) -> None:
    """Hash the BPF objects this image ships, when the bundle names any, and let trust.objects decide.
    Raises BpfObjectMismatch, or EnforcementError when the shipped objects cannot be hashed."""
    if not verified.bpf_objects:
        return
    try:
        shipped = shipped_objects()
    except FAILURES as exc:
        raise EnforcementError(f"cannot hash the shipped BPF objects: {exc}") from None
    check_bpf_objects(verified.bpf_objects, shipped, origin=verified.bundle_origin)


def postures_from(file: str, network: str, capabilities: str) -> Postures:
    return Postures(file=Posture(file), network=Posture(network), capabilities=Posture(capabilities))


def protected_paths() -> tuple[Path, ...]:
    """What self-protection keeps an attacker from changing: configuration, trust keys, state, the
    installation (warden's packages, the trust package whose code makes every trust decision, the
    interpreter's tree, the BPF objects), the unit and the hooks."""
    import attest
    import bpf
    import initdata
    import supervisor

    candidates = [
        Path("/etc/warden"),
        Path("/run/warden"),
        Path(sys.prefix),  # the venv or the system prefix warden runs from
        Path(os.path.realpath(sys.executable)).parent.parent,  # the interpreter's own tree
        object_dir(),
        *(Path(pkg.__file__).resolve().parent for pkg in (attest, bpf, initdata, supervisor, trust)
          if pkg.__file__ is not None),
        Path("/etc/systemd/system/warden.service"),
        Path("/usr/lib/systemd/system/warden.service"),
        Path("/usr/share/oci/hooks"),
    ]
    return tuple(p for p in candidates if p.exists())


class Enforcement:
    def __init__(self, pin_dir: Path, state_dir: Path, preload: Preload | None = None) -> None:
        self.pin_dir = pin_dir
        self.engine = Engine(pin_dir=pin_dir, state_dir=state_dir, preload=preload)
        self._preload = preload
        self._guard: SelfGuard | None = None
        self._guard_report: SelfGuardReport | None = None

    def protect_self(self) -> str:
        """Load or adopt self_guard and arm it (identity, protected paths); also re-protect the engine's
        maps when they exist. Returns a one-line summary."""
        try:
            self._guard = SelfGuard(pin_root=self.pin_dir, lib=self.engine.lib, preload=self._preload)
            config = SelfProtectionConfig(protected_paths=protected_paths(), protected_map_ids=self.engine.map_ids())
            report = self._guard.load_or_adopt(config)
        except FAILURES as exc:
            raise EnforcementError(f"self-protection failed: {exc}") from None
        self._guard_report = report
        return (f"self-protection {'adopted' if report.adopted else 'loaded'}: {len(report.link_ids)} links, "
                f"{report.protected_inodes} protected paths")

    def load(self, policies: Sequence[Policy], postures: Postures, host_postures: Postures,
             node_labels: Mapping[str, str] | None = None) -> LoadSummary:
        """Enforce `policies` (load or adopt), then reserve write access to the engine's maps for warden.
        `node_labels` (the configuration's, when known) decide which host policies select this VM."""
        try:
            report = self.engine.load_or_adopt(policies, postures=postures, host_postures=host_postures,
                                               node_labels=node_labels)
            if self._guard is not None:
                self._guard.protect_maps(self.engine.map_ids())
        except FAILURES as exc:
            raise EnforcementError(f"enforcement failed: {exc}") from None
        return summarize(report, policies)

    def is_loaded(self) -> bool:
        """Whether pinned enforcement exists (left by this or an earlier instance)."""
        try:
            return bool(self.engine.map_ids())
        except FAILURES:
            return False

    def register_container(self, name: str, labels: Mapping[str, str], pid_ns: int, mnt_ns: int,
                           pid: int | None = None, *, kind: str = "container",
                           identity: ContainerIdentity | None = None) -> str:
        try:
            return self.engine.register_container(name, labels, pid_ns, mnt_ns, pid, kind=kind, identity=identity)
        except FAILURES as exc:
            raise EnforcementError(str(exc)) from None

    def unregister_container(self, pid_ns: int, mnt_ns: int) -> None:
        try:
            self.engine.unregister_container(pid_ns, mnt_ns)
        except FAILURES as exc:
            raise EnforcementError(str(exc)) from None

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.engine.status().to_json())
            if self._guard is not None and self._guard_report is not None:
                data["self_protection"] = {"adopted": self._guard_report.adopted,
                                           "links": {k: v.id for k, v in self._guard.link_infos().items()},
                                           "maps": self._guard_report.map_ids,
                                           "protected_paths": self._guard_report.protected_inodes,
                                           "drops": self._guard.drops()}
        except FAILURES as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        return data

    def health(self) -> list[str]:
        """Problems, one line each: the engine's, and self_guard's pinned links readable."""
        try:
            problems = self.engine.health()
            if self._guard is not None:
                self._guard.link_infos()
        except FAILURES as exc:
            problems = [f"health check failed: {type(exc).__name__}: {exc}"]
        return problems
