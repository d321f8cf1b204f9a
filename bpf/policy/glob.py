"""KubeArmor `matchPatterns`: AppArmor globs, parsed, and compiled into byte automata for the kernel.

KubeArmor hands `pattern` to AppArmor unchanged (its BPF-LSM enforcer ignores patterns), so the syntax and
meaning are AppArmor's (apparmor parser/parser_regex.c, convert_aaregex_to_pcre):
- `*` matches any run of bytes other than '/', `**` any run of bytes including '/', `?` one byte other
  than '/';
- a run of `*` that is a whole path component (after a '/', and followed by '/' or the end) must match at
  least one byte: `/tmp/*` does not match `/tmp/`, `/**/id_rsa` does not match `/id_rsa`;
- `[abc]`, `[a-z]`, `[^...]` character classes (ASCII), `{a,b,,c}` alternation (nestable, empty
  alternatives allowed), `\\` before one of ``*?[]{},\\`` for the character itself;
- everything else is literal, `^ $ . + | ( )` included (AppArmor escapes them); repeated '/' collapse.
What is refused, each with the reason: a pattern that is not absolute (AppArmor rejects it; `^/proc/...$`
is a regular expression, not a glob), a backslash before any other character (`\\W` is a regex escape:
AppArmor drops the backslash with a warning, so the author's meaning would be lost), an unclosed or empty
class or group, non-ASCII in a class, NUL or a line break, and more than `MAX_EXPANSIONS` alternatives.

A directory's path, as AppArmor sees it, ends with '/': the kernel appends it before matching (see
bpf/progs/warden_patterns.h), so `/tmp/**/` matches directories only.

Compilation (`compile_automata`): the patterns of one scope and category, each with a `Verdict` per
operation (read or write, by the owner or not), become at most `MAX_AUTOMATA` deterministic automata over
bytes. Alternations are expanded, the token sequences share their prefixes in a trie (so 1000 `/**/name`
patterns share one `/**/` loop, as in Aho-Corasick), subset construction gives a DFA whose input bytes are
grouped into classes that no pattern tells apart, and Moore refinement minimises it. States are numbered
in breadth-first order from the start (state 0 is the dead state), so the output is a function of the
input alone. A group whose automaton would pass `MAX_STATES` states is split in two, by pattern order (so
patterns sharing a prefix stay together), until every part fits; more than `MAX_AUTOMATA` parts is an
error naming the limit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# Limits (documented in the README): a pattern's bytes, its alternatives after expansion, the states of
# one automaton (its state ids are 16 bits wide in the kernel), automata per scope and category.
MAX_PATTERN_BYTES: Final = 255
MAX_EXPANSIONS: Final = 64
MAX_GROUP_DEPTH: Final = 8
MAX_STATES: Final = 16384
MAX_AUTOMATA: Final = 8
MAX_CELLS: Final = 1 << 21  # transitions (states x (classes + 1)) of all automata of one scope and category

_SLASH: Final = ord("/")
# Bytes a path can hold: everything but NUL.
_ANY: Final = frozenset(range(1, 256))
_NOT_SLASH: Final = _ANY - {_SLASH}
_ESCAPABLE: Final = frozenset("*?[]{},\\")


class PatternError(ValueError):
    """A pattern that cannot be enforced as written; the message says why, in one line."""


class AutomatonLimitError(ValueError):
    """Patterns that do not fit the engine's automata (MAX_STATES, MAX_AUTOMATA, MAX_CELLS)."""


# --------------------------------------------------------------------------------------------------------
# Tokens


@dataclass(frozen=True)
class Bytes:
    """One byte out of `allowed` (a literal is a one-byte set)."""

    allowed: frozenset[int]


@dataclass(frozen=True)
class Repeat:
    """Any number of bytes out of `allowed`: `*` (not '/') or `**` (anything)."""

    allowed: frozenset[int]


Token = Bytes | Repeat
Sequence_ = tuple[Token, ...]

_STAR: Final = Repeat(_NOT_SLASH)
_STARSTAR: Final = Repeat(_ANY)


def _sort_key(seq: Sequence_) -> tuple[tuple[int, tuple[int, ...]], ...]:
    return tuple((0 if isinstance(t, Bytes) else 1, tuple(sorted(t.allowed))) for t in seq)


# --------------------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class Glob:
    """A parsed pattern: its source and the token sequences its alternatives expand to."""

    source: str
    alternatives: tuple[Sequence_, ...]


