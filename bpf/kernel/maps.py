"""Byte encodings of warden's BPF maps (bpf/progs/warden_types.h) and the RuleSet -> map contents compiler.

Everything the kernel side reads is built here, so the layouts and the path hash live in one place on
each side: `bpf/progs/warden_types.h` (and `net_guard_types.h`) for C, this module for Python.
tests/test_engine_maps.py compiles the C headers with the host compiler and checks every constant, size,
offset and hash against this module.

The rules map holds one node per path string (see `struct warden_rule_node`): an exact path ("/a/b") or a
directory prefix ("/a/b/") carrying a directory rule, a recursive one, `below` (some rule lies below
it, so the kernel keeps walking) and `skip` (how many components down the next prefix worth a lookup is:
prefixes on a single chain down to the next rule, with no rule of their own, are never looked up).
Network rules key on a protocol code, capability rules on the capability number; both use the node's
`exact` slot. Ancestor nodes (CAT_ANCESTOR) mark the directories above file and process rules.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from bpf.kernel.patterns import SCOPE_PATTERNS, PatternTables, encode_patterns
from bpf.policy.limits import MAX_PATH_BYTES
from bpf.policy.model import Action, PathKind
from bpf.policy.ruleset import Posture, RuleAlert, RuleSet

PATH_MAX: Final = MAX_PATH_BYTES + 1  # WARDEN_PATH_MAX
HASH_SEED: Final = 0xCBF29CE484222325
HASH_MULT: Final = 0x9E3779B97F4A7C15
_M64: Final = (1 << 64) - 1

SCOPE_HOST: Final = 1
SCOPE_ANY_CONTAINER: Final = 2
SCOPE_FIRST_CONTAINER: Final = 16

CAT_FILE, CAT_PROCESS, CAT_NETWORK, CAT_CAPABILITIES = 1, 2, 3, 4
# Not a rule category: the directories above a file or process rule's path ("/srv/", "/srv/app/" for a
# rule on /srv/app/secrets/), each keyed (scope, CAT_ANCESTOR, no source, hash of the "dir/" string)
# and carrying the strongest Block or Audit rule below it. path_rename refuses to move one, which
# would carry the protected path out from under its rule.
CAT_ANCESTOR: Final = 5
# Not a rule category either: the filelessExec preset, whose slot is the scope configuration's strict[6]
# (the strict slots are those of the path categories; this one is the preset's action and alert).
CAT_FILELESS_EXEC: Final = 6
CATEGORY_NAMES: Final = {CAT_FILE: "File", CAT_PROCESS: "Process", CAT_NETWORK: "Network",
                         CAT_CAPABILITIES: "Capabilities"}
ACT_NONE, ACT_ALLOW, ACT_AUDIT, ACT_BLOCK = 0, 1, 2, 3
ACTION_CODES: Final = {Action.ALLOW: ACT_ALLOW, Action.AUDIT: ACT_AUDIT, Action.BLOCK: ACT_BLOCK}
ACTION_NAMES: Final = {ACT_ALLOW: "Allow", ACT_AUDIT: "Audit", ACT_BLOCK: "Block"}
POSTURE_CODES: Final = {Posture.AUDIT: ACT_AUDIT, Posture.BLOCK: ACT_BLOCK}
RULE_READ_ONLY, RULE_OWNER_ONLY = 1, 2
SCOPE_RULES, SCOPE_SOURCED = 1, 2

# enum warden_protocol (bpf/progs/net_guard_types.h)
PROTOCOL_CODES: Final = {"tcp": 1, "udp": 2, "icmp": 3, "icmpv6": 4, "raw": 5, "sctp": 6, "stream": 7,
                         "dgram": 8, "rdm": 9, "seqpacket": 10, "dccp": 11, "packet": 12, "all": 13}

# include/uapi/linux/capability.h
CAPABILITY_NUMBERS: Final = {
    "chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "fsetid": 4, "kill": 5, "setgid": 6,
    "setuid": 7, "setpcap": 8, "linux_immutable": 9, "net_bind_service": 10, "net_broadcast": 11,
    "net_admin": 12, "net_raw": 13, "ipc_lock": 14, "ipc_owner": 15, "sys_module": 16, "sys_rawio": 17,
    "sys_chroot": 18, "sys_ptrace": 19, "sys_pacct": 20, "sys_admin": 21, "sys_boot": 22, "sys_nice": 23,
    "sys_resource": 24, "sys_time": 25, "sys_tty_config": 26, "mknod": 27, "lease": 28, "audit_write": 29,
    "audit_control": 30, "setfcap": 31, "mac_override": 32, "mac_admin": 33,
}

RULE_KEY: Final = struct.Struct("<QQIB3x")  # struct warden_rule_key (24)
SLOT: Final = struct.Struct("<IBBH")  # struct warden_rule_slot (8)
NODE: Final = struct.Struct("<8s8s8sBBHI256s")  # struct warden_rule_node (288)
SOURCE_VAL: Final = struct.Struct("<H6x256s")  # struct warden_source_val (264)
NS_KEY: Final = struct.Struct("<II")  # struct warden_ns_key
SCOPE_CFG: Final = struct.Struct("<8s8s64s")  # struct warden_scope_cfg
TASK_SCOPE: Final = struct.Struct("<II")  # struct warden_task_scope: scope, flags
TASK_EXECED: Final = 1  # WARDEN_TASK_EXECED: the task runs a container's code (its mounts are decided)
PIDFD_KEY: Final = struct.Struct("<i")  # warden_task_scope's key from user space: a pidfd
SCOPE_ID: Final = struct.Struct("<I")
SOURCE_KEY: Final = struct.Struct("<Q")
META_KEY_SIZE: Final = 32
META_VAL_SIZE: Final = 32


class EncodingError(ValueError):
    """A RuleSet cannot be encoded (a path too long, or two path strings with the same hash)."""


def _mix(h: int, w: int) -> int:
    h = ((h ^ w) * HASH_MULT) & _M64
    return h ^ (h >> 32)


def path_hash(data: bytes) -> int:
    """warden's path hash: 8-byte little-endian words of `data` zero-padded, then the length."""
    h = HASH_SEED
    padded = data + bytes(-len(data) % 8)
    for i in range(0, len(padded), 8):
        h = _mix(h, int.from_bytes(padded[i : i + 8], "little"))
    return _mix(h, len(data))


