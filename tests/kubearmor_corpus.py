"""Run `warden policy check` over a corpus of KubeArmor documents and compare with the corpus' verdicts.

    python -m tests.kubearmor_corpus [DIR]     (default: $WARDEN_KUBEARMOR_CORPUS, else ../shared/kubearmor-corpus)

DIR holds one YAML document per file and a MANIFEST.tsv with (at least) the columns `file` and `expected`
(`valid` / `invalid`, KubeArmor's own verdict: its CRD, see the corpus' README). A manifest may also say
what warden must do, in the columns `warden` (`accepted`, `warned`: accepted with a warning line, or
`refused`) and `why` (text the first problem, or the warning line, must contain); the project's own corpus
does. Each file is checked as `warden policy check FILE` does (bpf.policy.files.load_policy_paths), then
every accepted file is compiled for the host scope, for any-container and for a scope its selector selects,
as `warden policy compile` does.
Prints the acceptance of valid documents (all, and without the documents that use matchPatterns), one line
per false refusal, and fails (exit 1) on:
- an invalid document accepted;
- an invalid document refused without FILE:LINE (every problem must name a line >= 1);
- anything that is not a clean refusal (an exception other than PolicyError is a crash);
- with --min-accept P: fewer than P percent of the valid documents accepted.

`.ci/run` runs it when the corpus is present (the corpus is third-party data and is not part of the project);
tests/test_kubearmor_corpus.py runs it over the project's own small corpus in tests/data/policies/compat.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bpf.policy.compiler import AnyContainerScope, ContainerScope, HostScope, Scope, compile
from bpf.policy.files import load_policy_paths
from bpf.policy.model import CONTAINER_NAME_LABEL, Policy, PolicyError, PolicyKind, container_name_list

DEFAULT_DIR = Path("..") / "shared" / "kubearmor-corpus"


@dataclass
class CorpusResult:
    valid: int = 0
    valid_accepted: int = 0
    valid_patterns: int = 0  # valid documents that use matchPatterns
    valid_patterns_accepted: int = 0
    invalid: int = 0
    refused_by_design: int = 0  # valid documents refused as the manifest's `warden` column says
    false_refusals: list[str] = field(default_factory=list)  # "FILE: first problem"
    refusal_causes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # anything that fails the check

    def acceptance(self, *, patterns: bool = True) -> float:
        total = self.valid if patterns else self.valid - self.valid_patterns
        accepted = self.valid_accepted if patterns else self.valid_accepted - self.valid_patterns_accepted
        return 100.0 * accepted / total if total else 100.0


def _cause(message: str) -> str:
    # "FILE:LINE: field: message" -> "field: message" with list indexes dropped, for a per-cause count.
    parts = message.split(": ", 2)
    text = ": ".join(parts[1:]) if len(parts) > 1 else message
    for ch in "0123456789":
        text = text.replace(f"[{ch}", "[")
    return text.split("; ")[0][:100]


def check_corpus(directory: Path) -> CorpusResult:
    result = CorpusResult()
    with (directory / "MANIFEST.tsv").open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    if not rows:
        result.failures.append(f"{directory / 'MANIFEST.tsv'}: no documents listed")
    for row in rows:
        path = directory / row["file"]
        expected = row["expected"]
        if expected not in ("valid", "invalid"):
            result.failures.append(f"{path}: MANIFEST says {expected!r}, not valid or invalid")
            continue
        uses_patterns = "matchPatterns" in path.read_text(encoding="utf-8", errors="replace")
        policies: tuple[Policy, ...] = ()
        try:
            policies = load_policy_paths([path])
            for scope in (HostScope(), AnyContainerScope(), *map(_matching_scope, policies)):
                compile(policies, scope)
            refused: PolicyError | None = None
        except PolicyError as exc:
            refused = exc
        except Exception:  # a crash is exactly what this check reports
            result.failures.append(f"{path}: crashed: {traceback.format_exc().strip().splitlines()[-1]}")
            continue
        verdict = row.get("warden") or ""
        if verdict:
            _check_verdict(result, path, verdict, row.get("why") or "", policies if refused is None else (),
                           refused)
            if verdict == "refused" and expected == "valid" and refused is not None:
                result.valid += 1
                result.valid_patterns += uses_patterns
                result.refused_by_design += 1
                continue
        if expected == "valid":
            result.valid += 1
            result.valid_patterns += uses_patterns
            if refused is None:
                result.valid_accepted += 1
                result.valid_patterns_accepted += uses_patterns
            else:
                first = str(refused.problems[0]) if refused.problems else "(no problem given)"
                result.false_refusals.append(first)
                result.refusal_causes[_cause(first)] += 1
        else:
            result.invalid += 1
            if refused is None:
                result.failures.append(f"{path}: KubeArmor refuses it ({row.get('expected_basis', '')}), "
                                       f"warden accepted it")
            elif not refused.problems or any(p.line < 1 for p in refused.problems):
                result.failures.append(f"{path}: refused without FILE:LINE: {refused}")
    return result


def _matching_scope(policy: Policy) -> Scope:
    """A scope the policy selects, built from its selector (so that the compile step matches it)."""
    labels = dict(policy.selector.match_labels)
    if policy.kind is PolicyKind.HOST:
        return HostScope(labels)
    value = labels.pop(CONTAINER_NAME_LABEL, "")
    names = container_name_list(value)
    name = names[0] if names else "c" if names is not None or re.fullmatch(value, "c") else value
    return ContainerScope(name, labels)


def _check_verdict(result: CorpusResult, path: Path, verdict: str, why: str, policies: tuple[Policy, ...],
                   refused: PolicyError | None) -> None:
    """The manifest's `warden` / `why` columns: what warden must do with the document, and why."""
    warnings = [line for p in policies if (line := p.warning_line()) is not None]
    if verdict == "refused":
        if refused is None:
            result.failures.append(f"{path}: accepted, the manifest says refused ({why})")
        elif why not in str(refused.problems[0]):
            result.failures.append(f"{path}: refused, but not for {why!r}: {refused.problems[0]}")
    elif verdict in ("accepted", "warned"):
        if refused is not None:
            result.failures.append(f"{path}: refused, the manifest says {verdict}: {refused.problems[0]}")
        elif verdict == "accepted" and warnings:
            result.failures.append(f"{path}: accepted with a warning the manifest does not expect: {warnings}")
        elif verdict == "warned" and (len(warnings) != 1 or why not in warnings[0]):
            result.failures.append(f"{path}: expected one warning line with {why!r}, got {warnings}")
    else:
        result.failures.append(f"{path}: MANIFEST says warden {verdict!r}, not accepted, warned or refused")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kubearmor_corpus", description=__doc__.split("\n")[0])
    parser.add_argument("directory", nargs="?", type=Path,
                        default=Path(os.environ.get("WARDEN_KUBEARMOR_CORPUS", DEFAULT_DIR)))
    parser.add_argument("--min-accept", type=float, default=0.0, metavar="PERCENT",
                        help="fail when fewer valid documents are accepted (default: 0, report only)")
    parser.add_argument("--quiet", action="store_true", help="do not list each false refusal")
    args = parser.parse_args(argv)
    if not (args.directory / "MANIFEST.tsv").is_file():
        print(f"{args.directory}: no MANIFEST.tsv (not a policy corpus)", file=sys.stderr)
        return 2
    result = check_corpus(args.directory)
    if not args.quiet:
        for line in result.false_refusals:
            print(f"false refusal: {line}")
    for cause, count in result.refusal_causes.most_common():
        print(f"{count:4d} refused: {cause}")
    if result.refused_by_design:
        print(f"valid documents refused as the manifest says: {result.refused_by_design}")
    print(f"valid documents accepted: {result.valid_accepted}/{result.valid} ({result.acceptance():.1f}%); "
          f"without the {result.valid_patterns} using matchPatterns: "
          f"{result.valid_accepted - result.valid_patterns_accepted}/{result.valid - result.valid_patterns} "
          f"({result.acceptance(patterns=False):.1f}%)")
    print(f"invalid documents refused with FILE:LINE: "
          f"{result.invalid - len([f for f in result.failures if 'KubeArmor refuses' in f or 'FILE:LINE' in f])}"
          f"/{result.invalid}")
    for failure in result.failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    if result.acceptance() < args.min_accept:
        print(f"FAIL: acceptance {result.acceptance():.1f}% is below {args.min_accept}%", file=sys.stderr)
        return 1
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
