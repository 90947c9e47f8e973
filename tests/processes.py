"""
heimdall as a real process (`twistd -n heimdall --config FILE`), for the
tests that run it as users do.  One harness for all of them: it writes the
config, starts twistd with its output in a log file, waits for log lines,
and kills everything it started (its children and any pid handed to it),
pass or fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from heimdall.manager.spawner import is_port_free
from tests.netutil import free_port

TWISTD = str(Path(sys.executable).with_name("twistd"))


def children(pid: int) -> list:
    """
    The pids of C{pid}'s direct children (the servers heimdall spawned).
    """
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def free_base(n: int) -> int:
    """
    A base port with C{n} + 1 free ports from it on (best effort on a shared
    machine: somebody may take one before heimdall does).
    """
    for _ in range(50):
        base = free_port()
        if base + n < 65000 and all(is_port_free("127.0.0.1", base + i) for i in range(n + 1)):
            return base
    raise RuntimeError("no free port range")


def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """
    C{predicate()}'s first true value, polled every C{interval} s; fails
    naming C{what} if none comes within C{timeout} s.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)


class HeimdallProcess:
    """
    One twistd heimdall running in C{directory} (its working directory, where
    a relative state file lands), configured by C{config}; C{name} names its
    config and log files, so that several can share a directory.

    @ivar extra_pids: pids to kill too at the end (servers it spawned that
        a test learned about).
    """

    def __init__(self, directory: Path, config: dict, env: dict = None, name: str = "heimdall") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.config = config
        self.config_path = directory / f"{name}.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = directory / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "heimdall", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env={**os.environ, **(env or {})},
        )
        self.extra_pids: set = set()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        """
        Until C{text} is in the log; fails at once if heimdall exits first.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not seen; output:\n{self.output()}")

    def stop(self, timeout: float = 10.0) -> None:
        """
        SIGTERM, as an operator would, then make sure nothing is left.
        """
        if self.proc.poll() is None:
            # Remembered now: once heimdall has exited they are reparented.
            self.extra_pids.update(children(self.proc.pid))
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_all()

    def kill_all(self) -> None:
        """
        SIGKILL heimdall, its children and C{extra_pids}.
        """
        pids = [self.proc.pid] + (children(self.proc.pid) if self.proc.poll() is None else [])
        for pid in pids + sorted(self.extra_pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self._log.close()
