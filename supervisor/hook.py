"""`warden hook`: the OCI runtime hook that registers containers with the supervisor. Fails closed.

Runs as a runtime-namespace hook (runtime-spec `prestart` / `createRuntime`, and `poststop`), from
either the Kata guest hook directories (/usr/share/oci/hooks/{prestart,poststop}) or a hooks.d JSON
file. The runtime passes the container state on stdin (runtime-spec "State"):

    {"ociVersion": "1.0.2", "id": "...", "status": "created", "pid": 4422, "bundle": "/...",
     "annotations": {...}}

Create stages: send `register` with the container's init pid and its CRI name to the control socket
and wait until the supervisor acknowledges that the container's rules are in the maps. If that does
not happen within the timeout (supervisor stopped, restarting, or not READY because the gate
refused), exit non-zero: the runtime then aborts the container (runtime-spec Lifecycle). KubeArmor's
hook gives up silently and lets the container run unprotected; this one never does. The timeout
bounds the whole exchange: a peer that trickles bytes cannot extend it.

Poststop: send `unregister`. A poststop failure only makes the runtime log a warning.

What the hook sends is only a claim: the supervisor reads the namespaces of the pid itself, and
decides the rules from the signed bundle's pod (trust.identity), using the name only to pick among
the containers the bundle lists. Name: `io.kubernetes.cri.container-name` (containerd), else
`io.kubernetes.container.name` (CRI-O), else the container id. Pod name and namespace
(containerd's `io.kubernetes.cri.sandbox-name` / `-namespace`, CRI-O's `io.kubernetes.pod.name` /
`.namespace`) are passed for alerts only (KubeArmor's PodName, NamespaceName). Labels are not read
from annotations at all (the host writes them): the signed bundle carries the pod's labels.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from initdata import strict_json
from initdata.errors import GateError
from supervisor.control import ControlUnavailable, call
from supervisor.exit_codes import EXIT_FAILURE, EXIT_OK

MAX_STATE_BYTES = 1024 * 1024
NAME_ANNOTATIONS = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")
POD_ANNOTATIONS = ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name")
NAMESPACE_ANNOTATIONS = ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace")
DEFAULT_SOCKET = Path("/run/warden/warden.sock")
DEFAULT_TIMEOUT_S = 10.0
RETRY_INTERVAL_S = 0.1


class HookError(Exception):
    """The hook cannot do its job; one line, printed to the runtime's log, and a non-zero exit."""


class Stage(StrEnum):
    PRESTART = "prestart"
    CREATE_RUNTIME = "createRuntime"
    POSTSTOP = "poststop"

    @property
    def creates(self) -> bool:
        return self is not Stage.POSTSTOP


@dataclass(frozen=True)
class ContainerState:
    """The runtime-spec state, validated. `pid` is None only for a stopped container."""

    oci_version: str
    container_id: str
    status: str
    pid: int | None
    bundle: str
    annotations: Mapping[str, str] = field(hash=False)

    def _first(self, keys: tuple[str, ...]) -> str:
        return next((self.annotations[k] for k in keys if self.annotations.get(k)), "")

    @property
    def name(self) -> str:
        return self._first(NAME_ANNOTATIONS) or self.container_id

    @property
    def pod(self) -> str:
        return self._first(POD_ANNOTATIONS)

    @property
    def namespace(self) -> str:
        return self._first(NAMESPACE_ANNOTATIONS)

    def annotation(self, key: str) -> str:
        value = self.annotations.get(key, "")
        return value if value.isprintable() and len(value) <= 253 else ""


def read_state(stream: BinaryIO) -> bytes:
    data = stream.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise HookError(f"stdin: OCI state larger than {MAX_STATE_BYTES} bytes")
    return data


