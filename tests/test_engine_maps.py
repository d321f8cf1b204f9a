"""Host tests of the engine's encodings: every layout, constant and code shared by C and Python agrees
(the *_types.h headers in bpf/progs/ are compiled with the host compiler and checked against
bpf/kernel/maps.py, events.py and self_protect.py), the path hash agrees, RuleSets become the expected map
nodes, and events decode into KubeArmor alert fields."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bpf.kernel import events, maps, patterns, self_protect
from bpf.kernel.events import EVENT, EventContext, EventDecodeError, ScopeInfo, decode_event, parse_event
from bpf.policy.compiler import AnyContainerScope, ContainerScope, compile
from bpf.policy.files import load_policy_paths
from bpf.policy.glob import MAX_AUTOMATA
from bpf.policy.limits import MAX_PATH_DEPTH
from bpf.policy.ruleset import RuleAlert
from bpf.policy.yaml_loader import parse_policy_text

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "tests" / "data" / "policies" / "seed"

PARITY_C = r"""
#include <stdio.h>
#include <string.h>
#include <stddef.h>
#include "warden_types.h"

/* The BPF side's prefix_hash over a 512-byte buffer whose bytes after `len` are not zero (in the
 * kernel they hold the rest of the path): only the masking makes the hash depend on len alone. */
static __u64 bpf_like_hash(const char *s, __u32 len)
{
    unsigned char buf[512];
    __u64 h = WARDEN_HASH_SEED, w;
    __u32 nw = len >> 3, j;

    memset(buf, 0xab, sizeof(buf));
    memcpy(buf, s, len);
    for (j = 0; j < nw; j++) {
        memcpy(&w, buf + j * 8, 8);
        h = warden_mix(h, w);
    }
    if (len & 7) {
        memcpy(&w, buf + nw * 8, 8);
        h = warden_mix(h, w & warden_tail_mask(len & 7));
    }
    return warden_mix(h, len);
}

