"""trust.objects: a bundle that names BPF objects is enforced only by exactly those objects."""

from __future__ import annotations

import pytest

from initdata.errors import BpfObjectMismatch
from supervisor.enforcement import shipped_objects
from trust.objects import check_bpf_objects

BUNDLE = "initdata.toml data.warden.bundle"


def test_a_bundle_naming_the_shipped_objects_or_none_passes() -> None:
    shipped = shipped_objects()
    check_bpf_objects({}, shipped, origin=BUNDLE)
    check_bpf_objects(shipped, shipped, origin=BUNDLE)
    check_bpf_objects({"net_guard.bpf.o": shipped["net_guard.bpf.o"]}, shipped, origin=BUNDLE)


def test_a_bundle_for_other_code_is_refused_with_both_digests() -> None:
    wrong = {"file_guard.bpf.o": "sha256:" + "ab" * 32}
    with pytest.raises(BpfObjectMismatch, match=r"bundle expects file_guard\.bpf\.o sha256:abababababab, "
                                                r"this image ships sha256:[0-9a-f]{12}$") as caught:
        check_bpf_objects(wrong, shipped_objects(), origin=BUNDLE)
    assert (caught.value.origin, caught.value.field) == (BUNDLE, "payload.bpf_objects")


def test_a_bundle_naming_an_object_the_image_lacks_is_refused() -> None:
    with pytest.raises(BpfObjectMismatch, match=r"bundle expects BPF object warden_lsm\.bpf\.o, which this image "
                                                r"does not ship"):
        check_bpf_objects({"warden_lsm.bpf.o": "sha256:" + "ab" * 32}, shipped_objects(), origin=BUNDLE)
