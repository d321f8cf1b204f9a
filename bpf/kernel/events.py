"""Decode warden's BPF events (struct warden_event) into KubeArmor alert fields.

The ring buffer is pinned at /sys/fs/bpf/warden/events, so events produced while no reader is alive
wait for the next one (up to the buffer size); losses are counted in warden_drops. The kernel only knows
ids: the scope id and the alert id. `EventContext` (built from the engine manifest) maps them to the
container and the policy metadata, so an `Alert` carries the fields KubeArmor users know (KubeArmor
protobuf `Alert`: PolicyName, Severity, Tags, Message, Type, Source, Operation, Resource, Data, Enforcer,
Action, Result ...).

Processes as KubeArmor numbers them: PID/PPID in the task's own pid namespace (what `ps` shows in the
container; the kernel writes them, ns_tgid/ns_ppid), HostPID/HostPPID as the VM sees them. Container
fields (ContainerID, ContainerName, PodName, NamespaceName) come from the hook's registration, i.e. the
CRI annotations of the container (io.kubernetes.cri.container-name, .sandbox-name, .sandbox-namespace):
informational only, never a rule input; empty where nothing registered the process (host, any-container).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from bpf.kernel.maps import (
    ACTION_NAMES,
    CAPABILITY_NUMBERS,
    CAT_CAPABILITIES,
    CAT_NETWORK,
    CATEGORY_NAMES,
    SCOPE_ANY_CONTAINER,
    SCOPE_HOST,
)
from bpf.policy.ruleset import RuleAlert

# The layouts and codes of bpf/progs/warden_types.h (tests/test_engine_maps.py checks them against it).
EVENT: Final = struct.Struct("<Q4I4IiHBBB3x4IHHI16s256s256sI")  # struct warden_event (608)
EV_DEFAULT_POSTURE: Final = 1  # WARDEN_EV_DEFAULT_POSTURE
EV_TRUNCATED: Final = 2  # WARDEN_EV_TRUNCATED
EV_INCOMPLETE: Final = 4  # WARDEN_EV_INCOMPLETE
EV_CONFINEMENT: Final = 8  # WARDEN_EV_CONFINEMENT
CONFINEMENT_POLICY: Final = "ContainerConfinement"  # the PolicyName of scope_guard's refusals
HOOK_PTRACE_ACCESS, HOOK_BPF, HOOK_KERNEL_LOAD, HOOK_SYSCTL_WRITE = 8490, 8491, 8492, 8493

# enum warden_hook -> KubeArmor's name of the operation
HOOK_NAMES: Final = {
    352: "SECURITY_BPRM_CHECK", 450: "FILE_OPEN", 452: "FILE_MKNOD", 453: "FILE_UNLINK", 454: "FILE_MKDIR",
    455: "FILE_RMDIR", 456: "FILE_SYMLINK", 457: "FILE_LINK", 459: "FILE_CHMOD", 460: "FILE_TRUNCATE",
    461: "SOCKET_CREATE", 464: "CAPABLE", 466: "FILE_CHOWN", 8458: "FILE_RENAME",
    # warden's own hooks (KubeArmor has no event for them)
    8470: "FILE_SETATTR", 8471: "FILE_SETXATTR", 8472: "FILE_REMOVEXATTR", 8473: "FILE_IOCTL",
    8474: "FILE_PERMISSION", 8475: "FILE_MMAP", 8476: "SB_MOUNT", 8477: "MOVE_MOUNT", 8478: "SB_PIVOTROOT",
    8479: "SOCKET_SENDMSG", 8480: "SOCKET_CONNECT", 8481: "EXEC_MEMFD",
    HOOK_PTRACE_ACCESS: "PTRACE_ACCESS", HOOK_BPF: "BPF", HOOK_KERNEL_LOAD: "KERNEL_LOAD",
    HOOK_SYSCTL_WRITE: "SYSCTL_WRITE",
}
# enum warden_mount_kind (event arg[1] of the mount hooks) -> what the mount would do, in Data
MOUNT_KINDS: Final = {1: "at-path", 2: "bind", 3: "move", 4: "with-source", 5: "detached-tree", 6: "pivot-root"}
_MOUNT_HOOKS: Final = frozenset({8476, 8477, 8478})
HOOK_EXEC_MEMFD: Final = 8481
_CAP_NAMES: Final = {number: f"CAP_{name.upper()}" for name, number in CAPABILITY_NUMBERS.items()}
_FAMILIES: Final = {2: "AF_INET", 10: "AF_INET6", 17: "AF_PACKET", 29: "AF_CAN", 31: "AF_BLUETOOTH", 44: "AF_XDP"}
_TYPES: Final = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET",
                 6: "SOCK_DCCP", 10: "SOCK_PACKET"}


class EventDecodeError(ValueError):
    """Bytes that are not a warden event."""


@dataclass(frozen=True)
class RawEvent:
    ts_boot_ns: int
    pid: int
    tgid: int
    ppid: int
    uid: int
    scope: int
    mnt_ns: int
    pid_ns: int
    alert: int
    retval: int
    hook: int
    category: int
    action: int
    flags: int
    args: tuple[int, int, int, int]
    comm: str
    path: str
    source: str
    ns_tgid: int = 0  # tgid in the task's pid namespace
    ns_ppid: int = 0  # the parent's tgid there (0: the parent is outside it)


@dataclass(frozen=True)
class ScopeInfo:
    name: str  # "host", "any-container" or the container name
    labels: Mapping[str, str] = field(default_factory=dict)
    container_id: str = ""  # registered containers: from the OCI state and CRI annotations (informational)
    pod: str = ""
    namespace: str = ""


@dataclass(frozen=True)
class EventContext:
    """What user space knows that the kernel does not: scope and alert ids -> names and metadata."""

    scopes: Mapping[int, ScopeInfo]
    alerts: Mapping[int, RuleAlert]
    hostname: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class Alert:
    """KubeArmor alert fields (kubearmor.proto `Alert`) plus warden's scope id."""

    Timestamp: int
    UpdatedTime: str
    HostName: str
    NamespaceName: str
    PodName: str
    ContainerID: str
    ContainerName: str
    Labels: str
    HostPPID: int
    HostPID: int
    PPID: int
    PID: int
    UID: int
    ProcessName: str
    PolicyName: str
    Severity: str
    Tags: str
    ATags: tuple[str, ...]
    Message: str
    Type: str
    Source: str
    Operation: str
    Resource: str
    Data: str
    Enforcer: str
    Action: str
    Result: str
    Scope: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ATags"] = list(self.ATags)
        return data


