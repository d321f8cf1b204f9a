"""The benchmark's rules, written once and rendered both as a KubeArmorPolicy and as an AppArmor profile.

`count` rules per kind on a tree in the guest:
- file: a readOnly directory rule on TREE/a/ (every open of TARGET walks to it and matches; reads stay
  allowed, writes are blocked) plus `count - 1` Block rules on TARGET's siblings;
- process: `count` Block rules on binaries beside EXEC_BINARY (the walk reaches the leaf and misses);
- network: one Block rule on raw sockets (the microbench opens TCP sockets, which stay allowed).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

TREE = "/srv/wb"
TARGET = f"{TREE}/a/b/c/file"  # opened by `microbench open`
BLOCKED_FILE = f"{TREE}/a/b/c/x0"  # a Block rule: the kill -9 probe reads it
EXEC_BINARY = f"{TREE}/bin/true"  # executed by `microbench exec`
BLOCKED_BINARY = f"{TREE}/bin/x0"  # a Block rule: proves the process rules are enforced
COUNTS = (10, 10_000)
PATTERN_COUNTS = (10, 1_000)  # matchPatterns beside BenchRules(10)'s exact rules

PREPARE_TREE = (
    f"mkdir -p {TREE}/a/b/c {TREE}/bin && echo data > {TARGET} && echo secret > {BLOCKED_FILE} "
    f"&& cp /usr/bin/true {EXEC_BINARY} && cp /usr/bin/true {BLOCKED_BINARY}"
)


@dataclass(frozen=True)
class BenchRules:
    count: int

    @property
    def name(self) -> str:
        return f"bench-{self.count}"

    def file_paths(self) -> list[str]:
        return [f"{TREE}/a/b/c/x{i}" for i in range(self.count - 1)]

    def process_paths(self) -> list[str]:
        return [f"{TREE}/bin/x{i}" for i in range(self.count)]

    def kubearmor(self) -> str:
        files = "".join(f"\n      - path: {p}" for p in self.file_paths())
        procs = "".join(f"\n      - path: {p}" for p in self.process_paths())
        head = textwrap.dedent(f"""\
            apiVersion: security.kubearmor.com/v1
            kind: KubeArmorPolicy
            metadata:
              name: {self.name}
            spec:
              selector:
                matchLabels:
                  kubearmor.io/container.name: ".*"
              action: Block
              network:
                matchProtocols:
                  - protocol: raw
              file:
                matchDirectories:
                  - dir: {TREE}/a/
                    recursive: true
                    readOnly: true""")
        return f"{head}\n    matchPaths:{files}\n  process:\n    matchPaths:{procs}\n"

    def apparmor(self) -> str:
        """The same rules for AppArmor: everything allowed (as unconfined) except what the policy blocks."""
        denies = [f"  deny {TREE}/a/** w,"]
        denies += [f"  deny {p} rw," for p in self.file_paths()]
        denies += [f"  deny {p} x," for p in self.process_paths()]
        body = "\n".join(denies)
        return (f"profile {self.name} flags=(attach_disconnected) {{\n  /** rwlkmix,\n  capability,\n"
                f"  network,\n  deny network raw,\n  mount,\n  umount,\n  signal,\n  ptrace,\n  unix,\n"
                f"{body}\n}}\n")


@dataclass(frozen=True)
class PatternRules:
    """BenchRules(10) plus `count` file matchPatterns that TARGET's opens walk but never match: half
    `/**/secret<i>.key` (no literal prefix: every automaton walks the whole path), half
    `TREE/a/b/c/x<i>*.tmp` (sharing TARGET's directory, so the walk reaches the last component)."""

    count: int

    @property
    def name(self) -> str:
        return f"bench-patterns-{self.count}"

    def patterns(self) -> list[str]:
        return [f"/**/secret{i}.key" if i % 2 == 0 else f"{TREE}/a/b/c/x{i}*.tmp" for i in range(self.count)]

    def kubearmor(self) -> str:
        items = "".join(f"\n      - pattern: {p}" for p in self.patterns())
        exact = BenchRules(10).kubearmor().replace("name: bench-10", f"name: {self.name}")
        return exact.replace("\n  process:", f"\n    matchPatterns:{items}\n  process:", 1)