int main(int argc, char **argv)
{
    printf("sizes %zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct warden_rule_key), sizeof(struct warden_rule_slot),
           sizeof(struct warden_rule_node), sizeof(struct warden_source_val), sizeof(struct warden_ns_key),
           sizeof(struct warden_scope_cfg), sizeof(struct warden_event));
    printf("node %zu %zu %zu %zu %zu\n", offsetof(struct warden_rule_node, dir),
           offsetof(struct warden_rule_node, recursive), offsetof(struct warden_rule_node, below),
           offsetof(struct warden_rule_node, len), offsetof(struct warden_rule_node, path));
    printf("event %zu %zu %zu %zu %zu %zu\n", offsetof(struct warden_event, retval),
           offsetof(struct warden_event, hook), offsetof(struct warden_event, arg),
           offsetof(struct warden_event, path_len), offsetof(struct warden_event, comm),
           offsetof(struct warden_event, source));
    for (int i = 1; i < argc; i++)
        printf("hash %llu\n", (unsigned long long)bpf_like_hash(argv[i], strlen(argv[i])));
    return 0;
}
"""

SAMPLES = ["/", "/a/", "/bin/", "/var/lib/mysql/", "/var/lib/mysql/any-file", "/usr/bin/python3.11",
           "/exactly8", "/sixteen-bytes-xx", "/" + "d/" * 40, "/" + "x" * 254]


@pytest.fixture(scope="module")
def parity(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert compiler, "a C compiler is part of the build dependencies (clang builds the BPF objects)"
    work = tmp_path_factory.mktemp("parity")
    (work / "parity.c").write_text(PARITY_C)
    subprocess.run([compiler, "-O2", "-Wall", "-Werror", f"-I{REPO / 'bpf' / 'progs'}", "-o", str(work / "parity"),
                    str(work / "parity.c")], check=True)
    done = subprocess.run([str(work / "parity"), *SAMPLES], check=True, capture_output=True, text=True)
    return done.stdout.splitlines()


def test_c_layouts_match_python(parity: list[str]) -> None:
    sizes = [int(x) for x in parity[0].split()[1:]]
    assert sizes == [maps.RULE_KEY.size, maps.SLOT.size, maps.NODE.size, maps.SOURCE_VAL.size, maps.NS_KEY.size,
                     maps.SCOPE_CFG.size, EVENT.size]
    assert [int(x) for x in parity[1].split()[1:]] == [8, 16, 24, 26, 32]
    # event: retval after 9 u32/u64 words; arg after hook/category/action/flags; strings at the end
    assert [int(x) for x in parity[2].split()[1:]] == [40, 44, 52, 68, 76, 348]


def test_path_hash_matches_the_c_side(parity: list[str]) -> None:
    c_hashes = [int(line.split()[1]) for line in parity[3:]]
    assert c_hashes == [maps.path_hash(s.encode()) for s in SAMPLES]
    assert len(set(c_hashes)) == len(SAMPLES)


# -- every C/Python shared layout (bpf/progs/*_types.h) ----------------------------------------------------

PROGS = REPO / "bpf" / "progs"
TYPES_HEADERS = sorted(PROGS.glob("*_types.h"))

# C macro or expression -> the Python value that mirrors it.
MIRRORED_VALUES: dict[str, int] = {
    "WARDEN_PATH_MAX": maps.PATH_MAX,
    "WARDEN_MAX_DEPTH": MAX_PATH_DEPTH,
    "WARDEN_HASH_SEED": maps.HASH_SEED,
    "WARDEN_HASH_MULT": maps.HASH_MULT,
    "WARDEN_SCOPE_HOST": maps.SCOPE_HOST,
    "WARDEN_SCOPE_ANY_CONTAINER": maps.SCOPE_ANY_CONTAINER,
    "WARDEN_SCOPE_FIRST_CONTAINER": maps.SCOPE_FIRST_CONTAINER,
    "WARDEN_RULE_READ_ONLY": maps.RULE_READ_ONLY,
    "WARDEN_RULE_OWNER_ONLY": maps.RULE_OWNER_ONLY,
    "WARDEN_SCOPE_RULES": maps.SCOPE_RULES,
    "WARDEN_SCOPE_SOURCED": maps.SCOPE_SOURCED,
    "WARDEN_EV_DEFAULT_POSTURE": events.EV_DEFAULT_POSTURE,
    "WARDEN_EV_TRUNCATED": events.EV_TRUNCATED,
    "WARDEN_EV_INCOMPLETE": events.EV_INCOMPLETE,
    "WARDEN_EV_CONFINEMENT": events.EV_CONFINEMENT,
    "WARDEN_TASK_EXECED": maps.TASK_EXECED,
    "SELF_NAME_LEN": self_protect.NAME_LEN,
    "WARDEN_SCOPE_PATTERNS": patterns.SCOPE_PATTERNS,
    "WARDEN_PAT_MAX_AUTOMATA": MAX_AUTOMATA,
    "WARDEN_PAT_CHUNK": patterns.CHUNK,
    "WARDEN_PAT_POOL_CHUNKS": patterns.POOL_CHUNKS,
    "sizeof(struct warden_meta_key)": maps.META_KEY_SIZE,
    "sizeof(struct warden_meta_val)": maps.META_VAL_SIZE,
}

_HOOK_BY_NAME = {name: number for number, name in events.HOOK_NAMES.items()}
_ATTACK_BY_NAME = {name: number for number, name in self_protect.ATTACKS.items()}

# C enum -> {enumerator: the Python value that mirrors it}. Every enumerator of each enum must be here.
MIRRORED_ENUMS: dict[str, dict[str, int]] = {
    "warden_category": {"WARDEN_CAT_FILE": maps.CAT_FILE, "WARDEN_CAT_PROCESS": maps.CAT_PROCESS,
                        "WARDEN_CAT_NETWORK": maps.CAT_NETWORK, "WARDEN_CAT_CAPABILITIES": maps.CAT_CAPABILITIES,
                        "WARDEN_CAT_ANCESTOR": maps.CAT_ANCESTOR, "WARDEN_CAT_FILELESS_EXEC": maps.CAT_FILELESS_EXEC},
    "warden_action": {"WARDEN_ACT_NONE": maps.ACT_NONE, "WARDEN_ACT_ALLOW": maps.ACT_ALLOW,
                      "WARDEN_ACT_AUDIT": maps.ACT_AUDIT, "WARDEN_ACT_BLOCK": maps.ACT_BLOCK},
    # the hook ids, and the KubeArmor operation name events.py gives each
    "warden_hook": {
        "WARDEN_HOOK_BPRM_CHECK": _HOOK_BY_NAME["SECURITY_BPRM_CHECK"],
        "WARDEN_HOOK_FILE_OPEN": _HOOK_BY_NAME["FILE_OPEN"],
        "WARDEN_HOOK_PATH_MKNOD": _HOOK_BY_NAME["FILE_MKNOD"],
        "WARDEN_HOOK_PATH_UNLINK": _HOOK_BY_NAME["FILE_UNLINK"],
        "WARDEN_HOOK_PATH_MKDIR": _HOOK_BY_NAME["FILE_MKDIR"],
        "WARDEN_HOOK_PATH_RMDIR": _HOOK_BY_NAME["FILE_RMDIR"],
        "WARDEN_HOOK_PATH_SYMLINK": _HOOK_BY_NAME["FILE_SYMLINK"],
        "WARDEN_HOOK_PATH_LINK": _HOOK_BY_NAME["FILE_LINK"],
        "WARDEN_HOOK_PATH_CHMOD": _HOOK_BY_NAME["FILE_CHMOD"],
        "WARDEN_HOOK_PATH_TRUNCATE": _HOOK_BY_NAME["FILE_TRUNCATE"],
        "WARDEN_HOOK_SOCKET_CREATE": _HOOK_BY_NAME["SOCKET_CREATE"],
        "WARDEN_HOOK_CAPABLE": _HOOK_BY_NAME["CAPABLE"],
        "WARDEN_HOOK_PATH_CHOWN": _HOOK_BY_NAME["FILE_CHOWN"],
        "WARDEN_HOOK_PATH_RENAME": _HOOK_BY_NAME["FILE_RENAME"],
        "WARDEN_HOOK_INODE_SETATTR": _HOOK_BY_NAME["FILE_SETATTR"],
        "WARDEN_HOOK_INODE_SETXATTR": _HOOK_BY_NAME["FILE_SETXATTR"],
        "WARDEN_HOOK_INODE_REMOVEXATTR": _HOOK_BY_NAME["FILE_REMOVEXATTR"],
        "WARDEN_HOOK_FILE_IOCTL": _HOOK_BY_NAME["FILE_IOCTL"],
        "WARDEN_HOOK_FILE_PERMISSION": _HOOK_BY_NAME["FILE_PERMISSION"],
        "WARDEN_HOOK_MMAP_FILE": _HOOK_BY_NAME["FILE_MMAP"],
        "WARDEN_HOOK_SB_MOUNT": _HOOK_BY_NAME["SB_MOUNT"],
        "WARDEN_HOOK_MOVE_MOUNT": _HOOK_BY_NAME["MOVE_MOUNT"],
        "WARDEN_HOOK_SB_PIVOTROOT": _HOOK_BY_NAME["SB_PIVOTROOT"],
        "WARDEN_HOOK_SOCKET_SENDMSG": _HOOK_BY_NAME["SOCKET_SENDMSG"],
        "WARDEN_HOOK_SOCKET_CONNECT": _HOOK_BY_NAME["SOCKET_CONNECT"],
        "WARDEN_HOOK_BPRM_MEMFD": _HOOK_BY_NAME["EXEC_MEMFD"],
        "WARDEN_HOOK_PTRACE_ACCESS": events.HOOK_PTRACE_ACCESS,
        "WARDEN_HOOK_BPF": events.HOOK_BPF,
        "WARDEN_HOOK_KERNEL_LOAD": events.HOOK_KERNEL_LOAD,
        "WARDEN_HOOK_SYSCTL_WRITE": events.HOOK_SYSCTL_WRITE,
    },
    "warden_mount_kind": {
        f"WARDEN_MOUNT_{name}": number for number, name in
        zip(sorted(events.MOUNT_KINDS), ("AT", "BIND", "MOVE", "SOURCED", "DETACHED", "PIVOT"), strict=True)
    },
    "warden_protocol": {f"WARDEN_PROTO_{name.upper()}": code for name, code in maps.PROTOCOL_CODES.items()},
    "self_attack": {
        "ATTACK_SIGNAL": _ATTACK_BY_NAME["signal"],
        "ATTACK_PTRACE": _ATTACK_BY_NAME["ptrace"],
        "ATTACK_BPF_CMD": _ATTACK_BY_NAME["bpf-command"],
        "ATTACK_MAP_WRITE": _ATTACK_BY_NAME["map-write"],
        "ATTACK_PIN_CHANGE": _ATTACK_BY_NAME["pin-change"],
        "ATTACK_BPFFS_MOUNT": _ATTACK_BY_NAME["bpffs-mount"],
        "ATTACK_PROTECTED_WRITE": _ATTACK_BY_NAME["protected-write"],
        "ATTACK_CGROUP_JOIN": _ATTACK_BY_NAME["cgroup-join"],
        "ATTACK_RLIMIT": _ATTACK_BY_NAME["rlimit"],
        "ATTACK_SCHED": _ATTACK_BY_NAME["scheduling"],
        "ATTACK_CGROUP_CONTROL": _ATTACK_BY_NAME["cgroup-control"],
    },
}

# C struct -> (the Python struct that packs or unpacks it, the C member behind each of its items, in order;
# padding the Python format skips with "x" has no item).
MIRRORED_STRUCTS: dict[str, tuple[struct.Struct, list[str]]] = {
    "warden_rule_key": (maps.RULE_KEY, ["hash", "source", "scope", "category"]),
    "warden_rule_slot": (maps.SLOT, ["alert", "action", "flags", "pad"]),
    "warden_rule_node": (maps.NODE, ["exact", "dir", "recursive", "below", "skip", "len", "pad2", "path"]),
    "warden_source_val": (maps.SOURCE_VAL, ["len", "path"]),
    "warden_ns_key": (maps.NS_KEY, ["pid_ns", "mnt_ns"]),
    "warden_scope_cfg": (maps.SCOPE_CFG, ["posture", "rules", "strict"]),
    "warden_task_scope": (maps.TASK_SCOPE, ["scope", "flags"]),
    "warden_event": (events.EVENT, ["ts_boot_ns", "pid", "tgid", "ppid", "uid", "scope", "mnt_ns", "pid_ns",
                                    "alert", "retval", "hook", "category", "action", "flags", "arg[0]", "arg[1]",
                                    "arg[2]", "arg[3]", "path_len", "source_len", "ns_tgid", "comm", "path",
                                    "source", "ns_ppid"]),
    "warden_pat_key": (patterns.PAT_KEY, ["scope", "gen", "category", "automaton", "verdict"]),
    "warden_pat_head": (patterns.HEAD, ["gen", "count"]),
    "warden_pat_dfa": (patterns.DFA, ["base", "nstates", "width", "start", "pad", "pad2", "classes"]),
    "warden_pat_verdict": (patterns.VERDICT, [*(f"alert[{i}]" for i in range(4)), *(f"action[{i}]" for i in range(4)),
                                             "needs_owner"]),
    "warden_pat_chunk": (patterns.CHUNK_VALUE, [f"cell[{i}]" for i in range(patterns.CHUNK)]),
    "self_config": (self_protect.SELF_CONFIG, ["unit_cgroup", "parent_cgroup", "pin_dir"]),
    "inode_key": (self_protect.INODE_KEY, ["ino", "dev", "pad"]),
    "self_event": (self_protect.SELF_EVENT, ["ts_ns", "attack", "pid", "uid", "target_pid", "detail", "pad",
                                            "mnt_ns", "comm", "name"]),
}
# The kernel's capability numbers (include/uapi/linux/capability.h), which capability rules are keyed on.
KERNEL_CAPABILITIES = {f"CAP_{name.upper()}": number for name, number in maps.CAPABILITY_NUMBERS.items()}
# Scalar key and value types of the maps (no struct on the C side).
MIRRORED_SCALARS = {"warden_scopes key": (maps.SCOPE_ID, "__u32"), "warden_sources key": (maps.SOURCE_KEY, "__u64")}


def _member(struct_name: str, member: str) -> str:
    return f"((struct {struct_name} *)0)->{member}"


def _items(layout: struct.Struct) -> list[tuple[int, int, bool | None]]:
    """(offset, size, signed or None for byte strings) of each item of a little-endian, unaligned format."""
    assert layout.format[0] == "<"
    out, offset = [], 0
    for count_text, code in re.findall(r"(\d*)([xcbB?hHiIlLqQs])", layout.format[1:]):
        count = int(count_text or 1)
        if code in "xs":
            if code == "s":
                out.append((offset, count, None))
            offset += count
            continue
        size = struct.calcsize("<" + code)
        for _ in range(count):
            out.append((offset, size, code.islower()))
            offset += size
    assert offset == layout.size
    return out


@pytest.fixture(scope="module")
def c_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """The value of every C expression the Python side mirrors, from the headers compiled on the host."""
    clang = shutil.which("clang")
    assert clang, "clang is part of the build dependencies (it builds the BPF objects)"
    expressions = [*MIRRORED_VALUES, *KERNEL_CAPABILITIES, *(e for enum in MIRRORED_ENUMS.values() for e in enum)]
    for name, (layout, members) in MIRRORED_STRUCTS.items():
        expressions.append(f"sizeof(struct {name})")
        for member, (_, _, signed) in zip(members, _items(layout), strict=False):
            expressions += [f"offsetof(struct {name}, {member})", f"sizeof({_member(name, member)})"]
            if signed is not None:  # an integer: its signedness matters to the decoder
                expressions.append(f"(__typeof__({_member(name, member)}))-1 < 0")
    for _, ctype in MIRRORED_SCALARS.values():
        expressions += [f"sizeof({ctype})", f"({ctype})-1 < 0"]
    source = "#include <stdio.h>\n#include <stddef.h>\n#include <linux/capability.h>\n" + "".join(
        f'#include "{h.name}"\n' for h in TYPES_HEADERS) + "int main(void)\n{\n" + "".join(
        f'    printf("%llu\\n", (unsigned long long)({e}));\n' for e in expressions) + "    return 0;\n}\n"
    work = tmp_path_factory.mktemp("mirror")
    (work / "mirror.c").write_text(source)
    subprocess.run([clang, "-Wall", "-Werror", f"-I{PROGS}", "-o", str(work / "mirror"), str(work / "mirror.c")],
                   check=True)
    out = subprocess.run([str(work / "mirror")], check=True, capture_output=True, text=True).stdout.split()
    return dict(zip(expressions, (int(v) for v in out), strict=True))


@pytest.fixture(scope="module")
def c_declarations() -> dict[str, dict[str, list[str]]]:
    """What the *_types.h headers declare, from clang's AST: "enum" -> {name: enumerators}, "struct" ->
    {name: []}."""
    found: dict[str, dict[str, list[str]]] = {"enum": {}, "struct": {}}
    for header in TYPES_HEADERS:
        done = subprocess.run(["clang", "-x", "c", "-fsyntax-only", "-Xclang", "-ast-dump=json", str(header)],
                              check=True, capture_output=True, text=True)
        current = ""  # clang names a node's file only where it differs from the node before
        for node in json.loads(done.stdout)["inner"]:
            current = node.get("loc", {}).get("file", current)
            if current != str(header):
                continue
            if node.get("kind") == "EnumDecl":
                found["enum"][node.get("name", "")] = [c["name"] for c in node.get("inner", [])
                                                       if c.get("kind") == "EnumConstantDecl"]
            elif node.get("kind") == "RecordDecl" and node.get("completeDefinition"):
                found["struct"][node.get("name", "")] = []
    return found


def test_every_shared_constant_matches_the_c_headers(c_values: dict[str, int]) -> None:
    assert {e: c_values[e] for e in MIRRORED_VALUES} == MIRRORED_VALUES


def test_capability_numbers_are_the_kernels(c_values: dict[str, int]) -> None:
    assert {name: c_values[name] for name in KERNEL_CAPABILITIES} == KERNEL_CAPABILITIES


def test_every_shared_macro_is_mirrored() -> None:
    """A WARDEN_* or SELF_* constant added to a *_types.h header must be mirrored (and then checked above)."""
    defined = set()
    for header in TYPES_HEADERS:
        done = subprocess.run(["clang", "-x", "c", "-dM", "-E", str(header)], check=True, capture_output=True,
                              text=True)
        defined |= {m for m in re.findall(r"^#define ((?:WARDEN|SELF)_\w+) ", done.stdout, re.M)
                    if not m.endswith("_H")}
    assert defined == {name for name in MIRRORED_VALUES if re.fullmatch(r"\w+", name)}


def test_every_enum_of_the_c_headers_matches_python(c_values: dict[str, int],
                                                     c_declarations: dict[str, dict[str, list[str]]]) -> None:
    c_enums = c_declarations["enum"]
    assert set(c_enums) == set(MIRRORED_ENUMS)
    for enum, mirrored in MIRRORED_ENUMS.items():
        assert set(c_enums[enum]) == set(mirrored), enum  # no enumerator without a Python value
        assert {name: c_values[name] for name in mirrored} == mirrored, enum
    assert sorted(events.HOOK_NAMES) == sorted(MIRRORED_ENUMS["warden_hook"].values())
    assert sorted(self_protect.ATTACKS) == sorted(MIRRORED_ENUMS["self_attack"].values())


def test_every_struct_of_the_c_headers_is_mirrored(c_declarations: dict[str, dict[str, list[str]]]) -> None:
    sized_only = {m[1] for e in MIRRORED_VALUES if (m := re.fullmatch(r"sizeof\(struct (\w+)\)", e))}
    assert set(c_declarations["struct"]) == set(MIRRORED_STRUCTS) | sized_only


@pytest.mark.parametrize("name", sorted(MIRRORED_STRUCTS))
def test_every_shared_struct_matches_its_python_format(c_values: dict[str, int], name: str) -> None:
    """Size, and each member's offset, size and signedness: what the Python format packs or unpacks."""
    layout, members = MIRRORED_STRUCTS[name]
    python_items = _items(layout)
    assert len(members) == len(python_items)
    assert c_values[f"sizeof(struct {name})"] == layout.size
    for member, (offset, size, signed) in zip(members, python_items, strict=True):
        field = _member(name, member)
        c_signed = None if signed is None else bool(c_values[f"(__typeof__({field}))-1 < 0"])
        assert (c_values[f"offsetof(struct {name}, {member})"], c_values[f"sizeof({field})"], c_signed) == (
            offset, size, signed), f"struct {name}.{member}"


