"""
heimdall.lifecycle.signals: real signals, raised in this (the main)
thread, reach the injected callbacks through the reactor; a twistd
heimdall survives SIGHUP.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest

from heimdall.lifecycle.signals import ProcessSignals
from tests.netutil import free_port

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")


class _Reactor:
    """
    Records what handlers hand over; runs callWhenRunning at once.
    """

    def __init__(self):
        self.handed = []

    def callFromThread(self, f, *args):
        self.handed.append((f, args))

    def callWhenRunning(self, f, *args):
        f(*args)

    def run_handed(self):
        handed, self.handed = self.handed, []
        for f, args in handed:
            f(*args)


@pytest.fixture
def saved_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
    yield saved
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_hangup_and_usr1_are_handed_to_the_reactor_then_restored(saved_handlers):
    reactor, calls = _Reactor(), []
    signals = ProcessSignals(reactor, on_hangup=lambda: calls.append("hup"), on_reopen_logs=lambda: calls.append("usr1"))
    signals.install()
    signal.raise_signal(signal.SIGHUP)
    signal.raise_signal(signal.SIGUSR1)
    # The handlers did no work themselves: it waits for the reactor.
    assert calls == [] and len(reactor.handed) == 2
    reactor.run_handed()
    assert calls == ["hup", "usr1"]
    signals.uninstall()
    assert signal.getsignal(signal.SIGHUP) == saved_handlers[signal.SIGHUP]
    assert signal.getsignal(signal.SIGUSR1) == saved_handlers[signal.SIGUSR1]


def test_the_default_hangup_is_logged_and_ignored(saved_handlers):
    from twisted.logger import globalLogPublisher

    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        reactor = _Reactor()
        signals = ProcessSignals(reactor)
        signals.install()
        signal.raise_signal(signal.SIGHUP)
        reactor.run_handed()
        signals.uninstall()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert any("SIGHUP received" in event.get("log_format", "") for event in seen)


def test_the_first_stop_signal_goes_to_the_reactor_s_handler_the_second_ends_the_grace(saved_handlers):
    reactor, previous, second = _Reactor(), [], []
    # What the reactor installs as it starts (under twistd or reactor.run).
    signal.signal(signal.SIGTERM, lambda signum, frame: previous.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: previous.append(signum))
    signals = ProcessSignals(reactor, on_second_stop=lambda: second.append(True))
    signals.install()
    signal.raise_signal(signal.SIGTERM)
    assert previous == [signal.SIGTERM] and second == []
    signal.raise_signal(signal.SIGINT)  # either signal counts
    assert previous == [signal.SIGTERM]
    reactor.run_handed()
    assert second == [True]
    signals.uninstall()
    signal.raise_signal(signal.SIGTERM)
    assert previous == [signal.SIGTERM, signal.SIGTERM]


def test_stop_signals_with_their_default_meaning_are_left_alone(saved_handlers):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signals = ProcessSignals(_Reactor())
    signals.install()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signals.uninstall()


def test_nothing_is_installed_outside_the_main_thread(saved_handlers):
    import threading

    signals = ProcessSignals(_Reactor())
    thread = threading.Thread(target=signals.install)
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGHUP) == saved_handlers[signal.SIGHUP]


def test_a_twistd_heimdall_survives_sighup(run_heimdall):
    port = free_port()
    h = run_heimdall(
        {
            "listen": f"tcp:{port}:interface=127.0.0.1",
            "spawn": 0,
            "manager": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
        }
    )
    h.wait_for("heimdall manager listening")
    for _ in range(2):
        h.proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)
    # Each SIGHUP reloads the config (tests/reload has the details).
    h.wait_for("config reloaded by SIGHUP (generation 3,")
    time.sleep(0.3)
    assert h.proc.poll() is None, h.output()
    # Still serving: no backend, so heimdall answers itself.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 5")
    h.stop()
    assert h.proc.returncode == -signal.SIGTERM
