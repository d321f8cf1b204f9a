"""Where the compiled CO-RE objects live, and their digests.

Objects are built by `make` into `build/bpf/` of a source checkout; an image installs them into
`/usr/lib/warden/bpf/`. `WARDEN_BPF_DIR` overrides both (tests, image builders).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

INSTALLED_DIR = Path("/usr/lib/warden/bpf")
CHECKOUT_DIR = Path(__file__).resolve().parents[2] / "build" / "bpf"


class ObjectNotFound(FileNotFoundError):
    """A BPF object warden needs is not built or not installed."""


def object_dir() -> Path:
    override = os.environ.get("WARDEN_BPF_DIR")
    if override:
        return Path(override)
    return CHECKOUT_DIR if CHECKOUT_DIR.is_dir() else INSTALLED_DIR


def object_path(name: str) -> Path:
    """The path of object `name` (e.g. "write_guard" for write_guard.bpf.o)."""
    path = object_dir() / f"{name}.bpf.o"
    if not path.is_file():
        raise ObjectNotFound(f"{path}: BPF object not found (run `make` in a checkout, or install the image)")
    return path


def bytes_digest(data: bytes) -> str:
    """The digest warden names an object by: sha256 of its file's bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def object_digest(path: Path) -> str:
    return bytes_digest(path.read_bytes())
