"""The engine's record of what it loaded: /run/warden/engine.json (0600, written atomically).

It holds each object's digest, link directory and program tags (what adoption compares the pinned links
with), each scope's RuleSet and map-table digests and, for containers, the namespaces it was registered
with, and alert id -> the rule's alert metadata (what events are decoded with). The kernel holds the same
digests in warden_meta, so what is loaded can be read from either side.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bpf.kernel.errors import EngineStateError, one_line
from bpf.policy.ruleset import RuleAlert

MANIFEST_FORMAT: Final = "coco-warden/engine/v1"
DEFAULT_STATE_DIR: Final = Path("/run/warden")


@dataclass
class ScopeRecord:
    id: int
    name: str
    kind: str  # host | any-container | container
    labels: dict[str, str] = field(default_factory=dict)
    pid_ns: int = 0
    mnt_ns: int = 0
    # What alerts name the container by (CRI annotations via the hook); never a rule input.
    container_id: str = ""
    pod: str = ""
    namespace: str = ""
    ruleset_digest: str = ""
    table_digest: str = ""
    rule_count: int = 0


@dataclass
class Manifest:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {digest, dir, programs}
    scopes: dict[int, ScopeRecord] = field(default_factory=dict)
    alerts: dict[int, RuleAlert] = field(default_factory=dict)
    host_mnt_ns: int = 0
    postures: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "format": MANIFEST_FORMAT,
            "objects": self.objects,
            "scopes": {str(k): vars(v) for k, v in sorted(self.scopes.items())},
            "alerts": {str(k): {"policy": a.policy, "severity": a.severity, "tags": list(a.tags),
                                "message": a.message} for k, a in sorted(self.alerts.items())},
            "host_mnt_ns": self.host_mnt_ns,
            "postures": self.postures,
        }, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") != MANIFEST_FORMAT:
            raise EngineStateError(f"manifest format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        return cls(
            objects=dict(data["objects"]),
            scopes={int(k): ScopeRecord(**v) for k, v in data["scopes"].items()},
            alerts={int(k): RuleAlert(v["policy"], v["severity"], tuple(v["tags"]), v["message"])
                    for k, v in data["alerts"].items()},
            host_mnt_ns=int(data["host_mnt_ns"]),
            postures=dict(data.get("postures", {})),
        )


class ManifestFile:
    """engine.json and its lock in `state_dir`."""

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "engine.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time (supervisor, CLI, image builder): map syncs must not interleave."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / "engine.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self) -> Manifest | None:
        try:
            return Manifest.from_json(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineStateError(f"{self.path}: unreadable manifest: {one_line(exc)}") from None

    def write(self, manifest: Manifest) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".engine.json.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(manifest.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def remove(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True
