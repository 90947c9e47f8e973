"""
The live feed (heimdall/observe/live.py), deterministically: a Clock, a
real BackendPool, request records and alert documents made by hand.
"""

from __future__ import annotations

import json
import random

import attrs
import pytest
from twisted.internet.task import Clock

from heimdall.observe.alerts import AlertDispatcher
from heimdall.observe.live import (
    HISTORY,
    WINDOW,
    LiveFeed,
    LiveStats,
    RequestWindow,
    Subscription,
    alert_status,
    backend_state,
    encode_message,
    percentile,
)
from heimdall.pool.pool import AdminState, Backend, BackendPool, Health
from heimdall.pool.values import CheckResult
from heimdall.strategies.registry import default_registry


@attrs.frozen
class Record:
    status: int = 200
    total_time: float = 0.01
    backend: str = "127.0.0.1:8081"
    service: str = "default"


def _pool(clock, *ports):
    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), clock), clock=clock)
    for port in ports:
        pool.add(Backend("http", "127.0.0.1", port))
    return pool


def _messages(chunks):
    """(event, data) of each SSE message in C{chunks}."""
    out = []
    for chunk in chunks:
        event, data = chunk.decode().strip().split("\n")
        out.append((event[len("event: "):], json.loads(data[len("data: "):])))
    return out


def test_percentile_is_the_bucket_upper_bound_within_ten_percent():
    window = RequestWindow(5)
    for i in range(1, 101):
        window.record(i / 1000, error=False)  # 1 ms .. 100 ms
    window.roll()
    summary = window.summary(5)
    assert 0.050 <= summary["p50"] <= 0.050 * 1.1
    assert 0.099 <= summary["p99"] <= 0.099 * 1.1
    assert summary["requests"] == 100 and summary["rate"] == 20.0 and summary["error_rate"] == 0.0
    assert percentile({}, 0.5) is None


def test_a_window_covers_its_last_seconds_and_forgets_older_ones():
    window = RequestWindow(3)
    window.record(0.001, error=True)
    window.roll()
    for _ in range(4):
        window.record(0.001, error=False)
    window.roll()
    assert window.last() == 4
    assert window.summary(2)["error_rate"] == 0.2
    window.roll()
    window.roll()  # the erroring second is now older than 3 slots
    assert window.summary(3)["errors"] == 0 and window.summary(3)["requests"] == 4
    assert RequestWindow(3).summary(3)["error_rate"] is None


def test_stats_count_5xx_as_errors_per_backend_and_forget_removed_backends():
    stats = LiveStats()
    stats.observe(Record(status=200))
    stats.observe(Record(status=503))
    stats.observe(Record(status=502, backend=None))  # heimdall answered itself
    stats.roll([("default", "127.0.0.1:8081")])
    assert stats.total.last() == 3
    assert stats.total.summary(WINDOW)["errors"] == 2
    backend = stats.backend("default", "127.0.0.1:8081")
    assert (backend["requests"], backend["errors"]) == (2, 1)
    stats.roll([])
    assert stats.backend("default", "127.0.0.1:8081")["requests"] == 0


def test_backend_state_puts_the_operators_intent_first():
    clock = Clock()
    pool = _pool(clock, 8081)
    member = pool.get("127.0.0.1:8081")
    assert backend_state(member) == ("unknown", "")
    pool.set_health(member.id, Health.DOWN, "3 failed checks")
    assert backend_state(member) == ("down", "3 failed checks")
    pool.eject(member.id, until=30, reason="5 failures in a row")
    assert backend_state(member) == ("ejected", "5 failures in a row")
    pool.set_admin(member.id, AdminState.DRAINING)
    assert backend_state(member) == ("draining", "")
    pool.set_admin(member.id, AdminState.MAINTENANCE)
    assert backend_state(member) == ("maintenance", "")


