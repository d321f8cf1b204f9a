"""Exit codes of every `warden` command, `warden run` included (systemd's Restart= reads those).

A non-zero exit always comes with one line saying why: on stderr, or in STATUS for `warden run`.
"""

from __future__ import annotations

EXIT_OK = 0
# Refused or failed: bad input (the line names the file and field), a refused gate, missing kernel
# prerequisites, an engine error, a supervisor that is not READY.
EXIT_FAILURE = 1
EXIT_USAGE = 2  # argparse's own code for a usage error
EXIT_NOT_RUNNING = 3  # `warden status`: nothing answers on the control socket
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in warden, never a verdict about input
EXIT_INTERRUPTED = 130  # SIGINT, as a shell reports it
