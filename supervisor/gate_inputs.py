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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from attest.base import MeasurementSource
from attest.detect import build_sources, first_measurement
from initdata.bounded import read_bounded, read_bounded_if_present
from initdata.document import InitdataDocument
from initdata.errors import MalformedBundle, RollbackStateError
from initdata.keys import load_trust_dir
from initdata.locate import locate_initdata
from initdata.rollback import MAX_STATE_BYTES, STATE_FILE_NAME, AcceptedBundle, encode_state, parse_state
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
    return build_sources(config.measurement_sources, sysfs_root=sysfs_root, aa_client=config.aa_client())


def gate_initdata(
    document: InitdataDocument,
    config: GateConfig,
    *,
    sources: list[MeasurementSource] | None = None,
    now: datetime | None = None,
    resume: AcceptedUpdate | None = None,
) -> VerifiedPolicy:
    """The boot gate on one initdata document; with `resume`, the update a reload accepted on top of it.

    Records the accepted bundle in the rollback state when the configuration keeps one.
    """
    gate = BootGate(document, config.rules, now=now)
    gate.check_measurement(first_measurement(sources if sources is not None else live_sources(config)))
    image_keys = load_trust_dir(config.trust_dir) if gate.trust_mode() is TrustMode.IMAGE else None
    last = read_rollback_state(config.state_dir)
    if resume is None:
        verified = gate.accept(image_keys=image_keys, last_accepted=last)
    else:
        verified = gate.accept_resumed(resume.envelope, origin=resume.origin, image_keys=image_keys, last_accepted=last)
        log.info("resumed bundle v%d accepted by a reload earlier in this boot", verified.bundle_version)
    record_rollback_state(config.state_dir, verified, now=gate.reference_time)
    return verified


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