def _text(raw: bytes, length: int) -> str:
    return raw[: min(length, len(raw))].split(b"\0", 1)[0].decode(errors="replace")


def parse_event(raw: bytes) -> RawEvent:
    if len(raw) < EVENT.size:
        raise EventDecodeError(f"event of {len(raw)} bytes; a warden event has {EVENT.size}")
    f = EVENT.unpack_from(raw)
    (ts, pid, tgid, ppid, uid, scope, mnt_ns, pid_ns, alert, retval, hook, category, action, flags,
     a0, a1, a2, a3, path_len, source_len, ns_tgid, comm, path, source, ns_ppid) = f
    return RawEvent(ts, pid, tgid, ppid, uid, scope, mnt_ns, pid_ns, alert, retval, hook, category, action,
                    flags, (a0, a1, a2, a3), comm.split(b"\0", 1)[0].decode(errors="replace"),
                    _text(path, path_len), _text(source, source_len), ns_tgid, ns_ppid)


def _resource(ev: RawEvent) -> str:
    if ev.category == CAT_NETWORK:  # KubeArmor's socket resource form
        family, sock_type, protocol = ev.args[0], ev.args[1] & 0xF, ev.args[2]
        return (f"domain={_FAMILIES.get(family, str(family))} type={_TYPES.get(sock_type, str(sock_type))} "
                f"protocol={protocol}")
    if ev.category == CAT_CAPABILITIES:
        return _CAP_NAMES.get(ev.args[0], f"CAP_{ev.args[0]}")
    if ev.hook == HOOK_PTRACE_ACCESS:
        return f"pid={ev.args[0]}"  # the target, in the VM's pid numbering (HostPID's)
    if ev.hook == HOOK_BPF:
        return f"bpf cmd={ev.args[0]}"
    if ev.hook == HOOK_KERNEL_LOAD and not ev.path:
        return f"kernel_load_data id={ev.args[0]}"
    if ev.hook == HOOK_EXEC_MEMFD and ev.path.startswith("/memfd:"):
        return ev.path[1:]  # KubeArmor's filelessExec resource: "memfd:NAME", a name with no directory
    return ev.path