def test_scalar_keys_match(c_values: dict[str, int]) -> None:
    for layout, ctype in MIRRORED_SCALARS.values():
        assert (c_values[f"sizeof({ctype})"], bool(c_values[f"({ctype})-1 < 0"])) == (
            layout.size, _items(layout)[0][2])


def test_prefixes_are_the_directories_above_a_path() -> None:
    assert maps.prefixes("/a/b/c") == ["/", "/a/", "/a/b/"]
    assert maps.prefixes("/a/b/") == ["/", "/a/"]
    assert maps.prefixes("/a") == ["/"]
    assert maps.prefixes("/") == []


def _nodes(tables: maps.ScopeTables) -> dict[tuple[int, int, str], tuple[tuple[int, int, int], ...]]:
    """(category, source hash, path or code) -> ((alert, action, flags) for exact, dir, recursive) + below."""
    out = {}
    for key, value in tables.nodes.items():
        h, src, scope, category = maps.RULE_KEY.unpack(key)
        assert scope == tables.scope
        exact, dir_, rec, below, _skip, length, _, path = maps.NODE.unpack(value)
        slots = tuple(maps.SLOT.unpack(s)[:3] for s in (exact, dir_, rec))
        name = path[:length].decode() if length else str(h)
        if length:
            assert h == maps.path_hash(path[:length])  # the stored string is what was hashed
        out[(category, src, name)] = (*slots, (below, 0, 0))
    return out


