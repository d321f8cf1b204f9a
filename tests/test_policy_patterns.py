"""matchPatterns on the host: AppArmor glob semantics, refusals, the automata against a reference matcher,
and the tables as the kernel reads them (bpf.kernel.patterns.simulate walks the encoded pool bytes the way
bpf/progs/warden_patterns.h does)."""

from __future__ import annotations

import functools
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bpf.policy.ruleset
from bpf.kernel import maps, patterns
from bpf.policy.compiler import ContainerScope, RuleLimitError, compile
from bpf.policy.files import load_policy_paths
from bpf.policy.glob import (
    Automaton,
    AutomatonLimitError,
    Outcome,
    PatternEntry,
    PatternError,
    Verdict,
    combine,
    compile_automata,
    matches,
    parse,
)
from bpf.policy.model import Action
from bpf.policy.ruleset import PatternRule, RuleAlert, RuleSet, pattern_automata, pattern_verdict
from bpf.policy.yaml_loader import parse_policy_text

REPO = Path(__file__).resolve().parents[1]
OWN = REPO / "tests" / "data" / "policies" / "patterns"


def match(pattern: str, path: str) -> bool:
    return matches(parse(pattern), path.encode())


# -- AppArmor's glob semantics (parser_regex.c convert_aaregex_to_pcre) ---------------------------------


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("/etc/*hado?", "/etc/shadow", True),
    ("/etc/*hado?", "/etc/hadoo", True),  # `*` may be empty inside a component
    ("/etc/*hado?", "/etc/shadoww", False),
    ("/etc/*hado?", "/etc/x/shadow", False),  # `*` never crosses '/'
    ("/tmp/*", "/tmp/x", True),
    ("/tmp/*", "/tmp/", False),  # a whole-component star needs a byte
    ("/tmp/*", "/tmp/x/y", False),
    ("/tmp/**", "/tmp/x/y", True),
    ("/tmp/**", "/tmp/", False),
    ("/**/*.conf", "/etc/a.conf", True),
    ("/**/*.conf", "/a.conf", False),  # `/**/` is at least one component
    ("/**/*.conf", "/etc/x/y/.conf", True),
    ("/home/**/.ssh/config", "/home/u/.ssh/config", True),
    ("/home/**/.ssh/config", "/home/u/v/.ssh/config", True),
    ("/usr/lib/python?/x", "/usr/lib/python3/x", True),
    ("/usr/lib/python?/x", "/usr/lib/python/x", False),
    ("/a/{b,c}/d", "/a/c/d", True),
    ("/a/{b,c}/d", "/a/e/d", False),
    ("/a/b{,s}", "/a/b", True),
    ("/a/b{,s}", "/a/bs", True),
    ("/a/{x,{y,z}w}", "/a/zw", True),
    ("/a/[0-9]x", "/a/7x", True),
    ("/a/[0-9]x", "/a/ax", False),
    ("/a/[^0-9]x", "/a/ax", True),
    ("/a/\\*", "/a/*", True),
    ("/a/\\*", "/a/b", False),
    ("/a//b", "/a/b", True),  # repeated slashes collapse
    ("/x.y+z(1)$", "/x.y+z(1)$", True),  # regex characters are literal
    ("/*/*/mv * /dev/null", "/usr/bin/mv x /dev/null", True),
    ("/**/wp-content/uploads/workreap-temp/", "/var/www/wp-content/uploads/workreap-temp/", True),
])
def test_apparmor_semantics(pattern: str, path: str, expected: bool) -> None:
    assert match(pattern, path) is expected
    (automaton,) = compile_automata([PatternEntry(parse(pattern), BLOCK_VERDICT)])
    assert (automaton.run(path.encode()) is not None) is expected


@pytest.mark.parametrize(("pattern", "reason"), [
    ("etc/*.conf", "is not absolute"),
    ("^/proc/\\*/mem$", "looks like a regular expression"),
    ("dbus-daemon", "is not absolute"),
    ("/[a-z]+\\W[a-z]+\\Wssh/gm", "'\\W' is not a glob escape"),
    ("/a/{b,c", "'{' is never closed"),
    ("/a/b}", "closes no '{'"),
    ("/a/[bc", "is never closed"),
    ("/a/[z-a]", "runs backwards"),
    ("/a/[é]", "ASCII characters only"),
    ("/a\\", "lone '\\'"),
    ("/a\nb", "line break"),
    ("/" + "a" * 255, "the engine's limit is 255"),
    ("/{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}", "more than 64 patterns"),
])
def test_refused_patterns_say_why(pattern: str, reason: str) -> None:
    with pytest.raises(PatternError) as caught:
        parse(pattern)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