def parse(pattern: str) -> Glob:
    """Parse an AppArmor glob; raises PatternError with the reason when it cannot be enforced."""
    shown = repr(pattern)
    if "\x00" in pattern:
        raise PatternError(f"{shown} contains a NUL character")
    if "\n" in pattern or "\r" in pattern:
        raise PatternError(f"{shown} contains a line break")
    if not pattern.startswith("/"):
        hint = ""
        if pattern.startswith("^") or pattern.endswith("$"):
            hint = " (it looks like a regular expression; matchPatterns are AppArmor globs: * ** ? [] {})"
        raise PatternError(f"{shown} is not absolute (must start with '/'; AppArmor refuses it){hint}")
    try:
        raw = pattern.encode("utf-8")
    except UnicodeEncodeError:
        raise PatternError(f"{shown} is not valid Unicode (lone surrogate)") from None
    if len(raw) > MAX_PATTERN_BYTES:
        raise PatternError(f"{shown} is {len(raw)} bytes long; the engine's limit is {MAX_PATTERN_BYTES} "
                           f"(MAX_PATTERN_BYTES)")
    parser = _Parser(pattern)
    alternatives = parser.sequence(depth=0)
    if parser.pos != len(pattern):  # a stray '}' ends sequence() early
        raise PatternError(f"{shown}: '}}' at offset {parser.pos} closes no '{{'")
    return Glob(pattern, tuple(sorted(set(alternatives), key=_sort_key)))


