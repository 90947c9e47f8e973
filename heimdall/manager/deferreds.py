"""
Sharing one Deferred's result among several waiters (a removal joined by
a second request, a process stop awaited by several callers).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["observe"]


def observe(deferred: Deferred) -> Deferred:
    """
    A new Deferred with C{deferred}'s eventual result, leaving
    C{deferred}'s own result untouched for other observers (awaiting a
    Deferred replaces its result with None).
    """
    observer: Deferred = Deferred()

    def relay(result: Any) -> Any:
        if isinstance(result, Failure):
            observer.errback(result)
            return None  # handed on: the observer now owns the failure
        observer.callback(result)
        return result

    deferred.addBoth(relay)
    return observer
