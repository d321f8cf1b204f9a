"""The supervisor's view of the BPF engine (bpf/engine.py, owned by the engine work).

The daemon talks to enforcement only through `EnforcementEngine`, the subset of `bpf.engine.Engine`
it uses, so that the engine module is imported in one place (`open_engine`) and the rest of the
supervisor is typed against what it actually needs. Engine errors become `EnforcementError` here,
so the daemon has a single exception type to report for "the kernel side failed".
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class EnforcementError(Exception):
    """The engine failed or is unavailable; the message is one line for STATUS and logs."""


class EngineReportLike(Protocol):
    """What load_or_adopt returns; read through `report_summary` (fields may differ by engine version)."""


class EngineStatusLike(Protocol):
    def to_json(self) -> Any: ...


class EnforcementEngine(Protocol):
    def ensure_bpffs(self) -> Any: ...

    def load_or_adopt(self, policies: Sequence[object], postures: Any = ...) -> Any: ...

    def register_container(self, name: str, labels: Mapping[str, str], pid_ns: int, mnt_ns: int) -> str: ...

    def unregister_container(self, pid_ns: int, mnt_ns: int) -> Any: ...

    def status(self) -> EngineStatusLike: ...

    def health(self) -> list[str]: ...


@dataclass(frozen=True)
class LoadSummary:
    """The parts of an EngineReport the supervisor reports (STATUS, status output, AAEL)."""

    ruleset_digest: str
    adopted: bool
    detail: str


def report_summary(report: object) -> LoadSummary:
    digest = ""
    for name in ("ruleset_digest", "digest", "host_digest"):
        value = getattr(report, name, None)
        if isinstance(value, str) and value:
            digest = value
            break
    adopted = bool(getattr(report, "adopted", False))
    return LoadSummary(ruleset_digest=digest, adopted=adopted, detail=str(report))


def engine_error_types() -> tuple[type[BaseException], ...]:
    """The exception types the engine raises (EngineError, and libbpf's BpfError beneath it)."""
    types: list[type[BaseException]] = []
    for module_name, attr in (("bpf.engine", "EngineError"), ("bpf.loader", "BpfError")):
        try:
            types.append(getattr(importlib.import_module(module_name), attr))
        except (ImportError, AttributeError):
            continue
    return tuple(types)


def open_engine(pin_dir: Path, state_dir: Path) -> EnforcementEngine:
    try:
        module = importlib.import_module("bpf.engine")
    except ImportError as exc:
        raise EnforcementError(f"the BPF engine is not available: {exc}") from None
    engine: EnforcementEngine = module.Engine(pin_dir=pin_dir, state_dir=state_dir)
    return engine


def postures_for(file: str, network: str, capabilities: str) -> object:
    """compiler.Postures from configured strings (imported late: the compiler is heavy)."""
    from bpf.compiler import Postures
    from bpf.ruleset import Posture

    return Postures(file=Posture(file), network=Posture(network), capabilities=Posture(capabilities))