class _Parser:
    """Recursive descent over the pattern's characters; alternations expand into token sequences."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0

    def fail(self, why: str) -> PatternError:
        return PatternError(f"{self.text!r}: {why}")

    def sequence(self, depth: int) -> list[Sequence_]:
        """Token sequences of the text from here to the end, or to the ',' or '}' that ends this
        alternative (inside braces)."""
        results: list[list[Token]] = [[]]
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if depth and ch in ",}":
                break
            if not depth and ch == "}":
                break
            if ch == "*":
                run = self.pos
                while self.pos < len(text) and text[self.pos] == "*":
                    self.pos += 1
                stars = self.pos - run
                after = text[self.pos] if self.pos < len(text) else ""
                for r in results:
                    whole_component = bool(r) and r[-1] == Bytes(frozenset({_SLASH})) and after in ("/", "")
                    if whole_component:  # AppArmor: at least one byte, so "/x/*" never matches "/x/"
                        r.append(Bytes(_NOT_SLASH))
                    r.append(_STARSTAR if stars >= 2 else _STAR)
                continue
            if ch == "{":
                self.pos += 1
                options: list[Sequence_] = []
                if depth + 1 > MAX_GROUP_DEPTH:
                    raise self.fail(f"more than {MAX_GROUP_DEPTH} nested '{{'")
                while True:
                    options.extend(self.sequence(depth + 1))
                    if self.pos >= len(text):
                        raise self.fail("'{' is never closed")
                    if text[self.pos] == "}":
                        self.pos += 1
                        break
                    self.pos += 1  # ','
                results = [r + list(o) for r in results for o in options]
                self._check_expansions(len(results))
                continue
            token: Token
            if ch == "[":
                token = self.char_class()
            elif ch == "?":
                self.pos += 1
                token = Bytes(_NOT_SLASH)
            elif ch == "\\":
                token = Bytes(frozenset({self.escaped()}))
            else:
                self.pos += 1
                data = ch.encode("utf-8")
                for r in results:
                    for b in data:
                        self._append_literal(r, b)
                continue
            for r in results:
                r.append(token)
                if token == Bytes(frozenset({_SLASH})):
                    self._collapse_slash(r)
        return [tuple(r) for r in results]

    @staticmethod
    def _append_literal(r: list[Token], b: int) -> None:
        r.append(Bytes(frozenset({b})))
        if b == _SLASH:
            _Parser._collapse_slash(r)

    @staticmethod
    def _collapse_slash(r: list[Token]) -> None:
        # AppArmor's filter_slashes: "//" is "/".
        slash = Bytes(frozenset({_SLASH}))
        if len(r) >= 2 and r[-1] == slash and r[-2] == slash:
            r.pop()

    def _check_expansions(self, n: int) -> None:
        if n > MAX_EXPANSIONS:
            raise self.fail(f"its {{...}} alternatives expand to more than {MAX_EXPANSIONS} patterns "
                            f"(MAX_EXPANSIONS)")

    def escaped(self) -> int:
        self.pos += 1
        if self.pos >= len(self.text):
            raise self.fail("ends with a lone '\\'")
        ch = self.text[self.pos]
        if ch not in _ESCAPABLE:
            raise self.fail(f"'\\{ch}' is not a glob escape (a backslash escapes only * ? [ ] {{ }} , \\); "
                            f"it looks like a regular expression, and AppArmor would drop the backslash")
        self.pos += 1
        return ord(ch)

    def char_class(self) -> Bytes:
        start = self.pos
        self.pos += 1
        text = self.text
        negate = self.pos < len(text) and text[self.pos] == "^"
        if negate:
            self.pos += 1
        members: set[int] = set()
        previous: int | None = None
        while True:
            if self.pos >= len(text):
                raise self.fail(f"'[' at offset {start} is never closed")
            ch = text[self.pos]
            if ch == "]":
                self.pos += 1
                break
            if ch == "\\":
                b = self.escaped()
            else:
                if ord(ch) > 127:
                    raise self.fail(f"{ch!r} in a character class: classes take ASCII characters only")
                self.pos += 1
                b = ord(ch)
            if (ch == "-" and previous is not None and self.pos < len(text) and text[self.pos] != "]"):
                end_ch = text[self.pos]
                if end_ch == "\\":
                    end = self.escaped()
                else:
                    if ord(end_ch) > 127:
                        raise self.fail(f"{end_ch!r} in a character class: classes take ASCII characters only")
                    self.pos += 1
                    end = ord(end_ch)
                if end < previous:
                    raise self.fail(f"range {chr(previous)}-{chr(end)} in a character class runs backwards")
                members.update(range(previous, end + 1))
                previous = None
                continue
            members.add(b)
            previous = b
        members.discard(0)
        allowed = frozenset(_ANY - members) if negate else frozenset(members)
        if not allowed:
            raise self.fail(f"the character class at offset {start} matches nothing")
        return Bytes(allowed)


# --------------------------------------------------------------------------------------------------------
# Reference matching (the specification the automata are tested against)


def matches(glob: Glob, path: bytes) -> bool:
    """Whether `path` matches `glob`: a plain backtracking matcher over the token sequences."""
    return any(_match_tokens(seq, path) for seq in glob.alternatives)


def _match_tokens(seq: Sequence_, path: bytes) -> bool:
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(seq):
            result = j == len(path)
        else:
            token = seq[i]
            if isinstance(token, Bytes):
                result = j < len(path) and path[j] in token.allowed and go(i + 1, j + 1)
            else:
                result = go(i + 1, j)
                k = j
                while not result and k < len(path) and path[k] in token.allowed:
                    k += 1
                    result = go(i + 1, k)
        memo[key] = result
        return result

    return go(0, 0)


# --------------------------------------------------------------------------------------------------------
# Automata


@dataclass(frozen=True)
class Outcome:
    """What one operation gets: `action` 0 none (the exact rules and the posture decide), 1 pass, 2 audit,
    3 block (bpf/progs/warden_types.h enum warden_action), and the alert id of the rule that gave it."""

    action: int
    alert: int


NO_OUTCOME: Final = Outcome(0, 0)


@dataclass(frozen=True)
class Verdict:
    """A matched rule set's outcome per operation, index `write | owner << 1`; `needs_owner` when the
    outcome depends on who owns the object (an ownerOnly rule matched)."""

    outcomes: tuple[Outcome, Outcome, Outcome, Outcome]
    needs_owner: bool


@dataclass(frozen=True)
class PatternEntry:
    """One pattern as the automata compiler takes it: the glob and the verdict of a path it matches
    alone. When several patterns match one path, each operation takes the strongest outcome (block >
    audit > pass > none), the first entry's on a tie."""

    glob: Glob
    verdict: Verdict


