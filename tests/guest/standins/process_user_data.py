"""Stand-in for cloud-api-adaptor's `process-user-data provision-files` in the peer-pod test bed.

Runs inside the guest as process-user-data.service, with the project's venv (PyYAML). What it does,
step for step, is what upstream does (cloud-api-adaptor):
- src/cloud-api-adaptor/pkg/userdata/provision.go (`ProvisionFiles`, `processCloudConfig`,
  `extractInitdataAndHash`): the user data (here the config drive's file /media/cidata/user-data,
  the `FileUserDataProvider`) is cloud-config YAML parsed strictly; each `write_files` entry whose
  path is on the allow list is written (mode 0644, parents 0755), others are logged and skipped;
  then /run/peerpod/initdata is decoded, the `[data]` entries that map to allowed files
  (aa.toml, cdh.toml, policy.rego under /run/peerpod) are written, and the hex digest of the TOML
  bytes, by the document's `algorithm`, goes to /run/peerpod/initdata.digest (no newline).
- src/cloud-api-adaptor/pkg/initdata/initdata.go (`Parse`, `decode`): /run/peerpod/initdata is
  standard base64 of gzip of the TOML.
- src/cloud-api-adaptor/pkg/paths/paths.go: the file names.
The PCR8 extension is not this program's: it is the unit's ExecStartPost= (tests/guest/profiles.py).
Not modelled: the cloud metadata providers (Azure, AWS, GCP, Docker) and their retries.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import sys
import tomllib
from pathlib import Path

import yaml

PARENT = Path("/run/peerpod")
USER_DATA = Path("/media/cidata/user-data")
INITDATA = PARENT / "initdata"
DIGEST = PARENT / "initdata.digest"
WRITE_FILES = [PARENT / name for name in ("aa.toml", "cdh.toml", "agent-config.toml", "apf.json", "auth.json",
                                          "initdata")]
INITDATA_FILES = [PARENT / name for name in ("aa.toml", "cdh.toml", "policy.rego")]
ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


def log(text: str) -> None:
    print(f"[userdata/provision] {text}", flush=True)


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)
    log(f"Wrote {path}")


def process_cloud_config(user_data: bytes) -> None:
    config = yaml.safe_load(user_data) or {}
    if set(config) - {"write_files"}:
        raise ValueError(f"unknown user-data keys {sorted(set(config) - {'write_files'})}")  # UnmarshalStrict
    for entry in config.get("write_files") or []:
        path = Path(entry["path"])
        if path in WRITE_FILES:
            write_file(path, str(entry["content"]).encode())
        else:
            log(f"File: {path} is not allowed in WriteFiles.")


def extract_initdata_and_hash() -> None:
    if not INITDATA.exists():
        log(f"File {INITDATA} not found, skipped initdata processing.")
        return
    toml_bytes = gzip.decompress(base64.b64decode(b"".join(INITDATA.read_bytes().split()), validate=True))
    document = tomllib.loads(toml_bytes.decode())
    for key, value in (document.get("data") or {}).items():
        path = PARENT / key
        if path in INITDATA_FILES:
            write_file(path, str(value).encode())
        else:
            log(f"File: {key} is not allowed in initdata.")
    algorithm = document.get("algorithm")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"error creating initdata digest, algorithm {algorithm} is not supported")
    write_file(DIGEST, ALGORITHMS[algorithm](toml_bytes).hexdigest().encode())


def main() -> int:
    if sys.argv[1:] != ["provision-files"]:
        print("usage: process_user_data.py provision-files", file=sys.stderr)
        return 2
    try:
        if USER_DATA.exists():
            log(f"provider: File, userDataPath: {USER_DATA}")
            process_cloud_config(USER_DATA.read_bytes())
        else:
            log("unsupported user data provider, we extract and calculate initdata hash only.")
        extract_initdata_and_hash()
    except (OSError, ValueError, KeyError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        log(f"failed to provision files: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
