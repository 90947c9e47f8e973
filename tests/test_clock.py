"""
L{heimdall.clock}: the reactor fallback and the timestamp format.
"""

from __future__ import annotations

import datetime

from twisted.internet.task import Clock

from heimdall.clock import iso_timestamp, maybe_global_reactor


def test_maybe_global_reactor_keeps_what_it_is_given():
    clock = Clock()
    assert maybe_global_reactor(clock) is clock


def test_maybe_global_reactor_falls_back_to_the_global_one():
    from twisted.internet import reactor

    assert maybe_global_reactor() is reactor
    assert maybe_global_reactor(None) is reactor


def test_iso_timestamp_is_utc_with_milliseconds():
    assert iso_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert iso_timestamp(1.2349) == "1970-01-01T00:00:01.234Z"
    assert iso_timestamp(None) is None
    # The same text as isoformat's, which the manager API used.
    for seconds in (1764621781.9999, 1764621781.0005, 86399.5):
        moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
        assert iso_timestamp(seconds) == moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
