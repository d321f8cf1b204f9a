"""The I/O side of the attestation gate: everything trust.gate decides on is read here.

trust.gate decides on bytes and values; this module fetches them, in the order the gate asks for
them: the initdata document (initdata.locate), a measurement (attest.detect over the configured
sources), the image's trust keys (only when the gate chose image keys), this boot's rollback state,
and, after a reload earlier in this boot, the update that reload accepted. It also writes what an
acceptance leaves behind: the rollback state and the accepted update, each atomically, mode 0600,
under the state directory (a tmpfs that self-protection keeps to warden).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from attest.base import MeasurementSource
from attest.cdh import DEFAULT_CDH_SOCKET, ResourceUri, resource_source
from attest.detect import build_sources, first_measurement
from initdata.bounded import read_bounded, read_bounded_if_present
from initdata.document import InitdataDocument
from initdata.errors import GateError, MalformedBundle, RollbackStateError, TrustStoreError
from initdata.keys import TrustStore, load_trust_dir
from initdata.locate import locate_initdata
from initdata.rollback import (
    MAX_STATE_BYTES,
    STATE_FILE_NAME,
    AcceptedBundle,
    encode_state,
    parse_kbs_uri,
    parse_minimum_version,
    parse_state,
)
from supervisor.config import GateConfig, WardenConfig
from trust.bundle import VerifiedBundle, verify_baseline
from trust.gate import BootGate, UpdateGate, VerifiedPolicy
from trust.rules import TrustMode

log = logging.getLogger("warden.gate")

MAX_BUNDLE_BYTES = 4 * 1024 * 1024
ACCEPTED_UPDATE_NAME = "accepted-update.bundle.json"


@dataclass(frozen=True)
class AcceptedUpdate:
    """The envelope a reload accepted earlier in this boot, and where it was kept."""

    envelope: bytes
    origin: str


def live_sources(config: GateConfig, *, sysfs_root: Path = Path("/sys")) -> list[MeasurementSource]:
    """The configured measurement sources, in the configured order."""
    return build_sources(config.measurement_sources, sysfs_root=sysfs_root, aa_client=config.aa_client(),
                         vtpm_amd_certs=config.vtpm_amd_certs)


def gate_initdata(
    document: InitdataDocument,
    config: GateConfig,
    *,
    sources: list[MeasurementSource] | None = None,
    now: datetime | None = None,
    resume: AcceptedUpdate | None = None,
    fetch_resource: ResourceFetch | None = None,
) -> VerifiedPolicy:
    """The boot gate on one initdata document; with `resume`, the update a reload accepted on top of it.

    Records the accepted bundle in the rollback state when the configuration keeps one.
    """
    gate = BootGate(document, config.rules, now=now)
    gate.check_measurement(first_measurement(sources if sources is not None else live_sources(config)))
    minimum_version = fetch_minimum_version(config, fetch_resource)  # after attestation: KBS releases it then
    image_keys = image_trust_keys(config) if TrustMode.IMAGE in config.trust_modes else None
    if image_keys is None and gate.trust_mode() is TrustMode.IMAGE:
        image_keys = load_trust_dir(config.trust_dir)  # raises with the reason there are none
    last = read_rollback_state(config.state_dir)
    if resume is None:
        verified = gate.accept(image_keys=image_keys, last_accepted=last, minimum_version=minimum_version)
    else:
        verified = gate.accept_resumed(resume.envelope, origin=resume.origin, image_keys=image_keys, last_accepted=last,
                                       minimum_version=minimum_version)
        log.info("resumed bundle v%d accepted by a reload earlier in this boot", verified.bundle_version)
    record_rollback_state(config.state_dir, verified, now=gate.reference_time)
    return verified


ResourceFetch = Callable[[str, str, str], bytes]  # (repository, type, tag) -> resource bytes; GateError on failure


def _fetch_from_cdh(repository: str, kind: str, tag: str) -> bytes:
    return resource_source(DEFAULT_CDH_SOCKET).get_resource(ResourceUri(repository, kind, tag))


def fetch_minimum_version(config: GateConfig, fetch: ResourceFetch | None = None) -> int | None:
    """The minimum bundle version the relying party releases as a KBS resource (None: not configured).

    Asked only after the measurement step, since KBS releases resources only to an attested VM. A
    configured resource that cannot be fetched or parsed refuses the gate: no floor is not "floor 0".
    `fetch` defaults to the Confidential Data Hub on its own ttrpc socket (attest.cdh).
    """
    if config.minimum_version_resource is None:
        return None
    uri = config.minimum_version_resource
    repository, kind, tag = parse_kbs_uri(uri, origin="configuration", field="gate.minimum_version_resource")
    getter = fetch if fetch is not None else _fetch_from_cdh
    try:
        raw = getter(repository, kind, tag)
    except GateError as exc:
        raise RollbackStateError(uri, "resource", f"the minimum version cannot be fetched ({exc})") from None
    return parse_minimum_version(raw, origin=uri)


def image_trust_keys(config: GateConfig) -> TrustStore | None:
    """The image's trust keys; None when the image ships none (no directory, or no *.pem in it).
    Every other problem (a symlink, a writable file, a bad key) raises: an image with broken keys
    must not quietly fall back to initdata keys."""
    try:
        return load_trust_dir(config.trust_dir)
    except TrustStoreError as exc:
        if exc.field == "directory" and exc.problem in ("does not exist", "holds no *.pem public keys"):
            return None
        raise


def gate_update(
    envelope: bytes, current: VerifiedPolicy, config: GateConfig, *, origin: str, now: datetime | None = None
) -> VerifiedPolicy:
    """A newer bundle against the one in force (trust.gate.UpdateGate); `current` when it is the same."""
    update = UpdateGate(current, now=now)
    verified = update.accept(envelope, origin=origin, last_accepted=read_rollback_state(config.state_dir))
    if verified is not current:
        record_rollback_state(config.state_dir, verified, now=update.reference_time)
    return verified


def start_gate(
    config: WardenConfig, *, sources: list[MeasurementSource] | None = None, now: datetime | None = None
) -> VerifiedPolicy:
    """The supervisor's gate at start-up: the guest's initdata, and the update a reload accepted
    earlier in this boot if there is one (a restart must not fall back to the older boot bundle)."""
    document = locate_initdata(config.initdata)
    log.info("initdata: %s (%d bytes, %s %s)", document.origin, len(document.raw), document.algorithm.value,
             document.digest_hex)
    return gate_initdata(document, config.gate, sources=sources, now=now, resume=read_accepted_update(config))


def read_update_bundle(config: WardenConfig) -> bytes:
    return read_bounded(config.update_bundle, MAX_BUNDLE_BYTES, field="update_bundle", error=MalformedBundle)


def read_baseline(config: WardenConfig, *, now: datetime | None = None) -> VerifiedBundle:
    """The image's baseline bundle, verified with the image keys (trust.bundle.verify_baseline)."""
    path = config.baseline_bundle
    envelope = read_bounded(path, MAX_BUNDLE_BYTES, field="baseline_bundle", error=MalformedBundle)
    return verify_baseline(
        envelope,
        origin=str(path),
        image_keys=load_trust_dir(config.gate.trust_dir),
        threshold=config.gate.threshold,
        now=now or datetime.now(UTC),
    )


