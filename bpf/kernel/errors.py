"""What the engine raises: one exception type per failure, each with a one-line message."""

from __future__ import annotations


class EngineError(Exception):
    """The engine could not do what was asked; the message is one line."""


class BpffsError(EngineError):
    """bpffs is not mounted and could not be mounted."""


class EngineStateError(EngineError):
    """Pinned state or the manifest is missing or inconsistent."""


class EngineLoadError(EngineError):
    """A BPF object failed to load or attach."""


class EngineRuleError(EngineError):
    """Policies could not be compiled or encoded into the maps."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (libbpf and the verifier print several)."""
    return " ".join(str(exc).split())
