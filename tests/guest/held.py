"""One process reads a file through the same descriptor before and after a change (a policy, a
registration, an owner, its own namespaces). What file_permission remembers of an allowed descriptor
(bpf/progs/warden_held.h: the task's memo, the held-file map) must not outlive the change.
"""

from __future__ import annotations

import shlex
import textwrap
import time
from dataclasses import dataclass

from tests.guest.vm import GuestVM

# argv: path, state prefix, then namespace files to setns(2) into before the second read.
SCRIPT = textwrap.dedent("""
    import ctypes, errno, os, sys, time
    path, state, namespaces = sys.argv[1], sys.argv[2], sys.argv[3:]
    fd = os.open(path, os.O_RDONLY)

    def attempt():
        try:
            os.pread(fd, 1, 0)
            return "ok"
        except OSError as exc:
            return errno.errorcode.get(exc.errno, str(exc.errno))

    before = [attempt() for _ in range(3)]  # the first decides; the others are remembered
    with open(state + ".ready", "w") as f:
        f.write(",".join(before))
    while not os.path.exists(state + ".go"):
        time.sleep(0.05)
    libc = ctypes.CDLL(None, use_errno=True)
    for ns in namespaces:
        if libc.setns(os.open(ns, os.O_RDONLY), 0):
            sys.exit(f"setns {ns}: {os.strerror(ctypes.get_errno())}")
    with open(state + ".out", "w") as f:
        f.write(attempt())
""")


@dataclass(frozen=True)
class HeldRead:
    guest: GuestVM
    state: str  # a path prefix in the guest for this reader's files

    @classmethod
    def start(cls, guest: GuestVM, name: str, path: str, launch: str = "", setns: tuple[str, ...] = ()) -> HeldRead:
        """Start the reader (`launch` goes before its interpreter, e.g. an nsenter) and wait for its
        first reads."""
        script = guest.write_shared("held-read.py", SCRIPT)
        state = f"/tmp/held-{name}"
        guest.run(f"rm -f {state}.*", check=True)
        args = " ".join(shlex.quote(a) for a in (path, state, *setns))
        guest.run(f"cp {script} /tmp/held-read.py && setsid {launch} /usr/bin/python3 /tmp/held-read.py {args} "
                  f"> {state}.log 2>&1 &", check=True)
        reader = cls(guest, state)
        reader._wait_for(".ready")
        return reader

    @property
    def before(self) -> list[str]:
        """The outcome of each read before the change: "ok" or an errno name."""
        return self.guest.run(f"cat {self.state}.ready", check=True).stdout.split(",")

    def after(self) -> str:
        """Let the reader read once more (after its setns, if any); the outcome."""
        self.guest.run(f"touch {self.state}.go", check=True)
        self._wait_for(".out")
        return self.guest.run(f"cat {self.state}.out", check=True).stdout

    def _wait_for(self, suffix: str) -> None:
        deadline = time.monotonic() + 60
        while self.guest.run(f"test -s {self.state}{suffix}").returncode != 0:
            log = self.guest.run(f"cat {self.state}.log").stdout
            assert time.monotonic() < deadline and "Error" not in log and "setns" not in log, log
            time.sleep(0.2)
