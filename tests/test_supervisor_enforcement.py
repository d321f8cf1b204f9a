"""supervisor.enforcement: the bundle's BPF object pins and the reported RuleSet digest (host-side parts)."""

from __future__ import annotations

import hashlib

import pytest

from bpf.kernel.objects import object_dir
from supervisor.enforcement import EnforcementError, check_expected_objects, enforced_digest, shipped_objects


def test_shipped_objects_are_the_build_outputs_by_sha256() -> None:
    shipped = shipped_objects()
    assert set(shipped) == {"file_guard.bpf.o", "exec_guard.bpf.o", "net_guard.bpf.o", "cap_guard.bpf.o",
                            "self_guard.bpf.o"}
    for name, digest in shipped.items():
        assert digest == "sha256:" + hashlib.sha256((object_dir() / name).read_bytes()).hexdigest()


def test_a_bundle_naming_the_shipped_objects_or_none_passes() -> None:
    check_expected_objects({})
    check_expected_objects(shipped_objects())
    check_expected_objects({"net_guard.bpf.o": shipped_objects()["net_guard.bpf.o"]})


def test_a_bundle_for_other_code_is_refused_with_both_digests() -> None:
    wrong = {"file_guard.bpf.o": "sha256:" + "ab" * 32}
    with pytest.raises(EnforcementError, match=r"bundle expects file_guard\.bpf\.o sha256:abababababab, "
                                               r"this image ships sha256:[0-9a-f]{12}$"):
        check_expected_objects(wrong)


def test_a_bundle_naming_an_object_the_image_lacks_is_refused() -> None:
    with pytest.raises(EnforcementError, match=r"bundle expects BPF object warden_lsm\.bpf\.o, which this image "
                                               r"does not ship"):
        check_expected_objects({"warden_lsm.bpf.o": "sha256:" + "ab" * 32})


def test_enforced_digest_covers_the_standing_scopes_only() -> None:
    scopes = {"host": "sha256:" + "1" * 64, "any-container": "sha256:" + "2" * 64}
    digest = enforced_digest(scopes)
    assert digest.startswith("sha256:") and len(digest) == 71
    assert enforced_digest({**scopes, "web": "sha256:" + "3" * 64}) == digest  # registered containers excluded
    assert enforced_digest({**scopes, "host": "sha256:" + "4" * 64}) != digest
