"""Bounded reads: a file is refused when larger than its limit, before anything holds it all.

Every input warden reads from a path (initdata, keys, bundles, policy files) goes through
`read_bounded`, so no file on disk, however large or however placed there, costs more than its limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from initdata.errors import GateError, InputTooLarge, TrustStoreError


def read_bounded(path: Path, limit: int, *, field: str = "file", error: type[GateError] = TrustStoreError) -> bytes:
    """Read a file, refusing anything larger than `limit` before reading it all.

    `error` is the GateError subclass for a missing or unreadable file (what that means depends on
    which file it is: a trust key, a bundle, an initdata document).
    """
    data = _read(path, limit, field=field, error=error, missing_ok=False)
    assert data is not None
    return data


def read_bounded_if_present(path: Path, limit: int, *, field: str = "file", error: type[GateError]) -> bytes | None:
    """`read_bounded`, except that a file which does not exist is None (state a first run has not
    written yet). Every other failure still raises: an unreadable state file is not an absent one."""
    return _read(path, limit, field=field, error=error, missing_ok=True)


def _read(path: Path, limit: int, *, field: str, error: type[GateError], missing_ok: bool) -> bytes | None:
    origin = str(path)
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > limit:
                raise InputTooLarge(origin, field, f"{info.st_size} bytes exceeds the {limit}-byte limit")
            data = handle.read(limit + 1)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise error(origin, field, "does not exist") from None
    except IsADirectoryError:
        raise error(origin, field, "is a directory") from None
    except OSError as exc:
        raise error(origin, field, f"cannot be read ({exc.strerror})") from None
    if len(data) > limit:
        raise InputTooLarge(origin, field, f"exceeds the {limit}-byte limit")
    return data
