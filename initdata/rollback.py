"""Rollback and freeze protection: the last bundle accepted in this boot.

Rule (TUF's "MUST NOT replace metadata with a lower version", plus freeze protection via expiry,
which the gate checks separately):

- no state yet (first bundle of this boot): accept;
- version strictly greater than the last accepted: accept (an update);
- same version *and* the same payload digest: accept (the identical bundle again, e.g. after a
  supervisor restart);
- anything else: refuse. A lower version is a rollback; the same version with different content
  is two bundles claiming one version, which an attacker holding an old signing key could use.

State lives in a small JSON file under the state directory (default /run/warden, a tmpfs: "this
boot"), written atomically (temporary file + fsync + rename) with mode 0600; the BPF engine
protects the directory from every other process. An unreadable or corrupt state file is an error,
never "no state": forgetting the last version would reopen rollback.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from initdata.errors import RollbackRefused, RollbackStateError

STATE_FILE_NAME = "bundle-state.json"
MAX_STATE_BYTES = 4096
DIGEST_REF = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class AcceptedBundle:
    version: int
    digest: str  # "sha256:<hex>" of the payload bytes
    accepted_at: str


class RollbackState:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / STATE_FILE_NAME

    def last_accepted(self) -> AcceptedBundle | None:
        origin = str(self.path)
        try:
            with self.path.open("rb") as handle:
                raw = handle.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RollbackStateError(origin, "file", f"cannot be read ({exc.strerror})") from None
        if len(raw) > MAX_STATE_BYTES:
            raise RollbackStateError(origin, "file", f"larger than {MAX_STATE_BYTES} bytes")
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RollbackStateError(origin, "file", "is not JSON") from None
        if not isinstance(document, dict):
            raise RollbackStateError(origin, "file", "is not a JSON object")
        version, digest = document.get("version"), document.get("digest")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RollbackStateError(origin, "version", f"{version!r} is not an integer >= 1")
        if not isinstance(digest, str) or not DIGEST_REF.fullmatch(digest):
            raise RollbackStateError(origin, "digest", f"{digest!r} is not sha256:<hex>")
        accepted_at = document.get("accepted_at", "")
        return AcceptedBundle(version=version, digest=digest, accepted_at=str(accepted_at))

    def check(self, version: int, digest: str, *, origin: str) -> None:
        """Raise RollbackRefused unless a bundle with this version and digest may be accepted now."""
        last = self.last_accepted()
        if last is None or version > last.version:
            return
        if version == last.version and digest == last.digest:
            return
        if version == last.version:
            raise RollbackRefused(
                origin,
                "payload.version",
                f"version {version} was already accepted in this boot with different content "
                f"({last.digest[:19]}…); an update needs a greater version",
            )
        raise RollbackRefused(
            origin,
            "payload.version",
            f"version {version} is older than version {last.version} accepted in this boot",
        )

    def record(self, version: int, digest: str, *, now: datetime | None = None) -> None:
        """Atomically remember this bundle as the last accepted (mode 0600, directory 0700)."""
        origin = str(self.path)
        moment = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = json.dumps({"version": version, "digest": digest, "accepted_at": moment}) + "\n"
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=".bundle-state.", dir=self.state_dir)
            try:
                try:
                    os.fchmod(fd, 0o600)
                    os.write(fd, body.encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(temporary, self.path)
            except OSError:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise RollbackStateError(origin, "file", f"cannot be written ({exc.strerror})") from None
