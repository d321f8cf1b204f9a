"""The test bed's command agent, run by systemd inside the guest (never on the host).

It watches a directory on the 9p work share for `<id>.req` files (JSON: command, timeout), runs
each command with bash in a thread of its own, and answers with `<id>.resp` (JSON: returncode,
stdout, stderr, duration_s, timed_out), written to a temporary name and renamed so that the host
never reads half an answer. Polling is used because inotify does not see host-side writes on 9p.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

POLL_INTERVAL_S = 0.02
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def serve_request(channel: Path, request_id: str, taken: Path) -> None:
    request = json.loads(taken.read_text())
    timeout = float(request["timeout"])
    env = {
        "PATH": f"{Path(sys.executable).parent}:{GUEST_PATH}",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",  # the host root is read-only in the guest
    }
    started = time.monotonic()
    timed_out = False
    with subprocess.Popen(
        ["/bin/bash", "-c", request["command"]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd="/",
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
    answer = {
        "returncode": proc.returncode,
        "stdout": stdout.decode(errors="replace"),
        "stderr": stderr.decode(errors="replace"),
        "duration_s": time.monotonic() - started,
        "timed_out": timed_out,
    }
    tmp = channel / f".{request_id}.resp.tmp"
    tmp.write_text(json.dumps(answer))
    tmp.rename(channel / f"{request_id}.resp")
    taken.unlink()


def main() -> None:
    channel = Path(sys.argv[1])
    (channel / "ready").write_text(f"{os.getpid()}\n")
    while True:
        for entry in channel.iterdir():
            if not entry.name.endswith(".req") or entry.name.startswith("."):
                continue
            request_id = entry.name.removesuffix(".req")
            taken = channel / f".{request_id}.taken"
            entry.rename(taken)
            threading.Thread(target=serve_request, args=(channel, request_id, taken), daemon=True).start()
        time.sleep(POLL_INTERVAL_S)


if __name__ == "__main__":
    main()
