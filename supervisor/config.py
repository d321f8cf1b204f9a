"""`/etc/warden/warden.yaml`: the supervisor's configuration.

Every key is listed in `KEYS` below with its meaning; `units/etc/warden/warden.yaml` shows
them all with their defaults. Unknown keys are refused (a typo must not silently fall back to a
default in a security component), and each problem is reported as one line naming the file and
the key.

The same reader (`read_config_document`, then `parse_gate_config`) reads the file of gate keys alone
that `warden verify --config` takes, so every configuration file has one set of rules and limits.

Trust boundary: the file is part of the measured guest image (or laid down by the image build), so
it is trusted configuration; it is still parsed strictly, bounded in size, and never executed.

Top-level keys (snake_case, like the gate's):

    gate:                  the attestation gate (GATE_KEYS, GateConfig: trust_dir, threshold,
                           trust_modes, measurement_sources, insecure_allow_sample, state_dir,
                           attestation_agent_url, attestation_agent_timeout)
    initdata:              explicit initdata path; null = where the guest has it (initdata.locate)
    baseline_bundle:       signed bundle shipped in the image, enforced when the gate refuses
    update_bundle:         where a newer signed bundle is read on SIGHUP / control `reload`
    pin_dir:               bpffs directory of warden's pinned links and maps
    state_dir:             runtime state (containers registered by the hook, engine state)
    control_socket:        the control socket (newline-delimited JSON, mode 0600)
    gate_failure_exit_s:   after a refused gate: enforce the baseline, then exit 1 after this long
    extend_timeout_s:      while the gate runs, ask systemd for this much more start time, repeatedly
    attestation_deadline_s: the gate's total time; past it the gate is refused (baseline), never extended
    enforce_timeout_s:     before loading the BPF objects, ask systemd for this much more start time, once
                           (the verifier's load is bounded work, but slow on an emulated CPU)
    record_ruleset:        after READY, record the RuleSet digest in the AA event log (AAEL), in the
                           background until the attestation-agent answers (supervisor.aael)
    kbs_update:            poll a CDH resource for a newer bundle (KBS_UPDATE_KEYS), or null for none
    postures:              default postures for containers {file, network, capabilities}: allow|audit|block
    host_postures:         the same for the host scope
    node_labels:           this VM's Kubernetes node labels {key: value}, or null (unknown): with a map,
                           a host policy applies only when every nodeSelector.matchLabels entry is in it;
                           null: every host policy applies (the VM is its only node)
    agent:                 the supervised agent (see AGENT_KEYS)
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attest.aa import DEFAULT_AA_URL, AttestationAgentApi, attestation_agent
from attest.cdh import DEFAULT_CDH_SOCKET, ResourceSource, ResourceUri, parse_resource_uri, resource_source
from attest.detect import DEFAULT_SOURCE_ORDER, INSECURE_SOURCE_NAMES, SOURCE_NAMES
from initdata.errors import ConfigError, GateError
from initdata.keys import DEFAULT_TRUST_DIR
from initdata.rollback import parse_kbs_uri
from supervisor.control import DEFAULT_ALLOWED_CGROUPS
from supervisor.locations import DEFAULT_CONFIG_PATH
from trust.rules import GateRules, TrustMode

MAX_CONFIG_BYTES = 64 * 1024
POSTURE_VALUES = ("allow", "audit", "block")
DEFAULT_STATE_DIR = Path("/run/warden")

KEYS: dict[str, str] = {
    "gate": "attestation gate settings (GATE_KEYS)",
    "initdata": "explicit initdata path, or null to look where the guest has it",
    "baseline_bundle": "signed baseline bundle in the image, enforced when the gate refuses",
    "update_bundle": "newer signed bundle read on SIGHUP or a control-socket reload",
    "pin_dir": "bpffs directory of the pinned links and maps",
    "state_dir": "runtime state directory",
    "control_socket": "control socket path",
    "control_allowed_cgroups": "cgroup v2 paths (* within a component) whose root processes may use the control "
                               "socket, or null for no cgroup check",
    "gate_failure_exit_s": "seconds to keep the baseline STATUS before exiting 1 after a refused gate",
    "extend_timeout_s": "EXTEND_TIMEOUT_USEC step while the gate runs, seconds",
    "attestation_deadline_s": "total time the gate may take before it is refused, seconds",
    "enforce_timeout_s": "EXTEND_TIMEOUT_USEC once before loading the BPF objects, seconds",
    "record_ruleset": "record the RuleSet digest in the attestation-agent event log",
    "postures": "container default postures: file, network, capabilities",
    "host_postures": "host default postures: file, network, capabilities",
    "node_labels": "this VM's node labels for host policies' nodeSelector, or null (every host policy applies)",
    "agent": "the supervised agent",
    "kbs_update": "poll a Confidential Data Hub resource for a newer bundle (KBS_UPDATE_KEYS), or null",
}

KBS_UPDATE_KEYS: dict[str, str] = {
    "resource": "kbs:///<repository>/<type>/<tag> of the signed bundle in the KBS",
    "cdh_url": "the CDH: its ttrpc socket (unix://...) or api-server-rest (http(s)://...)",
    "interval_s": "seconds between polls",
    "timeout_s": "seconds per fetch",
}

# The agent's throttling keys keep KubeArmor's names (kubearmor.yaml: alertThrottling,
# maxAlertPerSec, throttleSec), so an operator's KubeArmor settings carry over unchanged.
AGENT_KEYS: dict[str, str] = {
    "enabled": "run an agent at all",
    "command": "argv of the agent; default: this warden's `agent` subcommand",
    "backoff_initial_s": "first restart delay after a crash",
    "backoff_max_s": "cap of the exponential restart delay",
    "backoff_jitter_s": "random extra delay, up to this much",
    "crash_budget": "crashes within crash_window_s after which the agent is reported degraded",
    "crash_window_s": "the window for crash_budget",
    "stable_after_s": "a run at least this long resets the backoff",
    "stop_timeout_s": "SIGTERM grace before SIGKILL when stopping the agent",
    "alertThrottling": "throttle alerts (KubeArmor key)",
    "maxAlertPerSec": "alerts per second before throttling starts (KubeArmor key)",
    "throttleSec": "seconds alerts are dropped once throttling starts (KubeArmor key)",
    "logPath": "extra alert output file, or null (KubeArmor key; stdout always)",
}

GATE_KEYS: dict[str, str] = {
    "trust_dir": "image trust keys (*.pem) for bundles and the baseline",
    "threshold": "distinct trusted keys that must sign a bundle",
    "trust_modes": "image and/or initdata (keys carried in warden.trust)",
    "measurement_sources": "measurement sources, tried in this order",
    "insecure_allow_sample": "accept a VM without a TEE (development only; reported INSECURE)",
    "insecure_sources": "measurements no TEE vouches for, accepted INSECURE-labelled: vtpm, sample",
    "max_validity_days": "refuse bundles valid longer than this many days (from issued_at, else now); null: no bound",
    "minimum_version_resource": "kbs:///repo/type/tag holding the minimum bundle version, fetched after attestation",
    "state_dir": "rollback state directory (per boot), or null for no rollback memory",
    "attestation_agent_url": "the attestation-agent: its ttrpc socket (unix://...) or api-server-rest (http(s)://...)",
    "attestation_agent_timeout": "seconds per attestation-agent request",
    "vtpm_amd_certs": "where a vTPM's HCL report's VCEK and ASK come from: imds (Azure THIM) or an absolute PEM path",
}

POSTURE_KEYS = ("file", "network", "capabilities")


@dataclass(frozen=True)
class GateConfig:
    """The `gate:` section: what the gate requires (`rules`, trust.rules) and where its inputs are.

    Keys, with the same names in YAML (GATE_KEYS):
    - trust_dir: image keys (`image` trust mode), *.pem files
    - threshold, trust_modes, insecure_allow_sample: the rules (trust.rules.GateRules)
    - measurement_sources: the order sources are tried in (attest.detect explains the rule)
    - state_dir: where the rollback state lives (a tmpfs: the state is per boot); None only for
      offline checks (`warden verify` without --state-dir): no rollback memory
    - attestation_agent_url / _timeout: the attestation-agent's ttrpc socket (default,
      unix:///run/confidential-containers/attestation-agent/attestation-agent.sock) or
      api-server-rest of guest-components (http://127.0.0.1:8006)
    - vtpm_amd_certs: where the VCEK and ASK for a vTPM's HCL report come from (attest.vtpm):
      `imds` (Azure's THIM endpoint) or an absolute path to a PEM file (VCEK, then ASK)
    """

    trust_dir: Path = DEFAULT_TRUST_DIR
    threshold: int = 1
    trust_modes: tuple[TrustMode, ...] = (TrustMode.IMAGE,)
    measurement_sources: tuple[str, ...] = DEFAULT_SOURCE_ORDER
    insecure_allow_sample: bool = False
    insecure_sources: tuple[str, ...] = ()
    max_validity_days: int | None = None
    minimum_version_resource: str | None = None
    state_dir: Path | None = DEFAULT_STATE_DIR
    attestation_agent_url: str = DEFAULT_AA_URL
    attestation_agent_timeout: float = 2.0
    vtpm_amd_certs: str = "imds"

    @property
    def rules(self) -> GateRules:
        return GateRules(
            threshold=self.threshold, trust_modes=self.trust_modes, insecure_allow_sample=self.insecure_allow_sample,
            insecure_sources=frozenset(self.insecure_sources), max_validity_days=self.max_validity_days,
        )

    def aa_client(self) -> AttestationAgentApi:
        return attestation_agent(self.attestation_agent_url, timeout=self.attestation_agent_timeout)


@dataclass(frozen=True)
class PostureConfig:
    file: str = "audit"
    network: str = "audit"
    capabilities: str = "audit"


def default_agent_command() -> tuple[str, ...]:
    """`warden agent` from the same installation as the running supervisor."""
    warden = Path(sys.argv[0]) if sys.argv and Path(sys.argv[0]).name == "warden" else None
    if warden is not None and warden.is_absolute():
        return (str(warden), "agent")
    found = shutil.which("warden")
    if found:
        return (found, "agent")
    return (sys.executable, "-m", "supervisor.cli", "agent")


@dataclass(frozen=True)
class AgentConfig:
    enabled: bool = True
    command: tuple[str, ...] = ()  # empty = default_agent_command()
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_jitter_s: float = 0.5
    crash_budget: int = 5
    crash_window_s: float = 60.0
    stable_after_s: float = 30.0
    stop_timeout_s: float = 5.0
    alert_throttling: bool = True
    max_alert_per_sec: int = 10
    throttle_sec: int = 30
    log_path: Path | None = None

    def argv(self) -> tuple[str, ...]:
        return self.command or default_agent_command()


@dataclass(frozen=True)
class KbsUpdateConfig:
    resource: ResourceUri
    cdh_url: str = DEFAULT_CDH_SOCKET
    interval_s: float = 60.0
    timeout_s: float = 5.0

    def source(self) -> ResourceSource:
        return resource_source(self.cdh_url, timeout=self.timeout_s)


@dataclass(frozen=True)
class WardenConfig:
    origin: str = "built-in defaults"
    gate: GateConfig = field(default_factory=GateConfig)
    initdata: Path | None = None
    baseline_bundle: Path = Path("/usr/share/warden/baseline.bundle.json")
    update_bundle: Path = Path("/var/lib/warden/update.bundle.json")  # signed: needs no protection
    pin_dir: Path = Path("/sys/fs/bpf/warden")
    state_dir: Path = Path("/run/warden")
    control_socket: Path = Path("/run/warden/warden.sock")
    control_allowed_cgroups: tuple[str, ...] | None = DEFAULT_ALLOWED_CGROUPS
    gate_failure_exit_s: float = 30.0
    extend_timeout_s: float = 30.0
    attestation_deadline_s: float = 120.0
    enforce_timeout_s: float = 300.0
    record_ruleset: bool = True
    postures: PostureConfig = field(default_factory=PostureConfig)
    host_postures: PostureConfig = field(default_factory=PostureConfig)
    # Measured configuration, so trusted: which host policies select this VM (bpf.policy.compiler.HostScope).
    node_labels: Mapping[str, str] | None = None
    agent: AgentConfig = field(default_factory=AgentConfig)
    kbs_update: KbsUpdateConfig | None = None


class _Reader:
    """Typed field readers that raise ConfigError(origin, dotted key, problem)."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.origin, key, problem)

    def mapping(self, value: Any, key: str, known: Mapping[str, str]) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "must be a mapping")
        for name in value:
            if name not in known:
                where = f"{key}.{name}" if key else str(name)
                raise self.fail(where, f"unknown key (known: {', '.join(sorted(known))})")
        return value

    def path(self, value: Any, key: str, *, optional: bool = False) -> Path | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
            raise self.fail(key, f"{value!r} is not an absolute path")
        return Path(value)

    def seconds(self, value: Any, key: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise self.fail(key, f"{value!r} is not a number of seconds in [{low:g}, {high:g}]")
        return float(value)

    def integer(self, value: Any, key: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"{value!r} is not an integer in [{low}, {high}]")
        return value

    def at_least(self, value: Any, key: str, low: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.fail(key, f"{value!r} is not an integer >= {low}")
        return value

    def names(self, value: Any, key: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
        """A non-empty list of names, each one of `known`."""
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"{value!r} is not a list of {what}s")
        if not value:
            raise self.fail(key, f"must name at least one {what}")
        for item in value:
            if item not in known:
                raise self.fail(key, f"unknown {what} {item!r} (known: {', '.join(known)})")
        return tuple(value)

    def url(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.startswith(("http://", "https://", "unix:///")) or "\0" in value:
            raise self.fail(key, f"{value!r} is not an http(s) URL or a unix:/// socket address")
        return value

    def cgroup_patterns(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, "must be a non-empty list of cgroup paths, or null for no cgroup check")
        for item in value:
            if not isinstance(item, str) or not item.startswith("/") or len(item) > 4096 or "\0" in item \
                    or any(part in (".", "..") for part in item.split("/")):
                raise self.fail(key, f"{item!r} is not an absolute cgroup path (no . or .. components)")
        return tuple(value)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"{value!r} is not true or false")
        return value

    def postures(self, value: Any, key: str) -> PostureConfig:
        data = self.mapping(value, key, dict.fromkeys(POSTURE_KEYS, ""))
        for name, posture in data.items():
            if posture not in POSTURE_VALUES:
                raise self.fail(f"{key}.{name}", f"{posture!r} is not one of {', '.join(POSTURE_VALUES)}")
        return PostureConfig(**data)

    def labels(self, value: Any, key: str) -> Mapping[str, str] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, "must be a mapping of label names to values, or null")
        for name, label in value.items():
            if not isinstance(name, str) or not name or not isinstance(label, str):
                raise self.fail(f"{key}.{name}", "labels are non-empty strings mapped to strings (quote yes/no, "
                                                 "numbers)")
        return dict(value)

    def command(self, value: Any, key: str) -> tuple[str, ...]:
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v and "\0" not in v for v in value)
        ):
            raise self.fail(key, "must be a non-empty list of strings (an argv)")
        if not value[0].startswith("/"):
            raise self.fail(key, f"{value[0]!r}: the program must be an absolute path")
        return tuple(value)


