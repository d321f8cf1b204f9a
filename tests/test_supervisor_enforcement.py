"""supervisor.enforcement: the shipped BPF objects and the reported RuleSet digest (host-side parts)."""

from __future__ import annotations

import hashlib

from bpf.kernel.objects import object_dir
from supervisor.enforcement import enforced_digest, shipped_objects


def test_shipped_objects_are_the_build_outputs_by_sha256() -> None:
    shipped = shipped_objects()
    assert set(shipped) == {"file_guard.bpf.o", "exec_guard.bpf.o", "net_guard.bpf.o", "cap_guard.bpf.o",
                            "scope_guard.bpf.o", "self_guard.bpf.o"}
    for name, digest in shipped.items():
        assert digest == "sha256:" + hashlib.sha256((object_dir() / name).read_bytes()).hexdigest()


def test_enforced_digest_covers_the_standing_scopes_only() -> None:
    scopes = {"host": "sha256:" + "1" * 64, "any-container": "sha256:" + "2" * 64}
    digest = enforced_digest(scopes)
    assert digest.startswith("sha256:") and len(digest) == 71
    assert enforced_digest({**scopes, "web": "sha256:" + "3" * 64}) == digest  # registered containers excluded
    assert enforced_digest({**scopes, "host": "sha256:" + "4" * 64}) != digest