def test_seed_any_container_scope_encodes_to_the_expected_nodes() -> None:
    ruleset = compile(load_policy_paths([SEED]), AnyContainerScope())
    tables = maps.encode_scope(maps.SCOPE_ANY_CONTAINER, ruleset, resolve=lambda p: None)
    nodes = _nodes(tables)
    fim = maps.alert_id(ruleset.file[0].alert)
    none = (0, 0, 0)
    assert nodes[(maps.CAT_FILE, 0, "/bin/")] == (none, (fim, maps.ACT_BLOCK, maps.RULE_READ_ONLY), none, (0, 0, 0))
    assert nodes[(maps.CAT_FILE, 0, "/")][3] == (1, 0, 0)  # below: the walk continues
    raw = maps.alert_id(ruleset.network[0].alert)
    assert nodes[(maps.CAT_NETWORK, 0, str(maps.PROTOCOL_CODES["raw"]))][0] == (raw, maps.ACT_BLOCK, 0)
    # an unregistered container gets every container policy: block-mysql-data-access too
    mysql = maps.alert_id(next(r.alert for r in ruleset.file if r.path == "/var/lib/mysql/"))
    assert nodes[(maps.CAT_FILE, 0, "/var/lib/mysql/")][2] == (mysql, maps.ACT_BLOCK, 0)
    assert len(nodes) == 9  # "/", "/bin/", "/sbin/", "/var/", "/var/lib/", "/var/lib/mysql/", raw,
    # and the ancestors of /var/lib/mysql/ that a rename could move ("/var/", "/var/lib/")
    assert {name for (category, _, name) in nodes if category == maps.CAT_ANCESTOR} == {"/var/", "/var/lib/"}
    postures, rules, strict = maps.SCOPE_CFG.unpack(tables.cfg)
    assert postures == bytes(8)
    # the strictest file rule (a Block without readOnly before FIM's readOnly ones) decides a path the
    # kernel could not walk to its root; there are no process rules
    assert maps.SLOT.unpack(strict[8 * maps.CAT_FILE:][:8])[:3] == (mysql, maps.ACT_BLOCK, 0)
    assert strict[8 * maps.CAT_PROCESS:][:8] == bytes(8)
    fim_only = maps.encode_scope(maps.SCOPE_ANY_CONTAINER, compile(load_policy_paths([SEED]), ContainerScope("x")))
    assert maps.SLOT.unpack(maps.SCOPE_CFG.unpack(fim_only.cfg)[2][8 * maps.CAT_FILE:][:8])[:3] == (
        fim, maps.ACT_BLOCK, maps.RULE_READ_ONLY)
    assert rules[maps.CAT_FILE] == maps.SCOPE_RULES and rules[maps.CAT_NETWORK] == maps.SCOPE_RULES
    assert rules[maps.CAT_PROCESS] == 0 and not tables.sources
    assert tables.alerts[fim].policy == "file-integrity-monitoring"