# -- the automata decide exactly what the reference matcher decides ------------------------------------

BLOCK_VERDICT = Verdict((Outcome(3, 1),) * 4, False)
_PIECES = ["/", "a", "b", ".", "*", "**", "?", "[ab]", "{a,b/}", "/a", "/b"]
_PATH_BYTES = "ab./c"


@st.composite
def pattern_texts(draw: st.DrawFn) -> str:
    return "/" + "".join(draw(st.lists(st.sampled_from(_PIECES), min_size=0, max_size=7)))


paths = st.text(alphabet=_PATH_BYTES, min_size=0, max_size=10).map(lambda s: "/" + s)


def _verdict(i: int) -> Verdict:
    # distinct verdicts, so that the test sees which entries were combined
    return Verdict((Outcome(1 + i % 3, i + 1), Outcome(3, i + 1), Outcome(0, 0), Outcome(1 + (i + 1) % 3, i + 1)),
                   i % 2 == 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(pattern_texts(), min_size=1, max_size=5), st.lists(paths, min_size=1, max_size=20))
def test_automata_agree_with_the_reference_matcher(texts: list[str], samples: list[str]) -> None:
    entries = [PatternEntry(parse(t), _verdict(i)) for i, t in enumerate(texts)]
    automata = compile_automata(entries, max_states=400, max_automata=64)  # small: exercises the split path too
    encoded = _encode(automata)
    for path in samples:
        data = path.encode()
        expected = [e.verdict for e in entries if matches(e.glob, data)]
        found = [v for a in automata if (v := a.run(data)) is not None]
        assert combine(found) == combine(expected) if expected else not found
        # the bytes the loader writes, walked as the kernel walks them
        walked = [a.verdicts[n - 1] for a, (dfa, pool) in zip(automata, encoded, strict=True)
                  if (n := patterns.simulate(dfa, pool, data, directory=False))]
        assert walked == found


def _encode(automata: tuple[Automaton, ...]) -> list[tuple[bytes, dict[int, bytes]]]:
    out = []
    base = 0
    for a in automata:
        chunks = patterns.chunks_of(a)
        pool = {base + j: c for j, c in enumerate(chunks)}
        out.append((patterns.DFA.pack(base * patterns.CHUNK, a.nstates, a.width, a.start, 0, 0, a.classes), pool))
        base += len(chunks)
    return out


def test_directories_match_with_their_trailing_slash() -> None:
    (a,) = compile_automata([PatternEntry(parse("/tmp/**/"), BLOCK_VERDICT)])
    (dfa, pool), = _encode((a,))
    assert patterns.simulate(dfa, pool, b"/tmp/d", directory=True)
    assert not patterns.simulate(dfa, pool, b"/tmp/d", directory=False)
    assert not patterns.simulate(dfa, pool, b"/", directory=True)  # the root is "/", never "//"


def test_compile_is_deterministic_and_order_free() -> None:
    texts = ["/etc/*hado?", "/**/*.conf", "/home/**/.ssh/config", "/a/{b,c}/d", "/usr/bin/apt*"]
    entries = [PatternEntry(parse(t), BLOCK_VERDICT) for t in texts]
    first = compile_automata(entries)
    assert compile_automata(list(reversed(entries))) == first
    assert compile_automata(entries) == first


def test_limits_are_refused_with_their_names() -> None:
    many = [PatternEntry(parse(f"/**/x{i}*y{i}*z"), BLOCK_VERDICT) for i in range(40)]
    with pytest.raises(AutomatonLimitError, match="MAX_AUTOMATA"):
        compile_automata(many, max_states=50, max_automata=2)
    with pytest.raises(AutomatonLimitError, match="MAX_STATES"):
        compile_automata([PatternEntry(parse("/**/a*b*c*d*e*f"), BLOCK_VERDICT)], max_states=4)


def test_one_thousand_patterns_compile_in_bounded_time() -> None:
    rng = random.Random(17)
    texts = [f"/**/{''.join(rng.choice('abcdefghij') for _ in range(8))}.key" for _ in range(1000)]
    started = time.monotonic()
    automata = compile_automata([PatternEntry(parse(t), BLOCK_VERDICT) for t in texts])
    assert time.monotonic() - started < 60
    assert 1 <= len(automata) <= 8
    assert any(a.run(texts[500].replace("/**/", "/x/y/").encode()) for a in automata)


# -- verdicts: readOnly, ownerOnly, Allow/Audit/Block, as decide() applies a matched rule ---------------

