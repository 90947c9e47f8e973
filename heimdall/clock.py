"""
Time and the reactor: the one place that falls back to the global reactor,
and the one timestamp format of heimdall's JSON (alerts, the manager API).

Library code never imports the global reactor at module level (importing
heimdall installs no reactor); a collaborator that was not injected comes
from L{maybe_global_reactor} at the moment it is needed.
"""

from __future__ import annotations

import datetime
from typing import Any, Optional, overload

__all__ = ["iso_timestamp", "maybe_global_reactor"]


def maybe_global_reactor(reactor: Any = None) -> Any:
    """
    C{reactor} itself, or the global reactor when it is L{None} (imported
    only then, so that the default reactor is installed as late as
    possible).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor


@overload
def iso_timestamp(seconds: float) -> str: ...


@overload
def iso_timestamp(seconds: None) -> None: ...


def iso_timestamp(seconds: Optional[float]) -> Optional[str]:
    """
    A POSIX time as UTC ISO 8601 with milliseconds and a C{Z}, such as
    C{"2026-12-01T20:49:41.123Z"}; L{None} stays L{None} (a time not known
    yet).
    """
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
