"""matchPatterns automata in the kernel's maps (bpf/progs/warden_patterns_types.h): encoding and syncing.

A scope's pattern rules of one category compile (bpf.policy.ruleset.pattern_automata) into at most
MAX_AUTOMATA DFAs. Here each becomes a header (warden_pat_dfas), its verdict records (warden_pat_verdicts)
and its transition table, written into free chunks of the shared pool (warden_pat_pool); a head per scope
and category (warden_pat_heads) names the generation in force and how many automata it has.

Changing them never leaves a gap: the new generation (a number derived from the content) is written
beside the old one into chunks no live automaton uses, the head is switched, and only then are the old
headers and records deleted (their chunks are free from then on: which chunks are used is read back from
the headers in the kernel, so nothing else has to remember it). The scope's WARDEN_SCOPE_PATTERNS bit
(bpf.kernel.maps.encode_scope) is set by the scope sync after the head is written and cleared before the
head is removed.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from bpf.kernel.libbpf import MapHandle
from bpf.policy.glob import Automaton, Verdict
from bpf.policy.ruleset import PatternRule, RuleAlert, RuleSet

SCOPE_PATTERNS: Final = 4  # WARDEN_SCOPE_PATTERNS
CHUNK: Final = 64  # WARDEN_PAT_CHUNK
POOL_CHUNKS: Final = 1 << 16  # WARDEN_PAT_POOL_CHUNKS

PAT_KEY: Final = struct.Struct("<IIBBH")  # struct warden_pat_key (12)
HEAD: Final = struct.Struct("<IB3x")  # struct warden_pat_head (8)
DFA: Final = struct.Struct("<IHHHHI256s")  # struct warden_pat_dfa (272)
VERDICT: Final = struct.Struct("<4I4BB3x")  # struct warden_pat_verdict (24)
CHUNK_VALUE: Final = struct.Struct(f"<{CHUNK}H")  # struct warden_pat_chunk (128)
POOL_KEY: Final = struct.Struct("<I")

MAPS: Final = ("warden_pat_heads", "warden_pat_dfas", "warden_pat_verdicts", "warden_pat_pool")


class PatternPoolError(ValueError):
    """The automata do not fit the free part of the shared pool (WARDEN_PAT_POOL_CHUNKS)."""


@dataclass(frozen=True)
class CategoryAutomata:
    """One scope's automata of one category, ready to write: everything but the pool position."""

    category: int
    gen: int
    automata: tuple[Automaton, ...]
    verdicts: tuple[tuple[bytes, ...], ...]  # per automaton, VERDICT-encoded records, number 1 first


@dataclass
class PatternTables:
    scope: int
    categories: dict[int, CategoryAutomata] = field(default_factory=dict)
    alerts: dict[int, RuleAlert] = field(default_factory=dict)

    def digest(self) -> str:
        h = hashlib.sha256()
        for category in sorted(self.categories):
            c = self.categories[category]
            h.update(bytes([category]) + c.gen.to_bytes(4, "little"))
            for records in c.verdicts:
                h.update(b"".join(records))
        return "sha256:" + h.hexdigest()


def _record(verdict: Verdict, rules: tuple[PatternRule, ...], alert_id: Mapping[int, int]) -> bytes:
    alerts = [alert_id[o.alert] if o.action else 0 for o in verdict.outcomes]
    actions = [o.action for o in verdict.outcomes]
    return VERDICT.pack(*alerts, *actions, int(verdict.needs_owner))


def encode_patterns(scope: int, ruleset: RuleSet, categories: Mapping[str, int],
                    alert_id_of: Callable[[RuleAlert], int]) -> PatternTables:
    """The pattern tables of `ruleset` for scope id `scope`; `categories` maps "file"/"process" to the
    category codes."""
    tables = PatternTables(scope)
    for name, code in categories.items():
        rules: tuple[PatternRule, ...] = getattr(ruleset, f"{name}_patterns")
        if not rules:
            continue
        automata: tuple[Automaton, ...] = getattr(ruleset, f"{name}_automata")
        ids = {i + 1: alert_id_of(r.alert) for i, r in enumerate(rules)}
        for r in rules:
            tables.alerts[alert_id_of(r.alert)] = r.alert
        verdicts = tuple(tuple(_record(v, rules, ids) for v in a.verdicts) for a in automata)
        h = hashlib.sha256(bytes([code]))
        for a, records in zip(automata, verdicts, strict=True):
            h.update(a.digest_bytes())
            h.update(b"".join(records))
        gen = int.from_bytes(h.digest()[:4], "little") or 1
        tables.categories[code] = CategoryAutomata(code, gen, automata, verdicts)
    return tables


def kernel_digest(handles: Mapping[str, MapHandle], scope: int) -> str | None:
    """PatternTables.digest() of what the maps hold for `scope` (None: no patterns), for health checks."""
    heads, _dfas, verdicts, _pool = (handles[m] for m in MAPS)
    found: dict[int, tuple[int, int]] = {}
    for key in list(heads.keys()):
        s, _gen, category, _a, _v = PAT_KEY.unpack(key)
        value = heads.lookup(key)
        if s == scope and value is not None:
            gen, count = HEAD.unpack(value)
            found[category] = (gen, count)
    if not found:
        return None
    h = hashlib.sha256()
    for category in sorted(found):
        gen, count = found[category]
        h.update(bytes([category]) + gen.to_bytes(4, "little"))
        for i in range(count):
            v = 1
            while (record := verdicts.lookup(PAT_KEY.pack(scope, gen, category, i, v))) is not None:
                h.update(record)
                v += 1
    return "sha256:" + h.hexdigest()