def test_aliases_add_the_resolved_paths_and_literals_win() -> None:
    ruleset = compile(load_policy_paths([SEED]), ContainerScope("db", {"app": "mysql"}))
    tables = maps.encode_scope(20, ruleset, resolve=lambda p: "/usr" + p if p.startswith(("/bin", "/sbin")) else None)
    nodes = _nodes(tables)
    assert {(maps.CAT_FILE, 0, p) for p in ("/usr/bin/", "/usr/sbin/", "/usr/", "/var/lib/mysql/")} <= set(nodes)
    assert nodes[(maps.CAT_FILE, 0, "/var/lib/mysql/")][2][1] == maps.ACT_BLOCK  # recursive slot


def test_directories_above_block_rules_are_ancestor_nodes_with_the_rule_s_alert() -> None:
    ruleset = compile(load_policy_paths([SEED]), ContainerScope("db", {"app": "mysql"}))
    tables = maps.encode_scope(20, ruleset, resolve=lambda p: "/usr" + p if p.startswith(("/bin", "/sbin")) else None)
    ancestors = {path: slots[0] for (category, src, path), slots in _nodes(tables).items()
                 if category == maps.CAT_ANCESTOR}
    mysql = next(maps.alert_id(f.alert) for f in ruleset.file if f.path == "/var/lib/mysql/")
    fim = next(maps.alert_id(f.alert) for f in ruleset.file if f.path == "/bin/")
    # "/" is never one (it cannot be moved); the rule's own directory is the rule's, not an ancestor's
    assert ancestors == {"/var/": (mysql, maps.ACT_BLOCK, 0), "/var/lib/": (mysql, maps.ACT_BLOCK, 0),
                         "/usr/": (fim, maps.ACT_BLOCK, 0)}
    assert maps.SCOPE_CFG.unpack(tables.cfg)[1][maps.CAT_ANCESTOR] == maps.SCOPE_RULES