def _gate(value: Any, reader: _Reader, key: str) -> GateConfig:
    data = reader.mapping(value, key, GATE_KEYS)
    out: dict[str, Any] = {}
    for name, item in data.items():
        where = f"{key}.{name}" if key else name
        if name == "trust_dir":
            out[name] = reader.path(item, where)
        elif name == "state_dir":
            out[name] = reader.path(item, where, optional=True)
        elif name == "threshold":
            out[name] = reader.at_least(item, where, 1)
        elif name == "trust_modes":
            modes = reader.names(item, where, tuple(m.value for m in TrustMode), "trust mode")
            out[name] = tuple(TrustMode(m) for m in modes)
        elif name == "measurement_sources":
            out[name] = reader.names(item, where, SOURCE_NAMES, "source")
        elif name == "insecure_allow_sample":
            out[name] = reader.boolean(item, where)
        elif name == "max_validity_days":
            out[name] = None if item is None else reader.integer(item, where, 1, 36500)
        elif name == "minimum_version_resource":
            if item is not None:
                try:
                    parse_kbs_uri(item if isinstance(item, str) else "", origin=reader.origin, field=where)
                except GateError as exc:
                    raise reader.fail(where, exc.problem) from None
            out[name] = item
        elif name == "insecure_sources":
            out[name] = () if item == [] else reader.names(item, where, INSECURE_SOURCE_NAMES, "insecure source")
        elif name == "attestation_agent_url":
            out[name] = reader.url(item, where)
        elif name == "vtpm_amd_certs":
            if item != "imds" and not (isinstance(item, str) and item.startswith("/") and "\0" not in item):
                raise reader.fail(where, "must be imds or an absolute path to a PEM file (VCEK, then ASK)")
            out[name] = item
        elif name == "attestation_agent_timeout":
            out[name] = reader.seconds(item, where, 0, 60)
            if out[name] == 0:
                raise reader.fail(where, "must be more than 0 seconds")
    return GateConfig(**out)


