"""
C{heimdall stress}: an HTTP load generator for heimdall (and any HTTP/1.1
server).

  - L{heimdall.stress.cli}: the command line (C{heimdall stress --help});
  - L{heimdall.stress.runner}: the coordinator, which runs the generator
    processes and merges their results;
  - L{heimdall.stress.engine}: one generator process's load loop (raw
    non-blocking sockets on epoll);
  - L{heimdall.stress.http}: the request bytes and the response parser;
  - L{heimdall.stress.histogram}: latency histograms (HdrHistogram);
  - L{heimdall.stress.report}: the text, JSON and HTML reports;
  - L{heimdall.stress.scenario}: the failover scenario.

Nothing here imports Twisted or installs a reactor: the generator is its own
program, built for speed (see docs/stress.md).
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv=None) -> int:
    from heimdall.stress.cli import main as _main

    return _main(argv)
