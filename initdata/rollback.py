"""The rollback state's format: the last bundle accepted in this boot.

One small JSON object in `bundle-state.json` under the state directory (default /run/warden, a
tmpfs: "this boot"):

    {"version": 7, "digest": "sha256:<64 hex>", "accepted_at": "2026-05-01T12:00:00Z"}

The rule it serves (TUF's "MUST NOT replace metadata with a lower version") is
trust.bundle.check_rollback; the supervisor reads the file and writes it atomically, mode 0600
(supervisor.gate_inputs), and the BPF engine protects the directory from every other process.
A state that does not parse is an error, never "no state": forgetting the last version would
reopen rollback.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from initdata import strict_json
from initdata.errors import RollbackStateError

STATE_FILE_NAME = "bundle-state.json"
MAX_STATE_BYTES = 4096
DIGEST_REF = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class AcceptedBundle:
    version: int
    digest: str  # "sha256:<hex>" of the payload bytes
    accepted_at: str


def parse_state(raw: bytes, *, origin: str) -> AcceptedBundle:
    """State file bytes -> AcceptedBundle; RollbackStateError for anything else."""
    if len(raw) > MAX_STATE_BYTES:
        raise RollbackStateError(origin, "file", f"larger than {MAX_STATE_BYTES} bytes")
    document = strict_json.loads(raw, origin=origin, field="file", error=RollbackStateError)
    if not isinstance(document, dict):
        raise RollbackStateError(origin, "file", "is not a JSON object")
    version, digest = document.get("version"), document.get("digest")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RollbackStateError(origin, "version", f"{version!r} is not an integer >= 1")
    if not isinstance(digest, str) or not DIGEST_REF.fullmatch(digest):
        raise RollbackStateError(origin, "digest", f"{digest!r} is not sha256:<hex>")
    accepted_at = document.get("accepted_at", "")
    return AcceptedBundle(version=version, digest=digest, accepted_at=str(accepted_at))


def encode_state(version: int, digest: str, *, accepted_at: datetime) -> bytes:
    moment = accepted_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (json.dumps({"version": version, "digest": digest, "accepted_at": moment}) + "\n").encode()


# -- the minimum bundle version, a KBS resource ---------------------------------------------------

MAX_MINIMUM_VERSION_BYTES = 256
KBS_URI = re.compile(r"kbs:///([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+)")


def parse_kbs_uri(value: str, *, origin: str, field: str) -> tuple[str, str, str]:
    """`kbs:///repository/type/tag` -> its three path segments (CDH's resource URI form)."""
    match = KBS_URI.fullmatch(value)
    if match is None or any(part in (".", "..") for part in match.groups()):
        raise RollbackStateError(origin, field, f"{value!r} is not kbs:///<repository>/<type>/<tag>")
    return match.group(1), match.group(2), match.group(3)


def parse_minimum_version(raw: bytes, *, origin: str) -> int:
    """The resource's content: `{"minimum_version": N}` or just `N`; RollbackStateError otherwise."""
    if len(raw) > MAX_MINIMUM_VERSION_BYTES:
        raise RollbackStateError(origin, "resource", f"larger than {MAX_MINIMUM_VERSION_BYTES} bytes")
    document = strict_json.loads(raw, origin=origin, field="resource", error=RollbackStateError)
    value = document.get("minimum_version") if isinstance(document, dict) else document
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**63 - 1:
        raise RollbackStateError(origin, "minimum_version", f"{value!r} is not an integer >= 1")
    return value