def prefixes(path: str) -> list[str]:
    """The directory prefixes strictly shorter than `path`: "/a/b/c" and "/a/b/" -> ["/", "/a/"...]."""
    out = ["/"]
    for i, ch in enumerate(path):
        if ch == "/" and 0 < i < len(path) - 1:
            out.append(path[: i + 1])
    return [p for p in out if len(p) < len(path)]


def alert_id(alert: RuleAlert) -> int:
    """A stable id for an alert's metadata: equal metadata, equal id, across loads (1..2^31-1)."""
    text = repr((alert.policy, alert.severity, alert.tags, alert.message)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little") & 0x7FFFFFFF or 1


def encode_path(path: str) -> bytes:
    raw = path.encode()
    if len(raw) > MAX_PATH_BYTES:
        raise EncodingError(f"{path!r}: {len(raw)} bytes, the engine stores at most {MAX_PATH_BYTES}")
    return raw


@dataclass
class _Node:
    path: bytes
    exact: bytes = bytes(SLOT.size)
    dir: bytes = bytes(SLOT.size)
    recursive: bytes = bytes(SLOT.size)
    below: bool = False
    skip: int = 1

    def encode(self) -> bytes:
        return NODE.pack(self.exact, self.dir, self.recursive, int(self.below), self.skip, len(self.path), 0,
                         self.path.ljust(PATH_MAX, b"\0"))

    def has_rule(self) -> bool:
        return any(slot != bytes(SLOT.size) for slot in (self.exact, self.dir, self.recursive))


def decode_node_len(value: bytes) -> int:
    return int(NODE.unpack(value)[5])


def parent_prefix(path: bytes) -> bytes | None:
    """The directory prefix one component up: b"/a/b/" and b"/a/b" -> b"/a/"; b"/" -> None."""
    if path == b"/":
        return None
    cut = path.rstrip(b"/").rfind(b"/")
    return path[: cut + 1]


def _set_skips(nodes: dict[tuple[int, int, bytes], _Node]) -> None:
    """Give each directory prefix node its `skip`: the kernel visits the prefix `skip` components
    further down next. A prefix on the only way down to the next rule (no rule, no exact path directly
    under it, exactly one child prefix) decides nothing: a path that leaves the chain misses at the
    lookup below it, one that ends inside the chain has no rule on it. So the walk jumps over it."""
    children: dict[tuple[int, int, bytes], list[bytes]] = {}
    has_exact_child: set[tuple[int, int, bytes]] = set()
    for (category, src, path) in nodes:
        parent = parent_prefix(path)
        if parent is None:
            continue
        if path.endswith(b"/"):
            children.setdefault((category, src, parent), []).append(path)
        else:
            has_exact_child.add((category, src, parent))

    def decides(key: tuple[int, int, bytes]) -> bool:
        return nodes[key].has_rule() or key in has_exact_child or len(children.get(key, [])) != 1

    for key, n in nodes.items():
        category, src, path = key
        if not path.endswith(b"/") or len(children.get(key, [])) != 1:
            continue
        below = (category, src, children[key][0])
        skip = 1
        while not decides(below):
            below = (category, src, children[below][0])
            skip += 1
        n.skip = skip


@dataclass
class ScopeTables:
    """What one scope puts into the maps: rule nodes, fromSource paths, its configuration, alerts."""

    scope: int
    nodes: dict[bytes, bytes] = field(default_factory=dict)
    sources: dict[bytes, bytes] = field(default_factory=dict)
    cfg: bytes = bytes(SCOPE_CFG.size)
    alerts: dict[int, RuleAlert] = field(default_factory=dict)  # alert id -> the rule's alert
    patterns: PatternTables | None = None  # matchPatterns automata (bpf.kernel.patterns)
    patterns_digest: str | None = None  # as read back from the kernel (health), when `patterns` is not given

    def digest(self) -> str:
        """sha256 over the sorted (key, value) pairs of the scope's rule nodes and its configuration, then
        (scopes with matchPatterns only) the digest of the pattern tables."""
        h = hashlib.sha256(self.cfg)
        for key in sorted(self.nodes):
            h.update(key)
            h.update(self.nodes[key])
        patterns = self.patterns.digest() if self.patterns and self.patterns.categories else self.patterns_digest
        if patterns:
            h.update(patterns.encode())
        return "sha256:" + h.hexdigest()


def _rule_flags(read_only: bool, owner_only: bool) -> int:
    """A slot's narrowing flags (struct warden_rule_slot.flags)."""
    return (RULE_READ_ONLY if read_only else 0) | (RULE_OWNER_ONLY if owner_only else 0)


def _slot(alert: RuleAlert, action: Action, flags: int) -> bytes:
    return SLOT.pack(alert_id(alert), ACTION_CODES[action], flags, 0)


Resolver = Callable[[str], "str | None"]


def encode_scope(scope: int, ruleset: RuleSet, resolve: Resolver | None = None) -> ScopeTables:
    """The map contents that enforce `ruleset` in scope id `scope`.

    The kernel sees resolved paths (the dentry walk never passes through a symlink), so a rule on
    "/bin/" protects nothing on a merged-/usr system where /bin -> usr/bin. `resolve` maps a rule or
    fromSource path to the path the kernel will see (None: same); each rule is then also entered
    under that alias. Literal paths win over aliases where both name the same node."""
    tables = ScopeTables(scope)
    nodes: dict[tuple[int, int, bytes], _Node] = {}  # (category, source hash, path) -> node
    rules_bits = [0] * 8
    postures = [0] * 8

    def source_hash(source: str | None, category: int) -> int:
        if source is None:
            rules_bits[category] |= SCOPE_RULES
            return 0
        rules_bits[category] |= SCOPE_SOURCED
        raw = encode_path(source)
        h = path_hash(raw)
        tables.sources[SOURCE_KEY.pack(h)] = SOURCE_VAL.pack(len(raw), raw.ljust(PATH_MAX, b"\0"))
        return h

    def node(category: int, src: int, path: bytes) -> _Node:
        return nodes.setdefault((category, src, path), _Node(path))

    ancestors: dict[bytes, bytes] = {}  # "dir/" above a Block or Audit rule -> the strongest such rule's slot

    def add_ancestors(path: str, slot: bytes) -> None:
        action = SLOT.unpack(slot)[1]
        if action not in (ACT_AUDIT, ACT_BLOCK):
            return  # moving what an Allow rule names away loses access; it escapes nothing
        for prefix in prefixes(path):
            raw = prefix.encode()
            if raw != b"/" and (raw not in ancestors or SLOT.unpack(ancestors[raw])[1] < action):
                ancestors[raw] = SLOT.pack(SLOT.unpack(slot)[0], action, 0, 0)

    def add_path_rule(category: int, path: str, kind: PathKind, source: str | None, slot: bytes) -> None:
        add_ancestors(path, slot)  # whatever the source: any process may move the directory
        src = source_hash(source, category)
        raw = encode_path(path)
        target = node(category, src, raw)
        if kind is PathKind.EXACT:
            target.exact = slot
        elif kind is PathKind.DIR:
            target.dir = slot
        else:
            target.recursive = slot
        for prefix in prefixes(path):
            node(category, src, prefix.encode()).below = True

    def variants(path: str | None) -> list[str | None]:
        alias = resolve(path) if resolve is not None and path is not None else None
        return [path] if alias is None or alias == path else [path, alias]

    path_rules: list[tuple[int, str, PathKind, str | None, bytes, bool]] = []
    for f in ruleset.file:
        flags = _rule_flags(f.read_only, f.owner_only)
        path_rules.append((CAT_FILE, f.path, f.kind, f.source, _slot(f.alert, f.action, flags), False))
        tables.alerts[alert_id(f.alert)] = f.alert
    for p in ruleset.process:
        flags = _rule_flags(False, p.owner_only)
        path_rules.append((CAT_PROCESS, p.path, p.kind, p.source, _slot(p.alert, p.action, flags), False))
        tables.alerts[alert_id(p.alert)] = p.alert
    for literal in (False, True):  # aliases first, so that literal rules overwrite them
        for category, path, kind, source, slot, _ in path_rules:
            for pv in variants(path):
                for sv in variants(source):
                    if (pv == path and sv == source) is literal and pv is not None:
                        add_path_rule(category, pv, kind, sv, slot)

    coded: dict[tuple[int, int, int], bytes] = {}
    for net in ruleset.network:
        for sv in variants(net.source):
            coded[(CAT_NETWORK, source_hash(sv, CAT_NETWORK), PROTOCOL_CODES[net.protocol])] = \
                _slot(net.alert, net.action, 0)
        tables.alerts[alert_id(net.alert)] = net.alert
    for c in ruleset.capabilities:
        for sv in variants(c.source):
            coded[(CAT_CAPABILITIES, source_hash(sv, CAT_CAPABILITIES), CAPABILITY_NUMBERS[c.capability])] = \
                _slot(c.alert, c.action, 0)
        tables.alerts[alert_id(c.alert)] = c.alert

    _set_skips(nodes)
    seen: dict[bytes, bytes] = {}
    for (category, src, raw_path), n in nodes.items():
        key = RULE_KEY.pack(path_hash(raw_path), src, scope, category)
        if key in seen and seen[key] != raw_path:
            raise EncodingError(f"paths {seen[key]!r} and {raw_path!r} have the same hash; rename one")
        seen[key] = raw_path
        tables.nodes[key] = n.encode()
    for (category, src, code), slot in coded.items():
        tables.nodes[RULE_KEY.pack(code, src, scope, category)] = _Node(b"", exact=slot).encode()
    for raw_path, slot in ancestors.items():
        key = RULE_KEY.pack(path_hash(raw_path), 0, scope, CAT_ANCESTOR)
        if key in seen and seen[key] != raw_path:
            raise EncodingError(f"paths {seen[key]!r} and {raw_path!r} have the same hash; rename one")
        seen[key] = raw_path
        tables.nodes[key] = _Node(raw_path, exact=slot).encode()
    if ancestors:
        rules_bits[CAT_ANCESTOR] |= SCOPE_RULES

    tables.patterns = encode_patterns(scope, ruleset, {"file": CAT_FILE, "process": CAT_PROCESS}, alert_id)
    tables.alerts.update(tables.patterns.alerts)
    for code in tables.patterns.categories:
        rules_bits[code] |= SCOPE_PATTERNS

    for category, posture in ((CAT_FILE, ruleset.postures.file), (CAT_PROCESS, ruleset.postures.process),
                              (CAT_NETWORK, ruleset.postures.network),
                              (CAT_CAPABILITIES, ruleset.postures.capabilities)):
        postures[category] = POSTURE_CODES[posture] if posture is not None else 0
    # Patterns count too: a path too long for the kernel's pattern walk could match any of them.
    pattern_slots = [(CAT_FILE, _slot(r.alert, r.action, _rule_flags(r.read_only, r.owner_only)))
                     for r in ruleset.file_patterns]
    pattern_slots += [(CAT_PROCESS, _slot(r.alert, r.action, _rule_flags(False, r.owner_only)))
                      for r in ruleset.process_patterns]
    strict = [bytes(SLOT.size)] * 8
    for category in (CAT_FILE, CAT_PROCESS):
        strict[category] = strictest_slot([slot for c, *_, slot, _ in path_rules if c == category]
                                          + [slot for c, slot in pattern_slots if c == category])
    for preset in ruleset.presets:
        if preset.name == "filelessExec":
            strict[CAT_FILELESS_EXEC] = _slot(preset.alert, preset.action, 0)
            tables.alerts[alert_id(preset.alert)] = preset.alert
    tables.cfg = SCOPE_CFG.pack(bytes(postures), bytes(rules_bits), b"".join(strict))
    return tables


def strictest_slot(slots: Iterable[bytes]) -> bytes:
    """The slot that decides when the kernel could not walk a path to its root (any rule might apply):
    a Block before an Audit, fewer readOnly/ownerOnly narrowings first; no Block or Audit: none."""
    def strictness(slot: bytes) -> tuple[int, int, int, int]:
        alert, action, flags, _ = SLOT.unpack(slot)
        return (-action, bin(flags).count("1"), flags, alert)

    candidates = [s for s in slots if SLOT.unpack(s)[1] in (ACT_BLOCK, ACT_AUDIT)]
    return min(candidates, key=strictness) if candidates else bytes(SLOT.size)


def resolve_in_root(root: str = "/") -> Resolver:
    """A resolver against the filesystem at `root` (the engine's own for the host and any-container
    scopes): follows symlinks in the path as the kernel would, keeps a directory's trailing slash."""
    import os

    def resolve(path: str) -> str | None:
        is_dir = path.endswith("/")
        base = path.rstrip("/") or "/"
        real = os.path.realpath(os.path.join(root, base.lstrip("/")))
        rel = "/" + os.path.relpath(real, root).lstrip("./") if real != os.path.realpath(root) else "/"
        if is_dir and rel != "/":
            rel += "/"
        if rel == path or len(rel.encode()) > MAX_PATH_BYTES or rel.count("/") > 33 or ".." in rel.split("/"):
            return None
        return rel

    return resolve


CONFIG_HOST_MNT_NS: Final = 0  # warden_config[0]: the host mount namespace's inode number
CONFIG_GENERATION: Final = 1  # warden_config[1]: rules and registry generation (remembered allows)


def generation_value() -> bytes:
    """A new generation (sync.new_generation): no allow remembered under an older one holds."""
    import time

    return time.time_ns().to_bytes(8, "little")


def ns_key(pid_ns: int, mnt_ns: int) -> bytes:
    return NS_KEY.pack(pid_ns, mnt_ns)


def meta_key(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= META_KEY_SIZE:
        raise EncodingError(f"meta name {name!r} too long")
    return raw.ljust(META_KEY_SIZE, b"\0")


def digest_bytes(digest: str) -> bytes:
    """"sha256:<hex>" -> the 32 raw bytes stored in warden_meta."""
    return bytes.fromhex(digest.removeprefix("sha256:"))