def test_allow_rules_make_no_ancestor_nodes() -> None:
    ruleset = compile(parse_policy_text(POSTURE_POLICY, origin="t"), ContainerScope("w", {"app": "web"}))
    tables = maps.encode_scope(17, ruleset, resolve=lambda p: None)
    assert not [k for k in _nodes(tables) if k[0] == maps.CAT_ANCESTOR]
    assert maps.SCOPE_CFG.unpack(tables.cfg)[1][maps.CAT_ANCESTOR] == 0


def test_resolve_in_root_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    resolve = maps.resolve_in_root(str(tmp_path))
    assert resolve("/bin/") == "/usr/bin/"
    assert resolve("/bin/ls") == "/usr/bin/ls"
    assert resolve("/usr/bin/") is None and resolve("/etc/") is None


POSTURE_POLICY = """
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: allow-some}
spec:
  selector: {matchLabels: {app: web}}
  process:
    matchPaths:
      - path: /usr/bin/python3
        fromSource: [{path: /bin/bash}]
  action: Allow
"""


def test_allow_rules_set_the_posture_and_sources_are_verified_strings() -> None:
    ruleset = compile(parse_policy_text(POSTURE_POLICY, origin="t"), ContainerScope("w", {"app": "web"}))
    tables = maps.encode_scope(17, ruleset, resolve=lambda p: None)
    postures, rules, _strict = maps.SCOPE_CFG.unpack(tables.cfg)
    assert postures[maps.CAT_PROCESS] == maps.ACT_AUDIT  # KubeArmor's default posture: audit
    assert rules[maps.CAT_PROCESS] == maps.SCOPE_SOURCED
    src = maps.path_hash(b"/bin/bash")
    assert list(tables.sources) == [struct.pack("<Q", src)]
    length, path = maps.SOURCE_VAL.unpack(tables.sources[struct.pack("<Q", src)])
    assert path[:length] == b"/bin/bash"
    assert _nodes(tables)[(maps.CAT_PROCESS, src, "/usr/bin/python3")][0][1] == maps.ACT_ALLOW