# -- files under the state directory ---------------------------------------------------------------


def accepted_update_path(config: WardenConfig) -> Path:
    return config.state_dir / ACCEPTED_UPDATE_NAME


def read_accepted_update(config: WardenConfig) -> AcceptedUpdate | None:
    path = accepted_update_path(config)
    envelope = read_bounded_if_present(path, MAX_BUNDLE_BYTES, field="file", error=MalformedBundle)
    return None if envelope is None else AcceptedUpdate(envelope, str(path))


def remember_update(config: WardenConfig, envelope: bytes) -> Path:
    """Keep an applied update so that a restart resumes it (the rollback state now names its version).
    Raises OSError."""
    path = accepted_update_path(config)
    _write_atomically(path, envelope)
    return path


def read_rollback_state(state_dir: Path | None) -> AcceptedBundle | None:
    """This boot's last accepted bundle; None without a state directory or before the first acceptance."""
    if state_dir is None:
        return None
    path = state_dir / STATE_FILE_NAME
    raw = read_bounded_if_present(path, MAX_STATE_BYTES, field="file", error=RollbackStateError)
    return None if raw is None else parse_state(raw, origin=str(path))


def record_rollback_state(state_dir: Path | None, verified: VerifiedPolicy, *, now: datetime) -> None:
    """Remember `verified` as this boot's last accepted bundle (directory 0700, file 0600)."""
    if state_dir is None:
        return
    path = state_dir / STATE_FILE_NAME
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomically(path, encode_state(verified.bundle_version, verified.bundle_digest, accepted_at=now))
    except OSError as exc:
        raise RollbackStateError(str(path), "file", f"cannot be written ({exc.strerror})") from None


def _write_atomically(path: Path, data: bytes) -> None:
    """Temporary file in the same directory, mode 0600, fsync, rename: readers see old or new, never half."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError:
        Path(temporary).unlink(missing_ok=True)
        raise