def parse_state(raw: bytes) -> ContainerState:
    """stdin bytes -> ContainerState, or HookError naming the field."""
    if not raw.strip():
        raise HookError("stdin: empty; the runtime passes the container state as JSON on stdin")
    try:
        # The OCI state has annotations nested 2 deep; the config's hooks and mounts are not in it.
        data = strict_json.loads(raw, origin="stdin", field="OCI state", error=GateError)
    except GateError as exc:
        raise HookError(str(exc)) from None
    if not isinstance(data, dict):
        raise HookError("stdin: OCI state must be a JSON object")

    def text(key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise HookError(f"stdin: OCI state field {key!r} is missing or not a string")
        return value

    oci_version, container_id, status, bundle = text("ociVersion"), text("id"), text("status"), text("bundle")
    pid = data.get("pid")
    if status == "stopped" and pid == 0:
        pid = None  # crun's poststop state says "pid": 0 (measured in the guest); runc omits it
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
        raise HookError(f"stdin: OCI state field 'pid' is {pid!r}, not a positive integer")
    annotations = data.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise HookError("stdin: OCI state field 'annotations' must map strings to strings")
    return ContainerState(oci_version, container_id, status, pid, bundle, dict(annotations))


def infer_stage(state: ContainerState) -> Stage:
    """Kata's guest hook directories run the binary without arguments: tell the stage by status."""
    return Stage.POSTSTOP if state.status == "stopped" else Stage.CREATE_RUNTIME


def register_message(state: ContainerState) -> dict[str, Any]:
    if state.pid is None:
        raise HookError(f"stdin: OCI state of {state.container_id} (status {state.status}) has no pid")
    message: dict[str, Any] = {"op": "register", "id": state.container_id, "pid": state.pid, "name": state.name}
    for field_name, value in (("pod_name", state.pod), ("pod_namespace", state.namespace)):
        if value and value.isprintable() and len(value) <= 253:  # informational: dropped rather than refused
            message[field_name] = value
    return message


def send_until_acknowledged(socket_path: Path, message: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
    """Retry while the supervisor is absent or not READY; HookError at the deadline or on a refusal."""
    deadline = time.monotonic() + timeout_s
    last = "no attempt"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HookError(
                f"supervisor did not acknowledge {message['op']} of {message['id']} within {timeout_s:g}s "
                f"({last}); failing closed"
            )
        try:
            reply = call(socket_path, message, timeout=min(remaining, 5.0))
        except ControlUnavailable as exc:
            last = str(exc)
        except (TimeoutError, OSError) as exc:
            last = f"{socket_path}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else 'timed out'}"
        else:
            if reply["ok"]:
                return reply
            last = str(reply.get("error", "refused"))
            if not reply.get("retry"):
                raise HookError(f"supervisor refused {message['op']} of {message['id']}: {last}")
        time.sleep(min(RETRY_INTERVAL_S, max(0.0, deadline - time.monotonic())))


def run_hook(
    raw_state: bytes,
    *,
    stage: Stage | None,
    socket_path: Path = DEFAULT_SOCKET,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> str:
    """The whole hook; returns the line to log on success, raises HookError otherwise."""
    state = parse_state(raw_state)
    stage = stage or infer_stage(state)
    if stage.creates:
        if state.status == "stopped":
            raise HookError(f"stage {stage}: container {state.container_id} is already stopped")
        reply = send_until_acknowledged(socket_path, register_message(state), timeout_s)
        return (
            f"registered {state.container_id} as {state.name!r}: rules {reply.get('ruleset', '?')} in the maps"
        )
    send_until_acknowledged(socket_path, {"op": "unregister", "id": state.container_id}, timeout_s)
    return f"unregistered {state.container_id}"


def main_with(stdin: BinaryIO, stage: Stage | None, socket_path: Path, timeout_s: float) -> int:
    try:
        line = run_hook(read_state(stdin), stage=stage, socket_path=socket_path, timeout_s=timeout_s)
    except HookError as exc:
        print(f"warden hook: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"warden hook: {line}", file=sys.stderr)
    return EXIT_OK