def parse_gate_config(document: Any, *, origin: str) -> GateConfig:
    """A `gate:` mapping on its own (`warden verify --config`), its keys at the top level."""
    return _gate(document, _Reader(origin), "")


def _agent(value: Any, reader: _Reader) -> AgentConfig:
    data = reader.mapping(value, "agent", AGENT_KEYS)
    out: dict[str, Any] = {}
    for name, item in data.items():
        key = f"agent.{name}"
        if name == "enabled":
            out["enabled"] = reader.boolean(item, key)
        elif name == "command":
            out["command"] = reader.command(item, key)
        elif name in ("backoff_initial_s", "backoff_jitter_s"):
            out[name] = reader.seconds(item, key, 0, 60)
        elif name == "backoff_max_s":
            out[name] = reader.seconds(item, key, 0.01, 3600)
        elif name in ("crash_window_s", "stable_after_s"):
            out[name] = reader.seconds(item, key, 0.1, 86400)
        elif name == "stop_timeout_s":
            out[name] = reader.seconds(item, key, 0.1, 300)
        elif name == "crash_budget":
            out[name] = reader.integer(item, key, 1, 1000)
        elif name == "alertThrottling":
            out["alert_throttling"] = reader.boolean(item, key)
        elif name == "maxAlertPerSec":
            out["max_alert_per_sec"] = reader.integer(item, key, 1, 1_000_000)
        elif name == "throttleSec":
            out["throttle_sec"] = reader.integer(item, key, 1, 86400)
        elif name == "logPath":
            out["log_path"] = reader.path(item, key, optional=True)
    config = AgentConfig(**out)
    if config.backoff_initial_s > config.backoff_max_s:
        raise reader.fail("agent.backoff_initial_s", "is larger than agent.backoff_max_s")
    return config