def test_overlong_paths_are_refused() -> None:
    with pytest.raises(maps.EncodingError):
        maps.encode_path("/" + "x" * 255)


def _event(**overrides: object) -> bytes:
    fields: dict[str, object] = dict(
        ts=1, pid=11, tgid=10, ppid=9, uid=0, scope=17, mnt_ns=4026532000, pid_ns=4026532001, alert=5,
        retval=-1, hook=450, category=1, action=3, flags=0, a0=0, a1=0, a2=0, a3=0, path_len=24,
        source_len=12, ns_tgid=3, comm=b"cat", path=b"/var/lib/mysql/any-file/" + b"junk",
        source=b"/usr/bin/catXX", ns_ppid=1)
    fields.update(overrides)
    return EVENT.pack(*fields.values())


CONTEXT = EventContext(scopes={17: ScopeInfo("mysql", {"app": "mysql"}, "0123abcd", "mysql-0", "db")},
                       alerts={5: RuleAlert("block-mysql-data-access", 5, ("NIST", "db"), "no")},
                       hostname="guest")


def test_events_decode_to_kubearmor_alert_fields() -> None:
    alert = decode_event(_event(path_len=23), CONTEXT)
    assert (alert.PolicyName, alert.Severity, alert.Tags, alert.Message) == ("block-mysql-data-access", "5",
                                                                            "NIST,db", "no")
    assert (alert.ContainerName, alert.Labels, alert.Type, alert.HostName) == ("mysql", "app=mysql",
                                                                               "MatchedPolicy", "guest")
    assert (alert.Operation, alert.Resource, alert.Source, alert.Data) == ("File", "/var/lib/mysql/any-file",
                                                                           "/usr/bin/cat", "lsm=FILE_OPEN")
    assert (alert.Enforcer, alert.Action, alert.Result) == ("BPFLSM", "Block", "Permission denied")
    # KubeArmor numbering: PID/PPID in the container's pid namespace, the VM's in HostPID/HostPPID
    assert (alert.PID, alert.PPID, alert.HostPID, alert.HostPPID) == (3, 1, 10, 9)
    assert (alert.ContainerID, alert.PodName, alert.NamespaceName) == ("0123abcd", "mysql-0", "db")


def test_network_capability_posture_and_host_events() -> None:
    net = decode_event(_event(category=3, hook=461, a0=2, a1=3 | 0x80000, a2=1, path_len=0, scope=2), CONTEXT)
    # no registration for the process: no container fields, and never a placeholder
    assert (net.Operation, net.Resource, net.ContainerName, net.ContainerID, net.PodName, net.NamespaceName) == (
        "Network", "domain=AF_INET type=SOCK_RAW protocol=1", "", "", "", "")
    cap = decode_event(_event(category=4, hook=464, a0=13, retval=0, action=2, path_len=0, scope=1), CONTEXT)
    assert (cap.Resource, cap.Result, cap.Action, cap.Type, cap.ContainerName) == (
        "CAP_NET_RAW", "Passed", "Audit", "MatchedHostPolicy", "")
    posture = decode_event(_event(flags=1, alert=0), CONTEXT)
    assert posture.PolicyName == "DefaultPosture"
    truncated = decode_event(_event(flags=2), CONTEXT)
    assert truncated.Data == "lsm=FILE_OPEN truncated=true"


def test_short_records_are_refused() -> None:
    with pytest.raises(EventDecodeError):
        parse_event(b"\0" * 100)


def test_the_strictest_slot_is_a_block_with_the_fewest_narrowings() -> None:
    """What decides a path the kernel could not walk to its root (warden_scope_cfg.strict)."""
    audit = maps.SLOT.pack(1, maps.ACT_AUDIT, 0, 0)
    both = maps.SLOT.pack(2, maps.ACT_BLOCK, maps.RULE_READ_ONLY | maps.RULE_OWNER_ONLY, 0)
    owner = maps.SLOT.pack(3, maps.ACT_BLOCK, maps.RULE_OWNER_ONLY, 0)
    allow = maps.SLOT.pack(4, maps.ACT_ALLOW, 0, 0)
    assert maps.strictest_slot([audit, both, owner, allow]) == owner
    assert maps.strictest_slot([allow, audit]) == audit
    assert maps.strictest_slot([allow]) == bytes(maps.SLOT.size)  # Allow rules decide nothing here