ALERT = RuleAlert("p", None, (), None)


@pytest.mark.parametrize(("action", "read_only", "owner_only", "expected"), [
    # outcomes for: read by other, write by other, read by owner, write by owner
    (Action.BLOCK, False, False, (3, 3, 3, 3)),
    (Action.BLOCK, True, False, (1, 3, 1, 3)),
    (Action.BLOCK, False, True, (3, 3, 1, 1)),
    (Action.BLOCK, True, True, (3, 3, 1, 3)),
    (Action.AUDIT, True, False, (1, 2, 1, 2)),
    (Action.ALLOW, True, False, (1, 0, 1, 0)),
    (Action.ALLOW, False, True, (0, 0, 1, 1)),
])
def test_verdicts_resolve_the_modifiers(action: Action, read_only: bool, owner_only: bool,
                                        expected: tuple[int, int, int, int]) -> None:
    verdict = pattern_verdict(PatternRule("/a*", read_only, owner_only, action, ALERT), 1)
    assert tuple(o.action for o in verdict.outcomes) == expected
    assert verdict.needs_owner is owner_only


def test_block_beats_allow_where_both_match() -> None:
    rules = (PatternRule("/etc/*", False, False, Action.ALLOW, ALERT),
             PatternRule("/etc/s*", True, False, Action.BLOCK, RuleAlert("q", None, (), None)))
    (a,) = pattern_automata(rules)
    v = a.run(b"/etc/shadow")
    assert v is not None and [o.action for o in v.outcomes] == [1, 3, 1, 3]
    assert v.outcomes[1].alert == 2  # the Block rule's
    v = a.run(b"/etc/passwd")
    assert v is not None and [o.action for o in v.outcomes] == [1, 1, 1, 1]


# -- policies to maps -----------------------------------------------------------------------------------


def test_own_policies_compile_into_a_ruleset_with_an_automata_digest() -> None:
    policies = load_policy_paths([OWN])
    ruleset = compile(policies, ContainerScope("pat-own"))
    assert [r.pattern for r in ruleset.file_patterns] == sorted(r.pattern for r in ruleset.file_patterns)
    assert len(ruleset.file_patterns) == 4 and len(ruleset.process_patterns) == 5  # 3 + execname's /NAME, /**/NAME
    assert ruleset.automata_digest and ruleset.automata_digest.startswith("sha256:")
    text = ruleset.to_json()
    assert '"automata":' in text and RuleSet.from_json(text) == ruleset
    # a scope without patterns keeps the digest it had before patterns existed: no new keys
    assert "automata" not in compile(policies, ContainerScope("other")).to_json()


def test_encode_scope_sets_the_pattern_bit_and_alerts() -> None:
    ruleset = compile(load_policy_paths([OWN]), ContainerScope("pat-own"))
    tables = maps.encode_scope(maps.SCOPE_FIRST_CONTAINER, ruleset)
    _postures, rules, _strict = maps.SCOPE_CFG.unpack(tables.cfg)
    assert rules[maps.CAT_FILE] & patterns.SCOPE_PATTERNS and rules[maps.CAT_PROCESS] & patterns.SCOPE_PATTERNS
    assert tables.patterns is not None and set(tables.patterns.categories) == {maps.CAT_FILE, maps.CAT_PROCESS}
    assert {a.policy for a in tables.alerts.values()} >= {"own-file-star-question-block", "own-process-audit"}
    for category, cat in tables.patterns.categories.items():
        for automaton, records in zip(cat.automata, cat.verdicts, strict=True):
            assert len(records) == len(automaton.verdicts)
            for record in records:
                fields = patterns.VERDICT.unpack(record)
                assert all(alert in tables.alerts for alert, action in zip(fields[:4], fields[4:8], strict=True)
                           if action)
        assert cat.gen != 0 and category in (maps.CAT_FILE, maps.CAT_PROCESS)


def test_scope_limit_is_a_rule_limit_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # the limits themselves are tested above; here, that compile() reports them as a RuleLimitError
    monkeypatch.setattr(bpf.policy.ruleset, "compile_automata",
                        functools.partial(compile_automata, max_states=64, max_automata=1))
    text = "".join(f"""---
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata:
  name: p{i}
spec:
  selector:
    matchLabels:
      kubearmor.io/container.name: x
  file:
    matchPatterns:
    - pattern: /**/a*b*c*d*e*f*g*{i}
"""for i in range(30))
    policies = parse_policy_text(text, origin="many.yaml")
    with pytest.raises(RuleLimitError, match=r"file\.matchPatterns"):
        compile(policies, ContainerScope("x"))