def test_a_subscription_queues_while_paused_and_is_dropped_past_its_bound():
    delivered, ended = [], []
    subscription = Subscription(delivered.append, lambda reason, abort: ended.append((reason, abort)), max_queued=3)
    subscription.push(b"a")
    subscription.pause()
    for message in (b"b", b"c", b"d"):
        subscription.push(message)
    assert delivered == [b"a"] and list(subscription.queue) == [b"b", b"c", b"d"]
    subscription.resume()
    assert delivered == [b"a", b"b", b"c", b"d"] and not subscription.queue
    subscription.pause()
    for message in (b"e", b"f", b"g", b"h"):
        subscription.push(message)
    assert subscription.ended and not subscription.queue and subscription.peak == 4
    assert ended == [("the client did not read: 4 messages queued", True)]
    subscription.push(b"i")
    subscription.resume()
    assert delivered[-1] == b"d"


def test_resume_stops_when_the_transport_pauses_again():
    subscription = Subscription(lambda m: subscription.pause(), lambda *a: None, max_queued=10)
    subscription.pause()
    subscription.push(b"a")
    subscription.push(b"b")
    subscription.resume()
    assert list(subscription.queue) == [b"b"] and subscription.paused


def test_a_reader_gets_a_snapshot_then_pool_events_at_once_and_stats_each_second():
    clock = Clock()
    clock.advance(1000)
    pool = _pool(clock, 8081, 8082)
    feed = LiveFeed(clock, {"default": pool}, open_connections=lambda: 7, generation=lambda: 3)
    feed.start()
    chunks = []
    feed.subscribe(chunks.append, lambda *a: None)
    pool.set_health("127.0.0.1:8081", Health.DOWN, "connect refused")
    feed.stats.observe(Record(status=200, total_time=0.004))
    clock.advance(1)
    messages = _messages(chunks)
    assert [event for event, _ in messages] == ["snapshot", "pool", "stats"]
    snapshot = messages[0][1]
    assert [row["id"] for row in snapshot["sample"]["services"]["default"]] == ["127.0.0.1:8081", "127.0.0.1:8082"]
    assert [e["kind"] for e in snapshot["events"]] == []
    pool_event = messages[1][1]
    assert pool_event["kind"] == "down" and pool_event["backend"] == "127.0.0.1:8081"
    assert pool_event["state"]["state"] == "down" and pool_event["state"]["reason"] == "connect refused"
    stats = messages[2][1]
    assert stats["requests_per_second"] == 1 and stats["open_connections"] == 7 and stats["generation"] == 3
    assert stats["uptime"] == 1.0 and stats["p50"] is not None
    row = stats["services"]["default"][0]
    assert row["requests_per_second"] == 0.1 and row["state"] == "down"
    # A later reader's snapshot has the history and the event.
    later = []
    feed.subscribe(later.append, lambda *a: None)
    snapshot = _messages(later)[0][1]
    assert len(snapshot["history"]) == 1 and "services" not in snapshot["history"][0]
    assert [e["kind"] for e in snapshot["events"]] == ["down"]
    feed.stop()
    assert not clock.getDelayedCalls() and not pool._subscribers


def test_the_history_is_bounded():
    clock = Clock()
    feed = LiveFeed(clock, {"default": _pool(clock, 8081)})
    feed.start()
    clock.pump([1] * (HISTORY + 20))
    assert len(feed.snapshot()["history"]) == HISTORY
    feed.stop()


def test_stopping_ends_every_reader_gracefully():
    clock = Clock()
    feed = LiveFeed(clock, {"default": _pool(clock, 8081)})
    feed.start()
    ended = []
    subscription = feed.subscribe(lambda m: None, lambda reason, abort: ended.append(abort))
    feed.stop()
    assert ended == [False] and subscription.ended and feed.subscriptions == []


