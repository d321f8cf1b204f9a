"""KubeArmor policies as typed, frozen values: what the reader (bpf.policy.reader) produces and the
compiler (bpf.policy.compiler) consumes.

Selectors (see `Selector`): `kubearmor.io/container.name` in matchLabels takes both of KubeArmor's forms
(see `container_name_matches`): a bracketed list `"[c1,c2]"` (Kubernetes mode: exact names; `"[]"` and
`""` mean every container of the pod, as in KubeArmor), else a regular expression (Python `re`) on the
container name, as in KubeArmor's unorchestrated mode. A regex must match the whole name: `web` selects the
container `web`, not `webserver`; write `web.*` or `.*web.*` for more. Other labels must match exactly;
matchExpressions use KubeArmor's form `{key: label, operator: In|NotIn, values: ["k=v", ...]}`.

Paths (see `normalise_path`) follow the CRD patterns (`^/+.*[^/]$` for paths, `^/$|^/.*/$` for
directories), are normalised by collapsing repeated slashes, and are refused when they contain `.` or `..`
components, NUL, a line break, or exceed `bpf.policy.limits.MAX_PATH_BYTES` / `MAX_PATH_DEPTH`: they go
into BPF map keys and into alerts.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from bpf.policy.limits import MAX_PATH_BYTES, MAX_PATH_DEPTH
from initdata.errors import printable

CONTAINER_NAME_LABEL: Final = "kubearmor.io/container.name"

# Regexes that select every container (see Selector.selects_every_container). Kept to an explicit list:
# deciding in general whether a regex matches every string is not something to do by guesswork.
MATCH_ALL_CONTAINER_REGEXES: Final = frozenset({".*", "^.*$", ".+", "^.+$"})


def container_name_list(value: str) -> tuple[str, ...] | None:
    """KubeArmor's Kubernetes-mode container list: `"[c1, c2]"` -> ("c1", "c2"); `"[]"` and `""` -> ()
    (every container); None when `value` is not in that form (then it is a regular expression).

    As KubeArmor (core/kubeUpdate.go): the brackets are stripped, the rest split on ",", each name
    stripped of spaces, empty names dropped, so `"[container-1,,]"` is ("container-1",)."""
    if value == "":
        return ()
    if len(value) >= 2 and value.startswith("[") and value.endswith("]"):
        return tuple(dict.fromkeys(name.strip() for name in value[1:-1].split(",") if name.strip()))
    return None


def container_name_matches(value: str, name: str) -> bool:
    """Whether the matchLabels value `value` of kubearmor.io/container.name selects the container `name`:
    a bracketed list names containers exactly (empty: every container), anything else is a regex that
    must match the whole name."""
    names = container_name_list(value)
    if names is not None:
        return not names or name in names
    return re.fullmatch(value, name) is not None

PROTOCOLS: Final = frozenset(
    {"tcp", "udp", "icmp", "icmpv6", "raw", "sctp", "stream", "dgram", "rdm", "seqpacket", "dccp", "packet",
     "all"}
)

# The CRD's list (KA common.go MatchCapabilitiesType), bare lowercase names.
CAPABILITIES: Final = frozenset(
    {"chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
     "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
     "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
     "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control",
     "setfcap", "mac_override", "mac_admin"}
)


# The syscall names KubeArmor's CRD enumerates for syscalls.matchSyscalls / matchPaths `syscall`: the x86_64
# table from read (0) to rseq (334), as in Linux's arch/x86/entry/syscalls/syscall_64.tbl.
SYSCALLS: Final = frozenset({
    "read", "write", "open", "close", "stat", "fstat", "lstat", "poll", "lseek", "mmap", "mprotect", "munmap",
    "brk", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "ioctl", "pread64", "pwrite64", "readv",
    "writev", "access", "pipe", "select", "sched_yield", "mremap", "msync", "mincore", "madvise", "shmget",
    "shmat", "shmctl", "dup", "dup2", "pause", "nanosleep", "getitimer", "alarm", "setitimer", "getpid",
    "sendfile", "socket", "connect", "accept", "sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown", "bind",
    "listen", "getsockname", "getpeername", "socketpair", "setsockopt", "getsockopt", "clone", "fork",
    "vfork", "execve", "exit", "wait4", "kill", "uname", "semget", "semop", "semctl", "shmdt", "msgget",
    "msgsnd", "msgrcv", "msgctl", "fcntl", "flock", "fsync", "fdatasync", "truncate", "ftruncate", "getdents",
    "getcwd", "chdir", "fchdir", "rename", "mkdir", "rmdir", "creat", "link", "unlink", "symlink", "readlink",
    "chmod", "fchmod", "chown", "fchown", "lchown", "umask", "gettimeofday", "getrlimit", "getrusage",
    "sysinfo", "times", "ptrace", "getuid", "syslog", "getgid", "setuid", "setgid", "geteuid", "getegid",
    "setpgid", "getppid", "getpgrp", "setsid", "setreuid", "setregid", "getgroups", "setgroups", "setresuid",
    "getresuid", "setresgid", "getresgid", "getpgid", "setfsuid", "setfsgid", "getsid", "capget", "capset",
    "rt_sigpending", "rt_sigtimedwait", "rt_sigqueueinfo", "rt_sigsuspend", "sigaltstack", "utime", "mknod",
    "uselib", "personality", "ustat", "statfs", "fstatfs", "sysfs", "getpriority", "setpriority",
    "sched_setparam", "sched_getparam", "sched_setscheduler", "sched_getscheduler", "sched_get_priority_max",
    "sched_get_priority_min", "sched_rr_get_interval", "mlock", "munlock", "mlockall", "munlockall",
    "vhangup", "modify_ldt", "pivot_root", "_sysctl", "prctl", "arch_prctl", "adjtimex", "setrlimit",
    "chroot", "sync", "acct", "settimeofday", "mount", "umount2", "swapon", "swapoff", "reboot",
    "sethostname", "setdomainname", "iopl", "ioperm", "create_module", "init_module", "delete_module",
    "get_kernel_syms", "query_module", "quotactl", "nfsservctl", "getpmsg", "putpmsg", "afs_syscall",
    "tuxcall", "security", "gettid", "readahead", "setxattr", "lsetxattr", "fsetxattr", "getxattr",
    "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr",
    "fremovexattr", "tkill", "time", "futex", "sched_setaffinity", "sched_getaffinity", "set_thread_area",
    "io_setup", "io_destroy", "io_getevents", "io_submit", "io_cancel", "get_thread_area", "lookup_dcookie",
    "epoll_create", "epoll_ctl_old", "epoll_wait_old", "remap_file_pages", "getdents64", "set_tid_address",
    "restart_syscall", "semtimedop", "fadvise64", "timer_create", "timer_settime", "timer_gettime",
    "timer_getoverrun", "timer_delete", "clock_settime", "clock_gettime", "clock_getres", "clock_nanosleep",
    "exit_group", "epoll_wait", "epoll_ctl", "tgkill", "utimes", "vserver", "mbind", "set_mempolicy",
    "get_mempolicy", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "kexec_load", "waitid", "add_key", "request_key", "keyctl", "ioprio_set", "ioprio_get", "inotify_init",
    "inotify_add_watch", "inotify_rm_watch", "migrate_pages", "openat", "mkdirat", "mknodat", "fchownat",
    "futimesat", "newfstatat", "unlinkat", "renameat", "linkat", "symlinkat", "readlinkat", "fchmodat",
    "faccessat", "pselect6", "ppoll", "unshare", "set_robust_list", "get_robust_list", "splice", "tee",
    "sync_file_range", "vmsplice", "move_pages", "utimensat", "epoll_pwait", "signalfd", "timerfd_create",
    "eventfd", "fallocate", "timerfd_settime", "timerfd_gettime", "accept4", "signalfd4", "eventfd2",
    "epoll_create1", "dup3", "pipe2", "inotify_init1", "preadv", "pwritev", "rt_tgsigqueueinfo",
    "perf_event_open", "recvmmsg", "fanotify_init", "fanotify_mark", "prlimit64", "name_to_handle_at",
    "open_by_handle_at", "clock_adjtime", "syncfs", "sendmmsg", "setns", "getcpu", "process_vm_readv",
    "process_vm_writev", "kcmp", "finit_module", "sched_setattr", "sched_getattr", "renameat2", "seccomp",
    "getrandom", "memfd_create", "kexec_file_load", "bpf", "execveat", "userfaultfd", "membarrier", "mlock2",
    "copy_file_range", "preadv2", "pwritev2", "pkey_mprotect", "pkey_alloc", "pkey_free", "statx",
    "io_pgetevents", "rseq"
})


class PolicyKind(enum.StrEnum):
    CONTAINER = "KubeArmorPolicy"
    HOST = "KubeArmorHostPolicy"


class Action(enum.StrEnum):
    ALLOW = "Allow"
    AUDIT = "Audit"
    BLOCK = "Block"


class PathKind(enum.StrEnum):
    EXACT = "exact"  # matchPaths: this file only
    DIR = "dir"  # matchDirectories, recursive false: the directory's direct children
    DIR_RECURSIVE = "dir_recursive"  # matchDirectories, recursive true: everything below it


@dataclass(frozen=True)
class Problem:
    """One reason a policy was refused, pointing at the offending YAML line."""

    file: str
    line: int  # 1-based; 0 when the problem is about the file as a whole
    field: str  # dotted path, e.g. spec.file.matchDirectories[0].dir
    message: str

    def __str__(self) -> str:
        # File names and messages may carry attacker-chosen characters; escape them so that one problem
        # is always exactly one line on a terminal.
        return f"{printable(self.file)}:{self.line}: {printable(self.field)}: {printable(self.message)}"


class PolicyError(Exception):
    """Policies were refused; `problems` says why, one entry per problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


