"""Host tests of the engine's encodings: the C layouts and the path hash agree with bpf/maps.py and
bpf/events.py (the C header is compiled with the host compiler), RuleSets become the expected map
nodes, and events decode into KubeArmor alert fields."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bpf.kernel import maps
from bpf.kernel.events import EVENT, EventContext, EventDecodeError, ScopeInfo, decode_event, parse_event
from bpf.policy.compiler import AnyContainerScope, ContainerScope, compile
from bpf.policy.files import load_policy_paths
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
    assert len(nodes) == 4  # "/", "/bin/", "/sbin/", raw
    postures, rules = maps.SCOPE_CFG.unpack(tables.cfg)
    assert postures == bytes(8)
    assert rules[maps.CAT_FILE] == maps.SCOPE_RULES and rules[maps.CAT_NETWORK] == maps.SCOPE_RULES
    assert rules[maps.CAT_PROCESS] == 0 and not tables.sources
    assert tables.alerts[fim].policy == "file-integrity-monitoring"


def test_aliases_add_the_resolved_paths_and_literals_win() -> None:
    ruleset = compile(load_policy_paths([SEED]), ContainerScope("db", {"app": "mysql"}))
    tables = maps.encode_scope(20, ruleset, resolve=lambda p: "/usr" + p if p.startswith(("/bin", "/sbin")) else None)
    nodes = _nodes(tables)
    assert {(maps.CAT_FILE, 0, p) for p in ("/usr/bin/", "/usr/sbin/", "/usr/", "/var/lib/mysql/")} <= set(nodes)
    assert nodes[(maps.CAT_FILE, 0, "/var/lib/mysql/")][2][1] == maps.ACT_BLOCK  # recursive slot


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
    postures, rules = maps.SCOPE_CFG.unpack(tables.cfg)
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
        source_len=12, comm=b"cat", path=b"/var/lib/mysql/any-file/" + b"junk", source=b"/usr/bin/catXX")
    fields.update(overrides)
    return EVENT.pack(*fields.values())


CONTEXT = EventContext(scopes={17: ScopeInfo("mysql", {"app": "mysql"})},
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
    assert (alert.Enforcer, alert.Action, alert.Result, alert.PID, alert.PPID) == ("BPFLSM", "Block",
                                                                                  "Permission denied", 10, 9)


def test_network_capability_posture_and_host_events() -> None:
    net = decode_event(_event(category=3, hook=461, a0=2, a1=3 | 0x80000, a2=1, path_len=0, scope=2), CONTEXT)
    assert (net.Operation, net.Resource, net.ContainerName) == ("Network", "domain=AF_INET type=SOCK_RAW protocol=1",
                                                                "any-container")
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
