"""
End-to-end failover through real sockets and real backend processes.

heimdall (pool + BalancerResource + HeimdallSite, from the start_proxy
fixture) runs in front of 3 demo backends started as processes, with the
health checks, outlier detection and alerts of L{build_health} at their
defaults.  A client sends about 100 GETs a second; one backend is killed
with SIGKILL (then restarted on the same port), or stopped with SIGSTOP (it
accepts connections and never answers).

Every attempt the proxy makes is recorded in order through a recording
strategy (each pick) and an outcome subscriber (each attempt's end), so
"no request reaches the dead port after the first failure" is checked on
the proxy's own per-attempt records.

The measured times are printed (run with -s, or see the "failover
timings" lines in the output).
"""

from __future__ import annotations

import os
import random
import signal
import sys
from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList
from twisted.internet.task import LoopingCall, deferLater
from zope.interface import implementer

from heimdall.config.health import AlertsConfig, HealthConfig
from heimdall.health.wiring import build_health
from heimdall.interfaces import IStrategy
from heimdall.pool.pool import is_eligible
from heimdall.manager.spawner import ServerSpawner, is_port_free

HOST = "127.0.0.1"
RATE = 100  # requests per second
DURATION = 6.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses POSIX signals and /proc")


@implementer(IStrategy)
class RecordingStrategy:
    """
    Wraps a strategy and records every pick (one per attempt) in the shared
    timeline.
    """

    def __init__(self, inner, timeline: list, clock) -> None:
        self.inner = inner
        self.timeline = timeline
        self.clock = clock

    def rebuild(self, members) -> None:
        self.inner.rebuild(members)

    def pick(self, context, avoid=()):
        member = self.inner.pick(context, avoid)
        self.timeline.append(("pick", member.id, self.clock.seconds()))
        return member


