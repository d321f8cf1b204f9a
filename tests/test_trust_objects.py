"""trust.objects: a bundle that names BPF objects is enforced only by exactly those objects; and the
objects loaded are the bytes that were hashed (bpf.kernel.libbpf, bpf.kernel.loading)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bpf.kernel.errors import EngineLoadError
from bpf.kernel.libbpf import BpfObject, Libbpf
from bpf.kernel.loading import check_loaded
from bpf.kernel.objects import object_digest, object_path
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


# -- the bytes hashed are the bytes loaded ------------------------------------------------------------


def test_an_object_is_opened_from_the_bytes_it_was_hashed_from(tmp_path: Path) -> None:
    # libbpf opens the bytes warden read (bpf_object__open_mem), not the file again: replacing the file
    # after the open changes neither the digest nor the programs the object will load.
    copy = tmp_path / "file_guard.bpf.o"
    shutil.copyfile(object_path("file_guard"), copy)
    lib = Libbpf()
    with BpfObject(lib, copy) as obj:
        expected = obj.digest
        programs = [p.name for p in obj.programs()]
        shutil.copyfile(object_path("net_guard"), copy)
        assert expected == object_digest(object_path("file_guard")) != object_digest(copy)
        assert [p.name for p in obj.programs()] == programs and "warden_file_open" in programs
        # what the engine and the preload check before they use an object
        check_loaded({"file_guard": obj}, {"file_guard": expected})
        with pytest.raises(EngineLoadError, match=r"^file_guard: .*file_guard\.bpf\.o changed while it was "
                                                  r"loaded \(sha256:[0-9a-f]{64}, expected sha256:[0-9a-f]{64}\)$"):
            check_loaded({"file_guard": obj}, {"file_guard": object_digest(copy)})