def _kbs_update(value: Any, reader: _Reader) -> KbsUpdateConfig | None:
    if value is None:
        return None
    data = reader.mapping(value, "kbs_update", KBS_UPDATE_KEYS)
    if "resource" not in data:
        raise reader.fail("kbs_update.resource", "is required (kbs:///<repository>/<type>/<tag>)")
    out: dict[str, Any] = {}
    for name, item in data.items():
        key = f"kbs_update.{name}"
        if name == "resource":
            if not isinstance(item, str):
                raise reader.fail(key, f"{item!r} is not kbs:///<repository>/<type>/<tag>")
            try:
                out[name] = parse_resource_uri(item)
            except GateError as exc:
                raise reader.fail(key, exc.problem) from None
        elif name == "cdh_url":
            out[name] = reader.url(item, key)
        elif name == "interval_s":
            out[name] = reader.seconds(item, key, 1, 86400)
        elif name == "timeout_s":
            out[name] = reader.seconds(item, key, 0.1, 300)
    return KbsUpdateConfig(**out)


def parse_config(document: Any, *, origin: str) -> WardenConfig:
    """A parsed YAML document -> WardenConfig, or ConfigError naming the key."""
    reader = _Reader(origin)
    if document is None:
        document = {}
    data = reader.mapping(document, "", KEYS)
    out: dict[str, Any] = {"origin": origin}
    for name, value in data.items():
        if name == "gate":
            out["gate"] = _gate(value if value is not None else {}, reader, "gate")
        elif name == "initdata":
            out["initdata"] = reader.path(value, name, optional=True)
        elif name in ("baseline_bundle", "update_bundle", "pin_dir", "state_dir", "control_socket"):
            out[name] = reader.path(value, name)
        elif name == "control_allowed_cgroups":
            out[name] = None if value is None else reader.cgroup_patterns(value, name)
        elif name == "gate_failure_exit_s":
            out[name] = reader.seconds(value, name, 0, 3600)
        elif name == "extend_timeout_s":
            out[name] = reader.seconds(value, name, 1, 600)
        elif name in ("attestation_deadline_s", "enforce_timeout_s"):
            out[name] = reader.seconds(value, name, 1, 3600)
        elif name == "record_ruleset":
            out[name] = reader.boolean(value, name)
        elif name in ("postures", "host_postures"):
            out[name] = reader.postures(value, name)
        elif name == "node_labels":
            out[name] = reader.labels(value, name)
        elif name == "agent":
            out["agent"] = _agent(value if value is not None else {}, reader)
        elif name == "kbs_update":
            out["kbs_update"] = _kbs_update(value, reader)
    return WardenConfig(**out)


def read_config_document(path: Path) -> Any:
    """The YAML document in a configuration file: opened without following a symlink, at most
    MAX_CONFIG_BYTES, UTF-8; a syntax error names its line. Every warden configuration file is read here."""
    origin = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(origin, "file", f"cannot be opened ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(origin, "file", f"larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(origin, "file", "is not UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "file"
        raise ConfigError(origin, where, f"not YAML ({getattr(exc, 'problem', None) or type(exc).__name__})") from None


def load_config(path: Path = DEFAULT_CONFIG_PATH) -> WardenConfig:
    """Read and parse the configuration file. A missing file is an error: the image must ship one."""
    return parse_config(read_config_document(path), origin=str(path))


__all__ = [
    "AGENT_KEYS",
    "DEFAULT_CONFIG_PATH",
    "GATE_KEYS",
    "KBS_UPDATE_KEYS",
    "KEYS",
    "AgentConfig",
    "ConfigError",
    "GateConfig",
    "GateError",
    "KbsUpdateConfig",
    "PostureConfig",
    "WardenConfig",
    "load_config",
    "parse_config",
    "parse_gate_config",
    "read_config_document",
]
