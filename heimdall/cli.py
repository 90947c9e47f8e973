"""
The C{heimdall} console script: C{heimdall backend ...} (the demo backend
server), C{heimdall stress ...} (the load generator); the balancer itself
runs under C{twistd -n heimdall}.
"""

from __future__ import annotations

import sys
from typing import List, Optional

USAGE = """usage: heimdall COMMAND [ARGS]

commands:
  backend    run a demo backend server (heimdall backend --port 8081)
  stress     send load and report latency, errors, backends (heimdall stress URL -c 64 -d 10s)
  run        run the balancer (same as: twistd -n heimdall [OPTIONS])
  ctl        manage a running heimdall's backends (heimdall ctl list)

Run 'heimdall COMMAND --help' for a command's options.
"""


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "backend":
        from heimdall.backend import main as backend_main

        return backend_main(rest)
    if command == "stress":
        from heimdall.stress.cli import main as stress_main

        return stress_main(rest)
    if command == "ctl":
        from heimdall.ctl import main as ctl_main

        return ctl_main(rest)
    if command == "run":
        from twisted.scripts.twistd import run as twistd_run

        sys.argv = ["twistd", "-n", "--pidfile=", "heimdall", *rest]
        twistd_run()
        return 0
    sys.stderr.write(f"heimdall: unknown command {command!r}\n\n{USAGE}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