async def _sleep(reactor, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def _base_port() -> int:
    # A random base, so parallel runs do not fight over the same ports.
    port = random.Random().randrange(20000, 40000)
    while not is_port_free(HOST, port):
        port += 1
    return port


@pytest_twisted.async_yield_fixture
async def backends():
    """
    A spawner with 3 demo backend processes; everything stopped (and
    continued, if it was SIGSTOPped) afterwards.
    """
    from twisted.internet import reactor

    spawner = ServerSpawner(reactor=reactor, host=HOST, base_port=_base_port(), ready_timeout=10.0, stop_grace=2.0)
    pids: List[int] = []
    original_launch = spawner._launch

    def launch(port: int):
        server = original_launch(port)
        pids.append(server.pid)
        return server

    spawner._launch = launch
    try:
        results = await DeferredList([spawner.spawn() for _ in range(3)], fireOnOneErrback=True)
        yield spawner, [server for _, server in results]
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        await spawner.stopService().addTimeout(10, reactor)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class LoadClient:
    """
    Sends GET / at a steady rate through the proxy; records each result.
    """

    def __init__(self, reactor, http, url: str) -> None:
        self.reactor = reactor
        self.http = http
        self.url = url
        self.results: List[Any] = []  # (sent_at, status or exception text)
        self.pending: list = []
        self.loop = LoopingCall(self._send)
        self.loop.clock = reactor

    def start(self) -> None:
        self.loop.start(1.0 / RATE, now=True)

    async def stop(self) -> None:
        self.loop.stop()
        await DeferredList(list(self.pending))

    def _send(self) -> None:
        sent_at = self.reactor.seconds()
        d = self.http.get(self.url, timeout=10)

        def done(response):
            return response.content().addCallback(lambda _: self.results.append((sent_at, response.code)))

        def failed(failure):
            self.results.append((sent_at, f"{failure.type.__name__}: {failure.getErrorMessage()}"))

        d.addCallbacks(done, failed)
        self.pending.append(d)
        d.addBoth(lambda _: self.pending.remove(d))

    def failures(self) -> list:
        return [r for r in self.results if r[1] != 200]


def _setup(start_proxy, reactor, servers, timeline, **resource_options):
    proxy = start_proxy([server.url for server in servers], retries=2, **resource_options)
    pool = proxy.pool
    pool.set_strategy(RecordingStrategy(pool.strategy, timeline, reactor))
    pool.subscribe_outcomes(lambda member, outcome: timeline.append(("outcome", member.id, reactor.seconds(), outcome)))
    health = build_health(HealthConfig(), AlertsConfig(flap_window=0), pool, reactor, reactor, random=random.Random(7))
    return proxy, health


def _leftover_calls(reactor) -> list:
    """
    Delayed calls of the health components still scheduled (there must be
    none once the service stopped).
    """
    names = ("tick", "_expire", "_ramp_step", "_close_window", "send_all", "expire")
    return [c for c in reactor.getDelayedCalls() if c.active() and any(name in repr(c.func) for name in names)]


def _report(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n[failover timings] {text}")


@pytest_twisted.ensureDeferred
async def test_sigkill_fails_over_with_no_client_error_and_the_restarted_backend_returns(
    backends, start_proxy, reactor, http, capsys
):
    spawner, servers = backends
    timeline: list = []
    proxy, health = _setup(start_proxy, reactor, servers, timeline)
    pool = proxy.pool
    victim = servers[1]
    victim_id = f"{HOST}:{victim.port}"
    settings = health.prober.settings_for(victim_id)
    eligible_changes: list = []
    pool.subscribe(lambda event: eligible_changes.append((reactor.seconds(), event.kind, is_eligible(pool.get(victim_id)) if pool.get(victim_id) else None, event.detail)) if event.backend_id == victim_id else None)

    health.startService()
    client = LoadClient(reactor, http, proxy.url + "/")
    try:
        client.start()
        await _sleep(reactor, 1.5)
        killed_at = reactor.seconds()
        timeline.append(("killed", victim_id, killed_at))
        os.kill(victim.pid, signal.SIGKILL)
        await victim.exited
        await _sleep(reactor, 1.0)
        restarted = await spawner.spawn(victim.port)
        ready_at = reactor.seconds()
        timeline.append(("restarted", victim_id, ready_at))
        # Load goes on for DURATION in all, and until the restarted backend
        # is back in rotation (within the bound checked below) and has had
        # some traffic: on PyPy a demo backend takes seconds to start.
        back_by = ready_at + settings.rise * settings.interval + 1.0
        while reactor.seconds() < killed_at + DURATION - 1.5 or (
            reactor.seconds() < back_by and not is_eligible(pool.get(victim_id))
        ):
            await _sleep(reactor, 0.05)
        await _sleep(reactor, 0.5)
        await client.stop()
    finally:
        await health.stopService()

    assert _leftover_calls(reactor) == []
    member = pool.get(victim_id)
    # -- 0 failed client requests -----------------------------------------------
    assert len(client.results) >= RATE * DURATION * 0.8
    assert client.failures() == []

    # -- no attempt reaches the dead port after its first failure --------------------
    kill_index = next(i for i, entry in enumerate(timeline) if entry[0] == "killed")
    restart_index = next(i for i, entry in enumerate(timeline) if entry[0] == "restarted")
    first_failure = next(
        i
        for i, entry in enumerate(timeline)
        if i > kill_index and entry[0] == "outcome" and entry[1] == victim_id and entry[3].is_backend_failure
    )
    late_picks = [e for e in timeline[first_failure + 1 : restart_index] if e[0] == "pick" and e[1] == victim_id]
    assert late_picks == [], [
        (e[0], round(e[2] - timeline[kill_index][2], 4), e[3].failure if e[0] == "outcome" else None)
        for e in timeline[kill_index:restart_index]
        if e[1] == victim_id
    ]
    failed_attempts = [
        e for e in timeline[kill_index:restart_index] if e[0] == "outcome" and e[1] == victim_id and e[3].failure is not None
    ]
    stale_attempts = [
        e for e in timeline[kill_index:restart_index]
        if e[0] == "outcome" and e[1] == victim_id and e[3].failure is None and e[3].status is None
    ]

    # -- ejected, then back in rotation within rise x interval + 1 s after the restart ---
    ejected_at = next(t for t, kind, _, _ in eligible_changes if kind == "ejected" and t >= killed_at)
    returned_at = next(t for t, kind, eligible, _ in eligible_changes if t >= ready_at and eligible)
    assert returned_at - ready_at <= settings.rise * settings.interval + 1.0
    assert is_eligible(member)
    served_after = [e for e in timeline if e[0] == "pick" and e[1] == victim_id and e[2] > returned_at]
    assert served_after, "the restarted backend got no traffic"
    assert restarted.pid != victim.pid
    _report(
        capsys,
        f"SIGKILL -> ejection {1000 * (ejected_at - killed_at):.1f} ms "
        f"({len(failed_attempts)} failed attempt(s) on the dead port, all retried; "
        f"{len(stale_attempts)} stale keep-alive attempt(s)); "
        f"restart (port accepting) -> back in rotation {returned_at - ready_at:.2f} s "
        f"(bound {settings.rise} x {settings.interval:g} s + 1 s); "
        f"{len(client.results)} requests, {len(client.failures())} failed; "
        f"transitions: {[(round(t - killed_at, 3), k, d) for t, k, _, d in eligible_changes]}",
    )


@pytest_twisted.ensureDeferred
async def test_a_backend_that_never_answers_is_ejected_by_its_timeouts(backends, start_proxy, reactor, http, capsys):
    spawner, servers = backends
    timeline: list = []
    # A short response timeout, so that the test is short; the proxy does
    # not retry timeouts (a timed-out GET may have been processed).
    proxy, health = _setup(start_proxy, reactor, servers, timeline, response_timeout=1.0)
    pool = proxy.pool
    victim = servers[0]
    victim_id = f"{HOST}:{victim.port}"
    events: list = []
    pool.subscribe(lambda event: events.append((reactor.seconds(), event.kind, event.detail)) if event.backend_id == victim_id else None)
    health.startService()
    client = LoadClient(reactor, http, proxy.url + "/")
    try:
        client.start()
        await _sleep(reactor, 1.0)
        stopped_at = reactor.seconds()
        timeline.append(("stopped", victim_id, stopped_at))
        os.kill(victim.pid, signal.SIGSTOP)  # accepts connections (the kernel does), never answers
        await _sleep(reactor, 4.0)
        await client.stop()
    finally:
        os.kill(victim.pid, signal.SIGCONT)
        await health.stopService()

    assert _leftover_calls(reactor) == []
    ejected = [(t, detail) for t, kind, detail in events if kind == "ejected"]
    assert ejected, events
    ejected_at, reason = ejected[0]
    assert "timeout" in reason
    assert ejected_at - stopped_at <= 1.0 + 1.0  # the response timeout, then 5 of them in a row
    ejection_at_index = next(
        i for i, e in enumerate(timeline)
        if e[0] == "outcome" and e[1] == victim_id and e[2] >= ejected_at and e[3].failure == "timeout"
    )
    late_picks = [e for e in timeline[ejection_at_index + 1 :] if e[0] == "pick" and e[1] == victim_id]
    assert late_picks == []
    # Only requests sent to it before the ejection failed (504), nothing else.
    failures = client.failures()
    assert {status for _, status in failures} <= {504}
    timeouts = [e for e in timeline if e[0] == "outcome" and e[1] == victim_id and e[3].failure == "timeout"]
    assert len(failures) == len(timeouts)
    down = [t for t, kind, _ in events if kind == "down"]
    _report(
        capsys,
        f"SIGSTOP -> ejection {ejected_at - stopped_at:.2f} s ({reason}); "
        f"{len(failures)} client requests got 504 (sent to it before the ejection)"
        + (f"; active checks marked it down {down[0] - stopped_at:.2f} s after" if down else
           "; active checks had not marked it down yet (3 probes timing out after 1 s, one per 2 s)"),
    )
