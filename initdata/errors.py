"""Every way the gate can refuse, one exception type each.

The supervisor and the CLI print `str(error)`: one line, `<origin>: <field>: <problem>`, where
origin names the file (or URL, or source) and field names the part of it that is wrong. Nothing else
is ever raised for bad input: callers may catch `GateError` and know they have seen every verdict
about input.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """Untrusted text as it may appear in a one-line message: every non-printable character escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class GateError(Exception):
    """Base class: the gate refuses. `origin` is the file/URL/source, `field` the part of it that is wrong."""

    def __init__(self, origin: str, field: str, problem: str) -> None:
        # Origins, fields and problems can quote attacker-chosen text (a JSON key, a file name);
        # escape what is not printable so one error is always exactly one line on a terminal.
        self.origin = printable(origin)
        self.field = printable(field)
        self.problem = printable(" ".join(problem.split()))
        super().__init__(f"{self.origin}: {self.field}: {self.problem}")

    @property
    def reason(self) -> str:
        return str(self)


class MalformedInitdata(GateError):
    """The initdata document (or its annotation/block-device encoding) cannot be parsed."""


class UnsupportedAlgorithm(GateError):
    """The initdata `algorithm` is not one we can hash with, or the TEE cannot carry this digest."""


class InitdataNotFound(GateError):
    """No initdata document at any of the places the guest looks."""


class InputTooLarge(GateError):
    """An input exceeds its size limit (checked before parsing, so a huge input costs nothing)."""


class MeasurementUnavailable(GateError):
    """No configured measurement source could produce a measurement."""


class MeasurementMismatch(GateError):
    """The TEE measured a different initdata than the one we were given."""


class InsecureSourceRefused(GateError):
    """Only the `sample` source (no TEE) is available and the configuration does not allow it."""


class MalformedBundle(GateError):
    """The DSSE envelope or its payload cannot be parsed."""


class UnsupportedPayloadType(GateError):
    """The DSSE payloadType is not the warden bundle type."""


class TrustStoreError(GateError):
    """The trust keys cannot be loaded, or the threshold can never be met with them."""


class TrustModeRefused(GateError):
    """The configuration allows no trust mode that this initdata can use."""


class SignatureThresholdNotMet(GateError):
    """Fewer distinct trusted keys signed the bundle than the threshold requires."""


class BundleExpired(GateError):
    """The bundle's `expires` is in the past: accepting it would let an attacker freeze us on old policy."""


class RollbackRefused(GateError):
    """The bundle is older than (or a different bundle with the same version as) the last accepted one."""


class RollbackStateError(GateError):
    """The rollback state file cannot be read or written; we refuse rather than forget."""


class BpfObjectMismatch(GateError):
    """The bundle names a BPF object (by sha256) that this image does not ship, or ships differently."""


class PolicyInvalid(GateError):
    """A KubeArmor policy document in the bundle does not parse or validate.

    The message names the first problem; `details` holds every problem the parser reported.
    """

    def __init__(self, origin: str, field: str, problem: str, *, details: list[str] | None = None) -> None:
        super().__init__(origin, field, problem)
        self.details: tuple[str, ...] = tuple(details or [problem])


class ConfigError(GateError):
    """The gate configuration is invalid."""


class AttestationAgentError(GateError):
    """The attestation-agent / CDH REST API answered with an error or something we cannot parse."""


class NotVouched(GateError):
    """A vTPM's TEE evidence (Azure's HCL report) is missing or does not check out: the vTPM stays INSECURE."""
