"""Is the code that would enforce a bundle the code its signers expected?

The signed payload may name the BPF objects it was written for, by sha256 (`bpf_objects`). Each must
be exactly what this image ships, so a policy is never enforced by programs its signers did not
review; a bundle that names none pins nothing. The caller hashes the shipped objects.
"""

from __future__ import annotations

from collections.abc import Mapping

from initdata.errors import BpfObjectMismatch


def check_bpf_objects(expected: Mapping[str, str], shipped: Mapping[str, str], *, origin: str) -> None:
    """Raise BpfObjectMismatch unless every object the bundle names is shipped with that digest.

    `expected` and `shipped` map object file names to "sha256:<hex>"; `origin` names the bundle.
    """
    for name, digest in sorted(expected.items()):
        if name not in shipped:
            raise BpfObjectMismatch(
                origin,
                "payload.bpf_objects",
                f"bundle expects BPF object {name}, which this image does not ship "
                f"(it ships {', '.join(sorted(shipped))})",
            )
        if shipped[name] != digest:
            raise BpfObjectMismatch(
                origin,
                "payload.bpf_objects",
                f"bundle expects {name} {digest[:19]}, this image ships {shipped[name][:19]}",
            )