@dataclass(frozen=True)
class Automaton:
    """A minimal DFA: `classes[b]` is byte b's class; `next[s * width + c]` the state after class c in
    state s (width = nclasses + 1; column nclasses holds state s's verdict number, 0 for none); state 0 is
    dead, `start` is 1; `verdicts[v - 1]` is verdict number v."""

    classes: bytes
    nclasses: int
    nstates: int
    start: int
    table: tuple[int, ...]
    verdicts: tuple[Verdict, ...]

    @property
    def width(self) -> int:
        return self.nclasses + 1

    def run(self, path: bytes) -> Verdict | None:
        """The verdict for `path` (None: no pattern matches), walking the table as the kernel does."""
        state = self.start
        for b in path:
            state = self.table[state * self.width + self.classes[b]]
            if state == 0:
                return None
        v = self.table[state * self.width + self.nclasses]
        return self.verdicts[v - 1] if v else None

    def digest_bytes(self) -> bytes:
        h = hashlib.sha256()
        h.update(self.classes)
        h.update(bytes(repr((self.nclasses, self.nstates, self.start, self.verdicts)), "ascii"))
        h.update(b"".join(x.to_bytes(2, "little") for x in self.table))
        return h.digest()


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """Per operation the strongest outcome (the first on a tie); needs_owner if any needs it."""
    outcomes = []
    for i in range(4):
        best = NO_OUTCOME
        for v in verdicts:
            if v.outcomes[i].action > best.action:
                best = v.outcomes[i]
        outcomes.append(best)
    return Verdict((outcomes[0], outcomes[1], outcomes[2], outcomes[3]), any(v.needs_owner for v in verdicts))


class _Trie:
    """Token sequences sharing prefixes. Node 0 is the root; a `Repeat` edge leads to a node that loops
    on its bytes and is entered without consuming one."""

    def __init__(self) -> None:
        self.edges: list[dict[Token, int]] = [{}]
        self.loop: list[frozenset[int]] = [frozenset()]
        self.accepts: list[list[int]] = [[]]

    def add(self, seq: Sequence_, entry: int) -> None:
        node = 0
        for token in seq:
            child = self.edges[node].get(token)
            if child is None:
                child = len(self.edges)
                self.edges.append({})
                self.loop.append(token.allowed if isinstance(token, Repeat) else frozenset())
                self.accepts.append([])
                self.edges[node][token] = child
            node = child
        if entry not in self.accepts[node]:
            self.accepts[node].append(entry)


def _byte_classes(sets: Sequence[frozenset[int]]) -> tuple[bytes, int]:
    """Bytes no set tells apart share a class; classes numbered by their smallest byte (NUL is class 0)."""
    signature: list[list[int]] = [[] for _ in range(256)]
    for i, s in enumerate(sets):
        for b in s:
            signature[b].append(i)
    ids: dict[tuple[int, ...], int] = {}
    classes = bytearray(256)
    for b in range(256):
        sig = tuple(signature[b])
        if sig not in ids:
            ids[sig] = len(ids)
        classes[b] = ids[sig]
    return bytes(classes), len(ids)


class _TooBig(Exception):
    pass


def _build(entries: Sequence[PatternEntry], indices: Sequence[int], max_states: int) -> Automaton:
    trie = _Trie()
    for i in indices:
        for seq in entries[i].glob.alternatives:
            trie.add(seq, i)
    sets = sorted({t.allowed for edges in trie.edges for t in edges}, key=lambda s: sorted(s))
    classes, nclasses = _byte_classes(sets)
    reps = [classes.index(c) for c in range(nclasses)]  # a byte of each class

    def closure(nodes: set[int]) -> frozenset[int]:
        todo = list(nodes)
        while todo:
            n = todo.pop()
            for token, child in trie.edges[n].items():
                if isinstance(token, Repeat) and child not in nodes:
                    nodes.add(child)
                    todo.append(child)
        return frozenset(nodes)

    # Per trie node: for each class, the nodes one byte of it leads to.
    moves: list[list[tuple[int, ...]]] = []
    for n, edges in enumerate(trie.edges):
        per_class: list[list[int]] = [[] for _ in range(nclasses)]
        for token, child in edges.items():
            if isinstance(token, Bytes):
                for c in range(nclasses):
                    if reps[c] in token.allowed:
                        per_class[c].append(child)
        if trie.loop[n]:
            for c in range(nclasses):
                if reps[c] in trie.loop[n]:
                    per_class[c].append(n)
        moves.append([tuple(x) for x in per_class])

    start = closure({0})
    index: dict[frozenset[int], int] = {frozenset(): 0, start: 1}
    order: list[frozenset[int]] = [frozenset(), start]
    trans: list[list[int]] = [[0] * nclasses]
    i = 1
    while i < len(order):
        current = order[i]
        row = []
        for c in range(nclasses):
            nxt: set[int] = set()
            for n in current:
                nxt.update(moves[n][c])
            target = closure(nxt) if nxt else frozenset()
            sid = index.get(target)
            if sid is None:
                sid = len(order)
                if sid >= max_states:
                    raise _TooBig()
                index[target] = sid
                order.append(target)
            row.append(sid)
        trans.append(row)
        i += 1

    # Verdict of each state: the combination of every entry accepted there, in entry order.
    state_verdict: list[Verdict | None] = []
    for nodes in order:
        accepted = sorted({e for n in nodes for e in trie.accepts[n]})
        state_verdict.append(combine([entries[e].verdict for e in accepted]) if accepted else None)
    return _minimise(classes, nclasses, trans, state_verdict)


