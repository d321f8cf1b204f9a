"""Where the guest finds its initdata document, before kata-agent starts.

In order:
1. a path given in the configuration or on the command line (any encoding: TOML, annotation value,
   block-device image);
2. Kata guests: the initdata block device (initdata.device: the disk starting with b"initdata"),
   read directly, since kata-agent, which would copy it to /run, starts only after warden is READY;
3. kata-agent's copy `/run/confidential-containers/initdata/initdata.toml` (byte-exact TOML), there
   when warden restarts after kata-agent has run and the device is gone;
4. peer pods: `/run/peerpod/initdata` (base64 of gzip, written by process-user-data before warden
   starts: cloud-api-adaptor pkg/userdata/provision.go, pkg/initdata/initdata.go), whose digest
   file `/run/peerpod/initdata.digest` (lowercase hex) must agree when present.
Every place yields the document's exact bytes, so the digest rule is the same for all of them.
"""

from __future__ import annotations

import hmac
import stat
from collections.abc import Callable
from pathlib import Path

from initdata.bounded import read_bounded
from initdata.device import BY_ID_PATH, DEV_DIR, find_initdata_device, read_initdata_device
from initdata.document import MAX_INITDATA_BYTES, InitdataDocument, parse_initdata
from initdata.encoding import MAX_ANNOTATION_CHARS, MAX_IMAGE_BYTES, decode_annotation, decode_any
from initdata.errors import InitdataNotFound, MalformedInitdata

KATA_INITDATA_PATH = Path("/run/confidential-containers/initdata/initdata.toml")
PEERPOD_INITDATA_PATH = Path("/run/peerpod/initdata")
PEERPOD_DIGEST_PATH = Path("/run/peerpod/initdata.digest")


def load_initdata_file(path: Path) -> InitdataDocument:
    """A file a person points us at, in any of the encodings (see initdata.encoding.decode_any)."""
    limit = max(MAX_INITDATA_BYTES, MAX_ANNOTATION_CHARS, MAX_IMAGE_BYTES)
    raw = read_bounded(path, limit, field="document", error=InitdataNotFound)
    return parse_initdata(decode_any(raw, origin=str(path)), origin=str(path))


def locate_initdata(
    explicit: Path | None = None,
    *,
    dev_dir: Path | None = DEV_DIR,
    by_id: Path = BY_ID_PATH,
    is_device: Callable[[int], bool] = stat.S_ISBLK,
    kata_path: Path = KATA_INITDATA_PATH,
    peerpod_path: Path = PEERPOD_INITDATA_PATH,
    peerpod_digest_path: Path = PEERPOD_DIGEST_PATH,
) -> InitdataDocument:
    """The guest's initdata document; `dev_dir=None` does not look for a block device."""
    if explicit is not None:
        return load_initdata_file(explicit)
    device = None if dev_dir is None else find_initdata_device(dev_dir, by_id=by_id, is_device=is_device)
    if device is not None:
        return parse_initdata(read_initdata_device(device), origin=str(device))
    if kata_path.exists():
        raw = read_bounded(kata_path, MAX_INITDATA_BYTES, field="document", error=InitdataNotFound)
        return parse_initdata(raw, origin=str(kata_path))
    if peerpod_path.exists():
        encoded = read_bounded(peerpod_path, MAX_ANNOTATION_CHARS, field="document", error=InitdataNotFound)
        document = parse_initdata(decode_annotation(encoded, origin=str(peerpod_path)), origin=str(peerpod_path))
        if peerpod_digest_path.exists():
            recorded = read_bounded(peerpod_digest_path, 1024, field="digest", error=InitdataNotFound)
            text = recorded.decode("ascii", errors="replace").strip().lower()
            if not hmac.compare_digest(text, document.digest_hex):
                raise MalformedInitdata(
                    str(peerpod_digest_path),
                    "digest",
                    f"says {text[:128]!r} but {peerpod_path} hashes to {document.digest_hex}",
                )
        return document
    raise InitdataNotFound(
        "initdata",
        "location",
        f"no initdata block device{'' if dev_dir is None else f' in {dev_dir}'}, none of {kata_path}, "
        f"{peerpod_path} exists, and no path was given",
    )
