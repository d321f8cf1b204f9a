"""Stand-in for kata-agent in the guest test bed: starts containers with crun and runs guest hooks
the way kata-agent does. Runs inside the guest as kata-agent.service (standard library only).

What it models, from the upstream sources:
- kata-containers src/agent/src/initdata.rs (`initialize_initdata`, `detect_initdata_device`,
  `read_initdata`): at start, the first block device in /dev named vd*/sd* whose first 8 bytes are
  b"initdata" is read (u64 LE length, gzip) and its TOML written to
  /run/confidential-containers/initdata/initdata.toml, its `[data]` entries `aa.toml` and `cdh.toml`
  to aa.toml and cdh.toml beside it (AA_CONFIG_PATH, CDH_CONFIG_PATH: the configurations kata-agent
  then launches the attestation-agent and the CDH with) (`--initdata-device`, Kata guests only).
- kata-containers src/agent/src/sandbox.rs (`add_hooks`, `find_hooks`): guest hooks are the regular,
  executable, non-symlink files in `<guest_hook_path>/{prestart,poststart,poststop}/`, each run with
  argv `[file name, stage]`.
- kata-containers src/agent/rustjail/src/container.rs: prestart hooks run in the agent's namespaces
  once the container's init process exists and before it execs the workload; poststop hooks after
  the container is gone; the state on stdin is the OCI state of the container.
- kata-containers src/libs/kata-sys-util/src/hooks.rs (`execute_hooks`, `HookExecutor`): an empty
  environment, the state JSON on stdin, a 10 s default timeout after which the hook is killed, and
  every failure (exit status, timeout, spawn error) logged and ignored ("Ignore error and try next
  hook"): the container starts anyway.

What it does not model: the ttrpc API on vsock (a JSON request on a unix socket instead, one
operation: run a container to completion), rustjail itself (crun creates, starts and deletes the
container: `crun create`, hooks, `crun start`, wait, `crun delete`, hooks), the agent policy.

    kata_agent.py serve [--initdata-device] [--hooks DIR] [--socket PATH]
    kata_agent.py run --id ID --bundle DIR [--socket PATH]   (the test's client; exit = container's)
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

SOCKET = Path("/run/kata-standin/agent.sock")
HOOKS = Path("/usr/share/oci/hooks")
INITDATA_TOML = Path("/run/confidential-containers/initdata/initdata.toml")
HOOK_TIMEOUT_S = 10  # hooks.rs DEFAULT_HOOK_TIMEOUT_SEC; find_hooks sets no timeout of its own
PR_SET_CHILD_SUBREAPER = 36


def log(text: str) -> None:
    print(f"kata-agent stand-in: {text}", flush=True)


# -- initdata (initdata.rs) -------------------------------------------------------------------------


def initialize_initdata() -> None:
    for entry in sorted(Path("/dev").iterdir()):
        if not entry.name.startswith(("vd", "sd")) or not stat.S_ISBLK(entry.stat().st_mode):
            continue
        with entry.open("rb") as disk:
            if disk.read(8) != b"initdata":
                continue
            (length,) = struct.unpack("<Q", disk.read(8))
            toml = gzip.decompress(disk.read(length))
        INITDATA_TOML.parent.mkdir(parents=True, exist_ok=True)
        INITDATA_TOML.write_bytes(toml)
        log(f"initdata from {entry} written to {INITDATA_TOML} ({len(toml)} bytes)")
        data = tomllib.loads(toml.decode()).get("data") or {}
        for key in ("aa.toml", "cdh.toml"):  # AA_CONFIG_KEY, CDH_CONFIG_KEY
            if isinstance(data.get(key), str):
                (INITDATA_TOML.parent / key).write_text(data[key])
                log(f"write {key.split('.')[0].upper()} config from initdata")
        return
    log("Initdata device not found, skip initdata initialization")


# -- guest hooks (sandbox.rs, hooks.rs) -------------------------------------------------------------


def find_hooks(hooks_dir: Path, stage: str) -> list[Path]:
    directory = hooks_dir / stage
    if not directory.is_dir():
        return []
    found = []
    for entry in sorted(directory.iterdir()):
        mode = entry.lstat().st_mode
        if stat.S_ISREG(mode) and mode & 0o111:
            found.append(entry)
    return found


def execute_hooks(hooks_dir: Path, stage: str, state: dict[str, Any]) -> list[dict[str, str]]:
    """Run every hook of `stage`; each outcome is logged and returned, none stops the container."""
    outcomes = []
    for hook in find_hooks(hooks_dir, stage):
        try:
            done = subprocess.run([hook.name, stage], executable=str(hook), input=json.dumps(state).encode(),
                                  capture_output=True, env={}, timeout=HOOK_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            result = "timeout"
            log(f"hook {hook} failed: timed out after {HOOK_TIMEOUT_S}s (killed); ignored")
        except OSError as exc:
            result = f"spawn error: {exc.strerror}"
            log(f"hook {hook} failed: {result}; ignored")
        else:
            detail = (done.stderr or done.stdout).decode(errors="replace").strip()
            if done.returncode == 0:
                result = "ok"
                log(f"hook {hook} finished: {detail}")
            else:
                result = f"exit {done.returncode}"
                log(f"hook {hook} failed: exit status with {done.returncode}: {detail}; ignored")
        outcomes.append({"hook": str(hook), "stage": stage, "result": result})
    return outcomes


# -- containers (rustjail, with crun doing the work) ------------------------------------------------


def crun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["crun", *args], capture_output=True, text=True, check=False)


def run_container(hooks_dir: Path, container_id: str, bundle: Path, timeout_s: float) -> dict[str, Any]:
    config = json.loads((bundle / "config.json").read_text())
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        created = subprocess.run(["crun", "create", "--bundle", str(bundle), container_id], stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=err, check=False)
        if created.returncode != 0:
            err.seek(0)
            return {"error": f"crun create: exit {created.returncode}: {err.read().decode(errors='replace')}"}
        pid = int(json.loads(crun("state", container_id).stdout)["pid"])
        state = {"ociVersion": config.get("ociVersion", "1.0.2"), "id": container_id, "status": "created",
                 "pid": pid, "bundle": str(bundle), "annotations": config.get("annotations", {})}
        hooks = execute_hooks(hooks_dir, "prestart", state)
        started = crun("start", container_id)
        status = 125
        if started.returncode == 0:
            try:
                status = wait_for(pid, timeout_s)
            except TimeoutError:
                crun("kill", container_id, "KILL")
                status = wait_for(pid, 10)
        crun("delete", "-f", container_id)
        hooks += execute_hooks(hooks_dir, "poststop", {**state, "status": "stopped", "pid": 0})
        out.seek(0)
        err.seek(0)
        return {"status": status, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace"), "hooks": hooks}


def wait_for(pid: int, timeout_s: float) -> int:
    """The exit status of the container's init, which crun left to us (we are its subreaper)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not ours after all: no exit status, only that it ended
            if not Path(f"/proc/{pid}").exists():
                return 255
        else:
            if reaped == pid:
                return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        time.sleep(0.05)
    raise TimeoutError(pid)