def _minimise(classes: bytes, nclasses: int, trans: list[list[int]],
              state_verdict: list[Verdict | None]) -> Automaton:
    """Moore refinement from the partition by verdict, then breadth-first renumbering (dead state 0)."""
    n = len(trans)
    first: dict[tuple[bool, Verdict | None], int] = {}
    block = [first.setdefault((s == 0, state_verdict[s]), len(first)) for s in range(n)]
    count = len(first)
    while True:
        sigs: dict[tuple[int, ...], int] = {}
        new_block = [sigs.setdefault((block[s], *(block[t] for t in trans[s])), len(sigs)) for s in range(n)]
        if len(sigs) == count:
            break
        block, count = new_block, len(sigs)
    # representatives, numbered breadth-first from the start; the dead state's block is 0
    number: dict[int, int] = {block[0]: 0, block[1]: 1}
    reps: list[int] = [0, 1]
    k = 1
    while k < len(reps):
        for t in trans[reps[k]]:
            if block[t] not in number:
                number[block[t]] = len(reps)
                reps.append(t)
        k += 1
    verdicts: list[Verdict] = []
    verdict_ids: dict[Verdict, int] = {}
    table: list[int] = []
    for s in reps:
        table.extend(number[block[t]] for t in trans[s])
        v = state_verdict[s] if s != 0 else None
        if v is None:
            table.append(0)
        else:
            if v not in verdict_ids:
                verdicts.append(v)
                verdict_ids[v] = len(verdicts)
            table.append(verdict_ids[v])
    return Automaton(classes, nclasses, len(reps), 1, tuple(table), tuple(verdicts))


def compile_automata(entries: Sequence[PatternEntry], *, max_states: int = MAX_STATES,
                     max_automata: int = MAX_AUTOMATA) -> tuple[Automaton, ...]:
    """The automata deciding `entries` (in their order: earlier entries win ties); () for none."""
    if not entries:
        return ()
    order = sorted(range(len(entries)), key=lambda i: (min(_sort_key(s) for s in entries[i].glob.alternatives), i))
    groups: list[list[int]] = [order]
    done: list[Automaton] = []
    while groups:
        group = groups.pop(0)
        try:
            automaton = _build(entries, group, max_states)
        except _TooBig:
            if len(group) == 1:
                raise AutomatonLimitError(
                    f"pattern {entries[group[0]].glob.source!r} alone needs more than {max_states} automaton "
                    f"states (MAX_STATES); simplify it (fewer '**' and '*')") from None
            half = len(group) // 2
            groups[0:0] = [group[:half], group[half:]]
            continue
        done.append(automaton)
        if len(done) > max_automata:
            raise AutomatonLimitError(
                f"{len(entries)} patterns need more than {max_automata} automata of at most {max_states} "
                f"states (MAX_AUTOMATA, MAX_STATES); use fewer patterns in this scope")
    cells = sum(a.nstates * a.width for a in done)
    if cells > MAX_CELLS:
        raise AutomatonLimitError(f"{len(entries)} patterns need {cells} automaton cells; the engine's limit is "
                                  f"{MAX_CELLS} per scope and category (MAX_CELLS)")
    return tuple(done)


def automata_digest(automata: Sequence[Automaton]) -> str:
    h = hashlib.sha256()
    for a in automata:
        h.update(a.digest_bytes())
    return "sha256:" + h.hexdigest()


__all__ = [
    "MAX_AUTOMATA", "MAX_CELLS", "MAX_EXPANSIONS", "MAX_PATTERN_BYTES", "MAX_STATES", "NO_OUTCOME",
    "Automaton", "AutomatonLimitError", "Bytes", "Glob", "Outcome", "PatternEntry", "PatternError", "Repeat",
    "Verdict", "automata_digest", "combine", "compile_automata", "matches", "parse",
]
