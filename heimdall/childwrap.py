"""
Run a command that dies with its parent.

    python -m heimdall.childwrap --parent-pid PID -- CMD [ARGS...]

On Linux this asks the kernel (C{prctl(PR_SET_PDEATHSIG, SIGTERM)}) to send
SIGTERM to this process when its parent dies, checks that the parent is
still C{PID} (if it already died, the signal will never come: exit 1), then
replaces itself with C{CMD} (C{execvp}: same pid; the death signal survives
the exec).  So a server that heimdall spawned goes away even when heimdall
is killed with SIGKILL.  Elsewhere it only execs.

Kept tiny on purpose: it runs before every spawned program, so it imports
nothing heavy.

Exit codes: 1 when the parent is gone, 2 for bad usage, 127 when CMD cannot
be run.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import List, Optional

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def set_parent_death_signal(signum: int = signal.SIGTERM) -> bool:
    """
    Ask the kernel to send C{signum} to this process when its parent dies.
    Returns False where that is not supported (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    # dlopen(NULL): the already loaded libc, with no library search.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    return True


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m heimdall.childwrap --parent-pid PID -- CMD [ARGS...]\n"
    # Parsed by hand: everything after "--" belongs to CMD, untouched.
    if "--" not in args:
        sys.stderr.write(usage)
        return 2
    split = args.index("--")
    options, command = args[:split], args[split + 1 :]
    if len(options) != 2 or options[0] != "--parent-pid" or not command:
        sys.stderr.write(usage)
        return 2
    try:
        parent_pid = int(options[1])
    except ValueError:
        sys.stderr.write(usage)
        return 2

    set_parent_death_signal(signal.SIGTERM)
    # Checked after prctl: a parent that died before it would never signal us.
    if os.getppid() != parent_pid:
        sys.stderr.write(f"heimdall.childwrap: parent {parent_pid} is gone; not starting {command[0]}\n")
        return 1

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except OSError as error:
        sys.stderr.write(f"heimdall.childwrap: cannot run {command[0]!r}: {error}\n")
        return 127
    return 127  # not reached: execvp returns only by raising


if __name__ == "__main__":
    raise SystemExit(main())
