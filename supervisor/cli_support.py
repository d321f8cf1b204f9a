"""Small helpers shared by the `warden` command modules (supervisor.commands).

Contract for those commands: bad input gives exactly one line on stderr naming the file and field,
and exit 1 (EXIT_FAILURE); usage errors exit 2 (argparse); never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

from initdata.errors import GateError
from supervisor.exit_codes import EXIT_FAILURE

Handler = Callable[[argparse.Namespace], int]


class OutputError(GateError):
    """An output file cannot be written (not a verdict about input, but reported the same way)."""


def fail(message: str) -> int:
    print(f"warden: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_FAILURE


def guarded(handler: Handler) -> Handler:
    """Turn every GateError into one stderr line and exit 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except GateError as exc:
            return fail(str(exc))

    return run


def write_output(path: Path | None, data: bytes, *, private: bool = False, exclusive: bool = False) -> None:
    """Write to `path` (mode 0600 when private; refusing to replace it when exclusive) or stdout."""
    if path is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    mode = 0o600 if private else 0o644
    try:
        fd = os.open(path, flags, mode)
        with os.fdopen(fd, "wb") as handle:
            if private:
                os.fchmod(handle.fileno(), 0o600)  # also when replacing an existing file
            handle.write(data)
    except FileExistsError:
        raise OutputError(str(path), "output", "already exists (use --force to overwrite)") from None
    except OSError as exc:
        raise OutputError(str(path), "output", f"cannot be written ({exc.strerror})") from None
