"""The containers the OCI hook registered: each one's engine scope, and a record that outlives us.

`register` (the hook at createRuntime) gives a container its own RuleSet scope in the engine,
found by its pid and mount namespaces and recorded on its first process (the hook's pid), whose
children all inherit it; `unregister` (poststop) removes it. The record,
`containers.json` under the state directory, lets a supervisor restarted in between still find the
namespaces a poststop must remove. It only names scopes the engine holds: an unreadable record
starts empty with a warning, and enforcement is unaffected.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from bpf.kernel.engine import CONTAINER_UNION, CONTAINER_UNION_ALL, ContainerIdentity
from initdata import strict_json
from initdata.bounded import read_bounded_if_present
from initdata.bundle import PodIdentity
from initdata.errors import GateError
from supervisor.control import RegisterRequest, Reply, UnregisterRequest
from supervisor.enforcement import Enforcement, EnforcementError
from trust.identity import Named, identify

log = logging.getLogger("warden.daemon")

REGISTRY_NAME = "containers.json"
NS_LINK = re.compile(r"(pid|mnt):\[(\d+)\]")


class NotAContainer(Exception):
    """The pid a register names is gone, unreadable, or shares a namespace with the host."""


def container_namespaces(pid: int, proc: Path = Path("/proc"), *, host_pid: int = 1) -> tuple[int, int]:
    """(pid namespace inode, mount namespace inode) of `pid`, which must be a container's.

    The rule: both namespaces must differ from PID 1's (the VM's own, the host scope). A process in
    the host's pid or mount namespace is not a container, so registering it would give host processes
    a container's (weaker or different) rules; refused. (`host_pid` is 1 but for tests on a host
    where PID 1's links are not readable.) Read here, by the supervisor, not taken from
    the request: the client names a process, the kernel says which namespaces it is in.
    """
    ids: dict[str, tuple[int, int]] = {}
    for kind in ("pid", "mnt"):
        values = []
        for who in (str(pid), str(host_pid)):
            link = proc / who / "ns" / kind
            try:
                target = os.readlink(link)
            except OSError as exc:
                raise NotAContainer(f"{link}: cannot read ({exc.strerror})") from None
            match = NS_LINK.fullmatch(target)
            if match is None or match.group(1) != kind:
                raise NotAContainer(f"{link}: unexpected link target {target!r}")
            values.append(int(match.group(2)))
        ids[kind] = (values[0], values[1])
    for kind, (theirs, host) in ids.items():
        if theirs == host:
            raise NotAContainer(f"pid {pid} is in the host's {kind} namespace ({kind}:[{host}]), not a container's")
    return ids["pid"][0], ids["mnt"][0]
MAX_REGISTRY_BYTES = 4 * 1024 * 1024


class ContainerRegistry:
    """Registered containers by id: name, namespaces and the RuleSet digest of their scope.

    Not thread-safe on its own: the supervisor calls it under the lock that also guards the engine.
    """

    def __init__(self, path: Path, *, proc: Path = Path("/proc"), host_pid: int = 1) -> None:
        self.path = path
        self.proc = proc
        self.host_pid = host_pid
        self._containers: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        """Read the record an earlier instance left (nothing: no containers)."""
        try:
            raw = read_bounded_if_present(self.path, MAX_REGISTRY_BYTES, error=GateError)
            if raw is None:
                return
            data = strict_json.loads(raw, origin=str(self.path), field="file", error=GateError)
        except GateError as exc:
            log.warning("%s; starting with no registered containers", exc)
            return
        if isinstance(data, dict):
            self._containers = {k: v for k, v in data.items() if isinstance(v, dict)}

    def ids(self) -> list[str]:
        return sorted(self._containers)

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._containers, sort_keys=True))
        os.replace(tmp, self.path)

    def register(self, engine: Enforcement, request: RegisterRequest, pod: PodIdentity | None) -> Reply:
        """Give the container its scope: namespaces read from /proc/<pid>, identity from the signed `pod`.

        Refused: a pid whose namespaces are not a container's (ContainerNamespaces), and any second
        register that would change an existing registration (same id or same namespaces with a
        different name): a registered scope is never relabelled. The identical request again (a hook
        retrying after a lost reply) is acknowledged with the scope it already has.
        """
        try:
            pid_ns, mnt_ns = container_namespaces(request.pid, self.proc, host_pid=self.host_pid)
        except NotAContainer as exc:
            log.warning("register %s refused: %s", request.container_id, exc)
            return Reply.failure(f"register {request.container_id} refused: {exc}")
        for known_id, entry in self._containers.items():
            same_ns = (entry.get("pid_ns"), entry.get("mnt_ns")) == (pid_ns, mnt_ns)
            if known_id != request.container_id and not same_ns:
                continue
            if known_id == request.container_id and same_ns and entry.get("reported_name") == request.name:
                return Reply(ok=True, body={"ruleset": entry.get("ruleset", ""), "id": known_id, "again": True})
            log.warning("register %s (%s, pid %d) refused: would relabel the scope of registered container %s",
                        request.container_id, request.name, request.pid, known_id)
            held = "these namespaces" if same_ns else "this id"
            return Reply.failure(f"register {request.container_id} refused: container {known_id} already holds "
                                 f"{held}; a registered scope is not relabelled")
        identity = identify(pod, request.name)
        labels = dict(pod.labels) if pod is not None else {}
        if isinstance(identity, Named):
            kind = "container"
        else:
            kind = CONTAINER_UNION if pod is not None else CONTAINER_UNION_ALL
        try:
            reported = ContainerIdentity(request.container_id, request.pod_name, request.pod_namespace)
            digest = engine.register_container(request.name, labels, pid_ns, mnt_ns, request.pid, kind=kind,
                                               identity=reported)
        except EnforcementError as exc:
            log.error("register %s failed: %s", request.container_id, exc)
            return Reply.failure(f"engine refused {request.container_id}: {exc}")
        self._containers[request.container_id] = {
            "name": request.name, "reported_name": request.name, "identity": identity.describe(), "kind": kind,
            "pid_ns": pid_ns, "mnt_ns": mnt_ns, "ruleset": digest,
            "pod_name": request.pod_name, "pod_namespace": request.pod_namespace,
        }
        self._save()
        log.info("registered container %s (%s) as %s: pid %d pid_ns=%d mnt_ns=%d ruleset %s",
                 request.container_id, request.name, identity.describe(), request.pid, pid_ns, mnt_ns, digest)
        return Reply(ok=True, body={"ruleset": digest, "id": request.container_id, "scope": kind})

    def unregister(self, engine: Enforcement, request: UnregisterRequest) -> Reply:
        entry = self._containers.get(request.container_id)
        if entry is None:
            return Reply(ok=True, body={"id": request.container_id, "known": False})
        try:
            engine.unregister_container(int(entry["pid_ns"]), int(entry["mnt_ns"]))
        except EnforcementError as exc:
            return Reply.failure(f"engine could not unregister {request.container_id}: {exc}")
        del self._containers[request.container_id]
        self._save()
        log.info("unregistered container %s", request.container_id)
        return Reply(ok=True, body={"id": request.container_id, "known": True})
