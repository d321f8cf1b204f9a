"""The containers the OCI hook registered: each one's engine scope, and a record that outlives us.

`register` (the hook at createRuntime) gives a container its own RuleSet scope in the engine,
keyed by its pid and mount namespaces; `unregister` (poststop) removes it. The record,
`containers.json` under the state directory, lets a supervisor restarted in between still find the
namespaces a poststop must remove. It only names scopes the engine holds: an unreadable record
starts empty with a warning, and enforcement is unaffected.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from bpf.kernel.engine import ContainerIdentity
from supervisor.control import RegisterRequest, Reply, UnregisterRequest
from supervisor.enforcement import Enforcement, EnforcementError

log = logging.getLogger("warden.daemon")

REGISTRY_NAME = "containers.json"


class ContainerRegistry:
    """Registered containers by id: name, namespaces and the RuleSet digest of their scope.

    Not thread-safe on its own: the supervisor calls it under the lock that also guards the engine.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._containers: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        """Read the record an earlier instance left (nothing: no containers)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); starting with no registered containers", self.path, exc)
            return
        if isinstance(data, dict):
            self._containers = {k: v for k, v in data.items() if isinstance(v, dict)}

    def ids(self) -> list[str]:
        return sorted(self._containers)

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._containers, sort_keys=True))
        os.replace(tmp, self.path)

    def register(self, engine: Enforcement, request: RegisterRequest) -> Reply:
        try:
            identity = ContainerIdentity(request.container_id, request.pod, request.namespace)
            digest = engine.register_container(request.name, dict(request.labels), request.pid_ns, request.mnt_ns,
                                               identity)
        except EnforcementError as exc:
            log.error("register %s failed: %s", request.container_id, exc)
            return Reply.failure(f"engine refused {request.container_id}: {exc}")
        self._containers[request.container_id] = {
            "name": request.name, "pid_ns": request.pid_ns, "mnt_ns": request.mnt_ns, "ruleset": digest,
        }
        self._save()
        log.info("registered container %s (%s) pid_ns=%d mnt_ns=%d ruleset %s",
                 request.container_id, request.name, request.pid_ns, request.mnt_ns, digest)
        return Reply(ok=True, body={"ruleset": digest, "id": request.container_id})

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
