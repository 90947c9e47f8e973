"""
heimdall's own log (not the access log): text or JSON lines, to stdout or a
file, at a minimum level, as the config's C{log} section says.

Under twistd it is installed as the application's C{ILogObserver}
component, which twistd's logger uses unless C{--logger} is given (so it
also takes precedence over C{--logfile}).
"""

from __future__ import annotations

import sys

from heimdall.observe.accesslog import ReopenableFile
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


# heimdall's own log files, for reopen_log_files() (SIGUSR1).
_open_files: list = []


def reopen_log_files() -> None:
    for stream in _open_files:
        if isinstance(stream, ReopenableFile):
            stream.reopen()


def main_log_observer(log_config) -> ILogObserver:
    """
    The observer for a L{heimdall.config.model.LogConfig}.
    """
    stream = sys.stdout if log_config.path == "-" else ReopenableFile(log_config.path)
    _open_files.append(stream)
    if log_config.format == "json":
        observer = jsonFileLogObserver(stream, recordSeparator="")  # JSON Lines
    else:
        observer = textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[log_config.level])
    return FilteringLogObserver(observer, [predicate])


def install_on_application(application, log_config) -> None:
    """
    Make twistd log through heimdall's observer: twistd's logger starts
    after the service is attached to the application and looks for this
    component first.
    """
    set_component = getattr(application, "setComponent", None)
    if set_component is not None:
        set_component(ILogObserver, main_log_observer(log_config))