@dataclass(frozen=True)
class AlertFields:
    """The alert fields a rule gives its alerts (innermost of rule, section, spec); the compiler adds the
    policy name (bpf.policy.ruleset.RuleAlert)."""

    severity: int | None
    tags: tuple[str, ...]
    message: str | None


@dataclass(frozen=True)
class PathMatch:
    """A process or file rule from matchPaths or matchDirectories.

    `path` is normalised; directories keep their trailing slash. `sources` is empty when the rule applies
    to every program, else the normalised fromSource paths.
    """

    path: str
    kind: PathKind
    read_only: bool  # always False for process rules
    owner_only: bool
    sources: tuple[str, ...]
    action: Action
    alert: AlertFields


@dataclass(frozen=True)
class PatternMatch:
    """A process or file rule from matchPatterns: `pattern` is an AppArmor glob, already checked by
    bpf.policy.glob.parse. The CRD gives patterns no fromSource."""

    pattern: str
    read_only: bool  # always False for process rules
    owner_only: bool
    action: Action
    alert: AlertFields


@dataclass(frozen=True)
class ProtocolMatch:
    protocol: str  # lowercase, one of PROTOCOLS
    sources: tuple[str, ...]
    action: Action
    alert: AlertFields


@dataclass(frozen=True)
class CapabilityMatch:
    capability: str  # lowercase bare name, one of CAPABILITIES
    sources: tuple[str, ...]
    action: Action
    alert: AlertFields


