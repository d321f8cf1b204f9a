"""configfs-tsm reports (Documentation/ABI/testing/configfs-tsm-report, Linux >= 6.7).

Protocol, as the kernel documents it and guest-components' tsm_report attester does it: mkdir an
entry, check `provider`, write a 64-byte `inblob`, read `outblob`, check `generation` is 1 (nobody
else wrote to our entry in between), rmdir.

Creating the entry is injectable because on configfs the kernel populates the attribute files on
mkdir; host tests pass a function that plays the kernel's part in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from initdata.errors import MeasurementUnavailable

DEFAULT_TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
INBLOB_SIZE = 64  # tdx_guest and sev_guest both require exactly 64 bytes
MAX_OUTBLOB_BYTES = 64 * 1024  # a TD quote with its certification data is a few KiB


def _remove_entry(path: Path) -> None:
    os.rmdir(path)


class ConfigfsTsm:
    def __init__(
        self,
        root: Path = DEFAULT_TSM_REPORT_ROOT,
        *,
        make_entry: Callable[[Path], None] = os.mkdir,
        remove_entry: Callable[[Path], None] = _remove_entry,
    ) -> None:
        self.root = root
        self._make_entry = make_entry
        self._remove_entry = remove_entry

    def available(self) -> bool:
        return self.root.is_dir()

    def report(self, *, provider: str, source: str, inblob: bytes | None = None) -> bytes:
        """A fresh report (`outblob`) from `provider`; inblob defaults to 64 random bytes."""
        data = inblob if inblob is not None else secrets.token_bytes(INBLOB_SIZE)
        entry = self.root / f"warden-{os.getpid()}-{secrets.token_hex(4)}"
        origin = str(entry)
        try:
            self._make_entry(entry)
        except OSError as exc:
            raise MeasurementUnavailable(
                source, "configfs-tsm", f"cannot create {origin}: {exc.strerror}"
            ) from None
        try:
            found = (entry / "provider").read_text().strip()
            if found != provider:
                raise MeasurementUnavailable(
                    origin, "provider", f"is {found!r}, not {provider!r}: a different TEE"
                )
            (entry / "inblob").write_bytes(data)
            with (entry / "outblob").open("rb") as handle:
                outblob = handle.read(MAX_OUTBLOB_BYTES + 1)
            if len(outblob) > MAX_OUTBLOB_BYTES:
                raise MeasurementUnavailable(origin, "outblob", f"larger than {MAX_OUTBLOB_BYTES} bytes")
            generation = (entry / "generation").read_text().strip()
            if generation != "1":
                raise MeasurementUnavailable(
                    origin, "generation", f"is {generation}, not 1: another writer raced us"
                )
            return outblob
        except OSError as exc:
            raise MeasurementUnavailable(origin, "report", f"cannot be read ({exc.strerror})") from None
        finally:
            # A leftover entry costs nothing and must not hide the real outcome.
            with contextlib.suppress(OSError):
                self._remove_entry(entry)
