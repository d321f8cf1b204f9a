"""Which signed policies apply to a container: decided from the signed bundle, never from annotations.

Inputs, and how far each is trusted:
- the bundle's `pod` (initdata.bundle.PodIdentity): namespace, labels, container names, signed by the
  pod owner and bound to this VM by the gate. The only source of labels and namespace.
- the container name the OCI hook reports (CRI annotation `io.kubernetes.cri.container-name`):
  written by the host, so it only *picks among* the names the bundle lists. CoCo's agent policy pins
  annotations where it is used; where it is not, the host can at most swap one expected container's
  rules for another's, both signed for this pod.

Decision (`identify`):
- `Named(name)`: the reported name is one of the bundle's containers; the container is selected as
  KubeArmor would select a container of that name with the pod's labels.
- `Union`: anything else (a name the bundle does not list, or a bundle with no `pod`). The container
  gets every policy that could apply to *any* container of the pod: fail closed, never none. Without
  a `pod`, labels are unknown, so every KubeArmorPolicy applies.

Namespaces (`applies_in_namespace`): a KubeArmorPolicy whose metadata.namespace is set and differs
from the pod's namespace does not apply (KubeArmor's own rule). Without a `pod`, namespaces cannot be
checked and every policy is kept (fail closed).

Pure functions, no I/O (layer 2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bpf.policy.model import Policy, PolicyKind
from initdata.bundle import PodIdentity


@dataclass(frozen=True)
class Named:
    """The container is the bundle's container `name`."""

    name: str

    def describe(self) -> str:
        return f"container {self.name!r} of the signed pod"


@dataclass(frozen=True)
class Union:
    """The container could not be identified; `reason` says why (for the log)."""

    reason: str

    def describe(self) -> str:
        return f"union of every policy for the pod ({self.reason})"


ContainerIdentity = Named | Union


def identify(pod: PodIdentity | None, reported_name: str) -> ContainerIdentity:
    """The identity a container with this reported name gets (module docstring: the rule)."""
    if pod is None:
        return Union("the bundle names no pod")
    if reported_name in pod.containers:
        return Named(reported_name)
    return Union(f"{reported_name[:63]!r} is not one of the signed pod's containers")


def applies_in_namespace(policy: Policy, pod: PodIdentity | None) -> bool:
    """KubeArmorPolicy metadata.namespace against the signed pod's namespace (host policies: always)."""
    if policy.kind is not PolicyKind.CONTAINER or pod is None or policy.namespace is None:
        return True
    return policy.namespace == pod.namespace


def policies_for_pod(policies: Iterable[Policy], pod: PodIdentity | None) -> tuple[Policy, ...]:
    """The policies of the bundle that may apply in this pod at all (namespace rule)."""
    return tuple(p for p in policies if applies_in_namespace(p, pod))


def selects(policy: Policy, identity: ContainerIdentity, pod: PodIdentity | None) -> bool:
    """Whether `policy` applies to a container with this identity in this pod."""
    if policy.kind is not PolicyKind.CONTAINER or not applies_in_namespace(policy, pod):
        return False
    labels = None if pod is None else pod.labels
    if isinstance(identity, Named):
        return policy.selector.matches_container(identity.name, labels or {})
    return policy.selector.could_match_any_name(labels)