def boot_to_unix_ns(ts_boot_ns: int) -> int:
    """CLOCK_BOOTTIME (what bpf_ktime_get_boot_ns gives) to wall-clock nanoseconds, now."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME) + ts_boot_ns


def decode_event(raw: bytes, context: EventContext) -> Alert:
    """One ring-buffer record -> a KubeArmor-style Alert."""
    ev = parse_event(raw)
    scope = context.scopes.get(ev.scope)
    if scope is None:
        scope = ScopeInfo({SCOPE_HOST: "host", SCOPE_ANY_CONTAINER: "any-container"}.get(ev.scope,
                                                                                        f"scope-{ev.scope}"))
    host = ev.scope == SCOPE_HOST
    registered = ev.scope in context.scopes and not host and ev.scope != SCOPE_ANY_CONTAINER
    if ev.flags & EV_DEFAULT_POSTURE:
        info = RuleAlert("DefaultPosture", None, (), None)
    elif ev.flags & EV_CONFINEMENT:
        info = RuleAlert(CONFINEMENT_POLICY, None, (), None)
    else:
        info = context.alerts.get(ev.alert, RuleAlert(f"unknown-alert-{ev.alert}", None, (), None))
    ts_ns = boot_to_unix_ns(ev.ts_boot_ns)
    data = f"lsm={HOOK_NAMES.get(ev.hook, str(ev.hook))}"
    if ev.hook in _MOUNT_HOOKS:  # a mount decided at its target path carries no kind (the path rules' event)
        data += f" mount={MOUNT_KINDS.get(ev.args[1] or 1, str(ev.args[1]))}"
    if ev.flags & EV_TRUNCATED:
        data += " truncated=true"
    if ev.flags & EV_INCOMPLETE:
        data += " incomplete=true"
    return Alert(
        Timestamp=ts_ns // 1_000_000_000,
        UpdatedTime=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ns / 1e9))
        + f".{ts_ns % 1_000_000_000 // 1000:06d}Z",
        HostName=context.hostname,
        NamespaceName=scope.namespace if registered else "",
        PodName=scope.pod if registered else "",
        ContainerID=scope.container_id if registered else "",
        ContainerName=scope.name if registered else "",
        Labels=",".join(f"{k}={v}" for k, v in sorted(scope.labels.items())),
        HostPPID=ev.ppid,
        HostPID=ev.tgid,
        PPID=ev.ns_ppid,
        PID=ev.ns_tgid,
        UID=ev.uid,
        ProcessName=ev.source or ev.comm,
        PolicyName=info.policy,
        Severity="" if info.severity is None else str(info.severity),
        Tags=",".join(info.tags),
        ATags=info.tags,
        Message=info.message or "",
        Type="MatchedHostPolicy" if host else "MatchedPolicy",
        Source=ev.source or ev.comm,
        Operation=CATEGORY_NAMES.get(ev.category, str(ev.category)),
        Resource=_resource(ev),
        Data=data,
        Enforcer="BPFLSM",
        Action=ACTION_NAMES.get(ev.action, str(ev.action)),
        Result="Permission denied" if ev.retval < 0 else "Passed",
        Scope=ev.scope,
    )