def head_key(scope: int, category: int) -> bytes:
    return PAT_KEY.pack(scope, 0, category, 0, 0)


def chunks_of(automaton: Automaton) -> list[bytes]:
    """The automaton's table as pool chunks (the last one zero-padded)."""
    cells = list(automaton.table)
    cells += [0] * (-len(cells) % CHUNK)
    return [CHUNK_VALUE.pack(*cells[i : i + CHUNK]) for i in range(0, len(cells), CHUNK)]


def _used_chunks(dfas: Mapping[bytes, bytes]) -> list[tuple[int, int]]:
    """(first chunk, chunk count) of every automaton whose header is in the kernel."""
    used = []
    for value in dfas.values():
        base, nstates, width, _start, _pad, _pad2, _classes = DFA.unpack(value)
        used.append((base // CHUNK, -(-nstates * width // CHUNK)))
    return sorted(used)


def _allocate(used: list[tuple[int, int]], need: int) -> int:
    """First fit: the first chunk of `need` free chunks; `used` gains the range."""
    at = 0
    for first, count in sorted(used):
        if first - at >= need:
            break
        at = max(at, first + count)
    if at + need > POOL_CHUNKS:
        raise PatternPoolError(f"the matchPatterns automata need {need} more chunks of the shared pool, which "
                               f"has {POOL_CHUNKS} (WARDEN_PAT_POOL_CHUNKS); use fewer patterns")
    used.append((at, need))
    return at


def write_patterns(handles: Mapping[str, MapHandle], tables: Iterable[PatternTables]) -> int:
    """Make-before-break, first half: write each scope's current generation (unless it is in force
    already) and switch its heads to it. Returns entries written."""
    heads, dfas, verdicts, pool = (handles[m] for m in MAPS)
    dfa_contents = dfas.contents()
    used = _used_chunks(dfa_contents)
    written = 0
    for t in tables:
        for code, cat in sorted(t.categories.items()):
            hk = head_key(t.scope, code)
            want_head = HEAD.pack(cat.gen, len(cat.automata))
            if heads.lookup(hk) == want_head and all(
                    PAT_KEY.pack(t.scope, cat.gen, code, i, 0) in dfa_contents for i in range(len(cat.automata))):
                continue
            for i, (a, records) in enumerate(zip(cat.automata, cat.verdicts, strict=True)):
                chunks = chunks_of(a)
                first = _allocate(used, len(chunks))
                for j, chunk in enumerate(chunks):
                    pool.update(POOL_KEY.pack(first + j), chunk)
                for v, record in enumerate(records, start=1):
                    verdicts.update(PAT_KEY.pack(t.scope, cat.gen, code, i, v), record)
                dfas.update(PAT_KEY.pack(t.scope, cat.gen, code, i, 0),
                            DFA.pack(first * CHUNK, a.nstates, a.width, a.start, 0, 0, a.classes))
                written += len(chunks) + len(records) + 1
            heads.update(hk, want_head)
            written += 1
    return written


def prune_patterns(handles: Mapping[str, MapHandle], tables: Iterable[PatternTables],
                   scope_ids: Iterable[int]) -> int:
    """Second half, after the scopes' configuration is synced: for `scope_ids`, delete the heads of
    categories without patterns now, then every header and record not of the generation in force."""
    ids = set(scope_ids)
    keep_heads: dict[tuple[int, int], int] = {}
    for t in tables:
        for code, cat in t.categories.items():
            keep_heads[(t.scope, code)] = cat.gen
    heads, dfas, verdicts, _pool = (handles[m] for m in MAPS)
    removed = 0
    for key in list(heads.keys()):
        scope, _gen, category, _a, _v = PAT_KEY.unpack(key)
        if scope in ids and (scope, category) not in keep_heads:
            heads.delete(key)
            removed += 1
    for handle in (dfas, verdicts):
        for key in list(handle.keys()):
            scope, gen, category, _a, _v = PAT_KEY.unpack(key)
            if scope in ids and keep_heads.get((scope, category)) != gen:
                handle.delete(key)
                removed += 1
    return removed


def simulate(dfa_value: bytes, pool: Mapping[int, bytes], path: bytes, directory: bool) -> int:
    """The verdict number warden_dfa_walk returns for `path`, computed from the bytes written to the
    maps (header and pool chunks): the host tests' check that the tables say what the compiler meant."""
    base, _nstates, width, start, _pad, _pad2, classes = DFA.unpack(dfa_value)

    def cell(index: int) -> int:
        return int(CHUNK_VALUE.unpack(pool[index // CHUNK])[index % CHUNK])

    data = path + (b"/" if directory and len(path) > 1 else b"")
    state = start
    for b in data:
        state = cell(base + state * width + classes[b])
        if state == 0:
            return 0
    return cell(base + state * width + width - 1)