# KubeArmor presets warden enforces (exec_guard.bpf.c); the others have no BPF program in warden.
ENFORCED_PRESETS: Final = frozenset({"filelessExec"})


@dataclass(frozen=True)
class PresetMatch:
    """A KubeArmor preset warden enforces (ENFORCED_PRESETS): `filelessExec` refuses (Block) or alerts on
    (Audit) the exec of a file with no path on disk, as KubeArmor's preset does."""

    name: str
    action: Action  # Block or Audit
    alert: AlertFields


class LabelOperator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"


@dataclass(frozen=True)
class LabelExpression:
    """KubeArmor matchExpressions item; `values` are "key=value" identities."""

    operator: LabelOperator
    values: tuple[str, ...]


@dataclass(frozen=True)
class Selector:
    """Which containers (KubeArmorPolicy) or nodes (KubeArmorHostPolicy, matchLabels only) a policy selects.

    matchLabels and matchExpressions are ANDed. A container's identities are its labels as "key=value"
    plus `kubearmor.io/container.name=<name>`, as KubeArmor's runtime handlers add that label.
    """

    match_labels: tuple[tuple[str, str], ...]  # sorted by key
    match_expressions: tuple[LabelExpression, ...] = ()

    def matches_container(self, name: str, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if key == CONTAINER_NAME_LABEL:
                if not container_name_matches(value, name):
                    return False
            elif labels.get(key) != value:
                return False
        identities = {f"{k}={v}" for k, v in labels.items()} | {f"{CONTAINER_NAME_LABEL}={name}"}
        for expression in self.match_expressions:
            hit = any(v in identities for v in expression.values)
            if hit != (expression.operator is LabelOperator.IN):
                return False
        return True

    def could_match_any_name(self, labels: Mapping[str, str] | None) -> bool:
        """Whether a container with these labels, *whatever its name*, could be selected (the fail-closed
        union for a container whose name is not known; trust.identity). `labels` None: unknown, so yes.

        matchLabels other than the container name must hold; an `In` expression could hold if a label
        identity or any container-name identity is listed; a `NotIn` one unless a label identity is listed.
        """
        if labels is None:
            return True
        for key, value in self.match_labels:
            if key != CONTAINER_NAME_LABEL and labels.get(key) != value:
                return False
        identities = {f"{k}={v}" for k, v in labels.items()}
        for expression in self.match_expressions:
            label_hit = any(v in identities for v in expression.values)
            name_listed = any(v.startswith(f"{CONTAINER_NAME_LABEL}=") for v in expression.values)
            if expression.operator is LabelOperator.IN and not (label_hit or name_listed):
                return False
            if expression.operator is LabelOperator.NOT_IN and label_hit:
                return False
        return True

    def selects_every_container(self) -> bool:
        """True only for `matchLabels: {kubearmor.io/container.name: V}` alone, with V one of
        MATCH_ALL_CONTAINER_REGEXES or an empty list (`""`, `"[]"`).

        Container names are never empty, so `.+` selects every container as `.*` does.
        """
        if self.match_expressions or len(self.match_labels) != 1:
            return False
        key, value = self.match_labels[0]
        return key == CONTAINER_NAME_LABEL and (value in MATCH_ALL_CONTAINER_REGEXES
                                                or container_name_list(value) == ())

    def matches_node(self, node_labels: Mapping[str, str] | None) -> bool:
        """Host policies: without a node label map (the usual case: the VM is the only node), any
        nodeSelector selects this node; with one, every matchLabels entry must be present and equal."""
        if node_labels is None:
            return True
        return all(node_labels.get(k) == v for k, v in self.match_labels)


@dataclass(frozen=True)
class Policy:
    """One KubeArmor document. `warnings` names, one entry per field, what the document says that warden
    accepts but does not enforce as written (never something whose absence would weaken a Block: that
    is refused); `warden policy check`, the supervisor's log and `warden status` show them."""

    kind: PolicyKind
    name: str
    # metadata.namespace as written (None when absent). Kept for the trust side: in KubeArmor a policy
    # applies only to pods of its namespace, and which namespace the pod is in is signed data.
    namespace: str | None
    selector: Selector  # spec.selector, or spec.nodeSelector for host policies
    process: tuple[PathMatch, ...]
    file: tuple[PathMatch, ...]
    network: tuple[ProtocolMatch, ...]
    capabilities: tuple[CapabilityMatch, ...]
    file_patterns: tuple[PatternMatch, ...] = ()
    process_patterns: tuple[PatternMatch, ...] = ()
    presets: tuple[PresetMatch, ...] = ()
    origin: str = field(default="", compare=False)  # file the policy came from
    line: int = field(default=0, compare=False)  # line of its document
    warnings: tuple[str, ...] = ()  # "field: what happens instead", see the class docstring

    @property
    def rule_count(self) -> int:
        return (len(self.process) + len(self.file) + len(self.network) + len(self.capabilities)
                + len(self.file_patterns) + len(self.process_patterns) + len(self.presets))

    def warning_summary(self) -> str | None:
        """`KIND NAME: accepted, not enforced as written: ...` or None; no file name, so that a RuleSet
        carrying it (bpf.policy.ruleset.RuleSet.warnings) does not depend on where the policy was read."""
        if not self.warnings:
            return None
        return f"{self.kind} {self.name}: accepted, not enforced as written: {'; '.join(self.warnings)}"

    def warning_line(self) -> str | None:
        """The one warning line for this policy, or None: `FILE:LINE: warning: KIND NAME: ...`."""
        summary = self.warning_summary()
        if summary is None:
            return None
        return f"{printable(self.origin)}:{self.line}: warning: {printable(summary)}"



def normalise_path(raw: str, *, directory: bool) -> tuple[str | None, str | None]:
    """(normalised path, None) or (None, why it is refused). Directories keep their trailing slash."""
    shown = printable(repr(raw))
    if "\x00" in raw:
        return None, f"{shown} contains a NUL character"
    if "\n" in raw or "\r" in raw:
        return None, f"{shown} contains a line break"
    if not raw.startswith("/"):
        return None, f"{shown} is not absolute (must start with '/')"
    if directory and not raw.endswith("/"):
        return None, (f"{shown}: a directory must end with '/' (pattern ^/$|^/.*/$); "
                      f"did you mean {printable(repr(raw + '/'))}?")
    if not directory and raw.endswith("/"):
        return None, (f"{shown}: a path must not end with '/' (pattern ^/+.*[^/]$); "
                      f"use matchDirectories for a directory")
    components = [c for c in raw.split("/") if c]
    if any(c in (".", "..") for c in components):
        return None, f"{shown} contains a '.' or '..' component; give the canonical path"
    normalised = "/" + "/".join(components) + ("/" if directory and components else "")
    if len(components) > MAX_PATH_DEPTH:
        return None, (f"{shown} has {len(components)} components; the engine's limit is {MAX_PATH_DEPTH} "
                      f"(MAX_PATH_DEPTH)")
    try:
        size = len(normalised.encode("utf-8"))
    except UnicodeEncodeError:
        return None, f"{shown} is not valid Unicode (lone surrogate)"
    if size > MAX_PATH_BYTES:
        return None, (f"{shown} is {size} bytes long; the engine's limit is {MAX_PATH_BYTES} bytes "
                      f"(MAX_PATH_BYTES, UTF-8, a directory's trailing '/' included)")
    return normalised, None


def canonical_capability(raw: str) -> str | None:
    """Lowercase bare capability name, or None if it is not in the CRD list. A `cap_` prefix is accepted:
    the CRD's pattern is unanchored at the start, so KubeArmor admits `CAP_NET_RAW` too."""
    name = raw.lower()
    if name.startswith("cap_"):
        name = name[4:]
    return name if name in CAPABILITIES else None