# -- the request socket -----------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
        return 1
    if args.initdata_device:
        initialize_initdata()
    args.socket.parent.mkdir(parents=True, exist_ok=True)
    args.socket.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(args.socket))
    server.listen(4)
    log(f"serving on {args.socket}; guest hooks from {args.hooks}")
    while True:
        connection, _ = server.accept()
        with connection, connection.makefile("rwb") as stream:
            request = json.loads(stream.readline())
            log(f"run container {request['id']} from {request['bundle']}")
            reply = run_container(args.hooks, request["id"], Path(request["bundle"]), float(request["timeout"]))
            stream.write(json.dumps(reply).encode() + b"\n")


def client_run(args: argparse.Namespace) -> int:
    """Ask the agent to run a container; print the reply as JSON. Exit 125 when there is no agent."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(str(args.socket))
            with connection.makefile("rwb") as stream:
                request = {"id": args.id, "bundle": str(args.bundle), "timeout": args.timeout}
                stream.write(json.dumps(request).encode() + b"\n")
                stream.flush()
                reply = json.loads(stream.readline())
    except OSError as exc:
        print(f"kata-agent is not serving on {args.socket}: {exc.strerror}", file=sys.stderr)
        return 125
    print(json.dumps(reply))
    return 0 if "error" not in reply else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve")
    serve_parser.add_argument("--initdata-device", action="store_true")
    serve_parser.add_argument("--hooks", type=Path, default=HOOKS)
    serve_parser.add_argument("--socket", type=Path, default=SOCKET)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("--id", required=True)
    run_parser.add_argument("--bundle", type=Path, required=True)
    run_parser.add_argument("--timeout", type=float, default=60)
    run_parser.add_argument("--socket", type=Path, default=SOCKET)
    args = parser.parse_args()
    return serve(args) if args.command == "serve" else client_run(args)


if __name__ == "__main__":
    sys.exit(main())