PATTERN_ONLY_POLICY = """
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: only-patterns}
spec:
  selector: {matchLabels: {app: web}}
  file:
    matchPatterns:
    - pattern: /srv/**/*.key
      readOnly: true
  action: Block
"""


def test_patterns_count_in_the_strictest_slot() -> None:
    """A path too long for the kernel's pattern walk is decided by the strictest rule, patterns included:
    a scope with only matchPatterns must not fail open there."""
    ruleset = compile(parse_policy_text(PATTERN_ONLY_POLICY, origin="t"), ContainerScope("w", {"app": "web"}))
    tables = maps.encode_scope(17, ruleset, resolve=lambda p: None)
    _postures, rules, strict = maps.SCOPE_CFG.unpack(tables.cfg)
    assert rules[maps.CAT_FILE] & maps.SCOPE_PATTERNS
    file_slot = strict[maps.CAT_FILE * maps.SLOT.size:(maps.CAT_FILE + 1) * maps.SLOT.size]
    alert, action, flags, _ = maps.SLOT.unpack(file_slot)
    assert (action, flags) == (maps.ACT_BLOCK, maps.RULE_READ_ONLY)
    assert tables.alerts[alert].policy == "only-patterns"


def test_confinement_events_name_no_policy_and_say_what_was_reached() -> None:
    """scope_guard's refusals: no rule decided them, so no policy's name; the resource is the target."""
    ptrace = decode_event(_event(category=2, hook=events.HOOK_PTRACE_ACCESS, a0=1, a1=0x11, path_len=0,
                                 flags=events.EV_CONFINEMENT, alert=0), CONTEXT)
    assert (ptrace.PolicyName, ptrace.Resource, ptrace.Data, ptrace.ContainerName) == (
        "ContainerConfinement", "pid=1", "lsm=PTRACE_ACCESS", "mysql")
    bpf = decode_event(_event(category=2, hook=events.HOOK_BPF, a0=5, path_len=0, flags=events.EV_CONFINEMENT,
                              alert=0), CONTEXT)
    assert (bpf.PolicyName, bpf.Resource, bpf.Action) == ("ContainerConfinement", "bpf cmd=5", "Block")


def test_mount_and_fileless_exec_events_name_what_they_stopped() -> None:
    """A mount's alert says what the mount would have done (enum warden_mount_kind in arg[1]); a memfd's
    exec names the memfd as KubeArmor's filelessExec preset does (memfd:NAME, no directory)."""
    bind = decode_event(_event(hook=8476, a0=1, a1=2, path=b"/tmp/mnt-target", path_len=15), CONTEXT)
    assert (bind.Resource, bind.Data, bind.Operation) == ("/tmp/mnt-target", "lsm=SB_MOUNT mount=bind", "File")
    detached = decode_event(_event(hook=8477, a0=1, a1=5, path=b"/tmp/x", path_len=6, flags=0), CONTEXT)
    assert detached.Data == "lsm=MOVE_MOUNT mount=detached-tree"
    at_path = decode_event(_event(hook=8476, a0=1, a1=0, path=b"/usr/bin", path_len=8), CONTEXT)
    assert at_path.Data == "lsm=SB_MOUNT mount=at-path"  # decided by the path rules, which set no kind
    memfd = decode_event(_event(hook=8481, category=2, path=b"/memfd:payload", path_len=14), CONTEXT)
    assert (memfd.Resource, memfd.Operation, memfd.Data) == ("memfd:payload", "Process", "lsm=EXEC_MEMFD")
    deleted = decode_event(_event(hook=8481, category=2, path=b"/tmp/del-echo", path_len=13), CONTEXT)
    assert deleted.Resource == "/tmp/del-echo"


def test_the_fileless_exec_preset_has_its_slot_in_the_scope_configuration() -> None:
    """filelessExec's action and alert live in warden_scope_cfg.strict[WARDEN_CAT_FILELESS_EXEC]; a scope
    without the preset has an empty slot there."""
    preset = parse_policy_text(
        "apiVersion: security.kubearmor.com/v1\nkind: KubeArmorPolicy\nmetadata: {name: no-fileless}\n"
        "spec:\n  selector: {matchLabels: {app: mysql}}\n  severity: 7\n"
        "  presets: [{name: filelessExec, action: Block}]\n", origin="t.yaml")
    mysql = compile([*load_policy_paths([SEED]), *preset], ContainerScope("db", {"app": "mysql"}))
    tables = maps.encode_scope(20, mysql)
    strict = maps.SCOPE_CFG.unpack(tables.cfg)[2]
    alert, action, flags, _ = maps.SLOT.unpack(strict[8 * maps.CAT_FILELESS_EXEC:][:8])
    assert (action, flags) == (maps.ACT_BLOCK, 0)
    assert tables.alerts[alert] == RuleAlert("no-fileless", 7, (), None)
    other = maps.encode_scope(21, compile([*load_policy_paths([SEED]), *preset], ContainerScope("web", {})))
    assert maps.SCOPE_CFG.unpack(other.cfg)[2][8 * maps.CAT_FILELESS_EXEC:][:8] == bytes(8)
