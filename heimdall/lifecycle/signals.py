"""
heimdall's process signals, in one place.

  - C{SIGHUP}: C{on_hangup} (the composition root's reload; by default a
    log line: the signal is ignored rather than killing heimdall);
  - C{SIGUSR1}: C{on_reopen_logs} (reopen the log files after logrotate);
  - C{SIGTERM} and C{SIGINT}: the first one goes to the handler that was
    there (the reactor's, under twistd or C{reactor.run()}: it stops the
    reactor, which runs the graceful shutdown, and remembers the signal so
    that twistd exits with it); a second one calls C{on_second_stop}
    (end the grace at once).  They are taken over only where the reactor
    already handles them: where they still have their default meaning
    (an embedding application, pytest) they keep it.

A handler runs between two bytecodes of whatever the main thread was
doing, so it only hands the work to the reactor (C{callFromThread}).
Handlers are installed in the main thread only (Python allows no other)
and L{ProcessSignals.uninstall} puts back the ones they replaced.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable, Dict

import attrs
from twisted.logger import Logger

__all__ = ["ProcessSignals", "ignore_hangup"]

_log = Logger()


def ignore_hangup() -> None:
    """
    What SIGHUP does until heimdall can reload its config: say so, and
    carry on.
    """
    _log.info("SIGHUP received: reloading is not available; ignored")


def _noop() -> None:
    pass


def _handled_by_someone(handler: Any) -> bool:
    """
    Whether C{handler} (from C{signal.getsignal}) is a handler somebody
    installed, as opposed to the signal's default meaning.
    """
    return callable(handler) and handler is not signal.default_int_handler


@attrs.define(eq=False)
class ProcessSignals:
    """
    heimdall's signal handlers (see the module docstring).

    @ivar reactor: the reactor the work is handed to.
    @ivar on_hangup: called in the reactor thread on SIGHUP.
    @ivar on_reopen_logs: called in the reactor thread on SIGUSR1.
    @ivar on_second_stop: called in the reactor thread on the second
        SIGTERM or SIGINT.
    """

    reactor: Any
    on_hangup: Callable[[], None] = ignore_hangup
    on_reopen_logs: Callable[[], None] = _noop
    on_second_stop: Callable[[], None] = _noop
    #: The handlers replaced, by signal number, to put back.
    _previous: Dict[int, Any] = attrs.field(factory=dict, init=False)
    _stops: int = attrs.field(default=0, init=False)
    _installed: bool = attrs.field(default=False, init=False)

    def install(self) -> None:
        """
        Install SIGHUP's and SIGUSR1's handlers now, and SIGTERM's and
        SIGINT's once the reactor runs (it installs its own as it starts).
        Nothing outside the main thread.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        self._installed = True
        for name, work in (("SIGHUP", lambda: self.on_hangup()), ("SIGUSR1", lambda: self.on_reopen_logs())):
            signum = getattr(signal, name, None)
            if signum is not None:
                self._replace(signum, self._handing_over(work))
        self.reactor.callWhenRunning(self._install_stop_handlers)

    def _install_stop_handlers(self) -> None:
        if not self._installed:
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if _handled_by_someone(previous) and signum not in self._previous:
                self._replace(signum, self._on_stop_signal)

    def _replace(self, signum: int, handler: Callable[[int, Any], None]) -> None:
        self._previous.setdefault(signum, signal.signal(signum, handler))

    def _handing_over(self, work: Callable[[], None]) -> Callable[[int, Any], None]:
        def handler(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(work)

        return handler

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self._stops += 1
        if self._stops == 1:
            # The reactor's own handler: it stops the reactor (which runs
            # the graceful shutdown) and records the signal for twistd.
            self._previous[signum](signum, frame)
        else:
            self.reactor.callFromThread(self._second_stop, signum)

    def _second_stop(self, signum: int) -> None:
        _log.info("{name} received again: stopping at once", name=signal.Signals(signum).name)
        self.on_second_stop()

    def uninstall(self) -> None:
        """
        Put back every handler this replaced.
        """
        self._installed = False
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