def test_a_slow_reader_is_dropped_and_the_others_go_on():
    clock = Clock()
    pool = _pool(clock, 8081)
    feed = LiveFeed(clock, {"default": pool}, max_queued=5)
    feed.start()
    fast, dropped = [], []
    feed.subscribe(fast.append, lambda *a: None)
    slow = feed.subscribe(lambda m: None, lambda reason, abort: dropped.append(abort))
    slow.pause()
    for weight in range(2, 10):
        pool.set_weight("127.0.0.1:8081", weight)
    assert dropped == [True] and slow not in feed.subscriptions and slow.peak == 6
    assert len(fast) == 1 + 8
    feed.stop()


def test_alerts_sent_by_a_dispatcher_reach_the_feed():
    clock = Clock()
    pool = _pool(clock)
    dispatcher = AlertDispatcher(pool, clock, flap_window=0)
    dispatcher.start()
    feed = LiveFeed(clock, {"default": pool})
    feed.watch_alerts("default", dispatcher)
    feed.start()
    chunks = []
    feed.subscribe(chunks.append, lambda *a: None)
    pool.add(Backend("http", "127.0.0.1", 8081))
    pool.set_health("127.0.0.1:8081", Health.UP, "HTTP 200")
    pool.set_health("127.0.0.1:8081", Health.DOWN, "connect refused")
    clock.advance(0)  # alerts are delivered on the next turn
    alerts = [data for event, data in _messages(chunks) if event == "alert"]
    assert ("down", "firing") in [(a["alert"]["event"], a["status"]) for a in alerts]
    assert alert_status({"event": "up", "severity": "info"}) == "resolved"
    assert alert_status({"event": "weight", "severity": "info"}) == "info"
    feed.stop()
    dispatcher.stop()
    assert dispatcher.alert_observers == []


def test_a_last_check_is_shown_with_its_result_and_latency():
    clock = Clock()
    pool = _pool(clock, 8081)
    pool.record_check("127.0.0.1:8081", CheckResult(at=5.0, ok=False, latency=0.0123, detail="HTTP 503"), 0, 1)
    feed = LiveFeed(clock, {"default": pool})
    row = feed.sample()["services"]["default"][0]
    assert row["last_check"] == {"result": "fail", "latency": 0.0123, "detail": "HTTP 503", "at": 5.0}


def test_a_message_is_one_sse_event_with_one_line_of_json():
    assert encode_message("pool", {"a": "x\ny"}) == b'event: pool\ndata: {"a":"x\\ny"}\n\n'


@pytest.mark.parametrize("status, error", [(200, False), (404, False), (499, False), (500, True), (503, True)])
def test_what_counts_as_an_error(status, error):
    stats = LiveStats()
    stats.observe(Record(status=status))
    stats.roll([])
    assert stats.total.summary(1)["errors"] == int(error)


def test_a_service_added_after_the_start_is_followed_until_it_is_forgotten():
    # A reload adds and removes services while the feed runs.
    clock = Clock()
    feed = LiveFeed(clock, {"default": _pool(clock, 8081)})
    feed.start()
    chunks = []
    feed.subscribe(chunks.append, lambda *a: None)
    api = _pool(clock)
    dispatcher = AlertDispatcher(api, clock, flap_window=0)
    dispatcher.start()
    forget = feed.add_service("api", api, dispatcher)
    api.add(Backend("http", "127.0.0.1", 9091))
    api.set_health("127.0.0.1:9091", Health.UP, "HTTP 200")
    api.set_health("127.0.0.1:9091", Health.DOWN, "connect refused")
    clock.advance(1)
    messages = _messages(chunks)
    assert "api" in [data["service"] for event, data in messages if event == "pool"]
    assert "api" in [data["service"] for event, data in messages if event == "alert"]
    assert [row["id"] for row in feed.sample()["services"]["api"]] == ["127.0.0.1:9091"]
    forget()
    del chunks[:]
    api.set_health("127.0.0.1:9091", Health.UP, "HTTP 200")
    clock.advance(1)
    messages = _messages(chunks)
    assert [event for event, _ in messages] == ["stats"]
    assert "api" not in feed.sample()["services"]
    assert dispatcher.alert_observers == []
    feed.stop()
    dispatcher.stop()
