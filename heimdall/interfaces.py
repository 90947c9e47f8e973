"""
Every interface heimdall defines, in one place.

Methods are written without C{self}, as zope.interface expects; each
docstring is the contract an implementation must keep.  Implementations
are checked with C{verifyObject} in the tests.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IStrategy(Interface):
    """
    A load-balancing algorithm: picks one backend per request.

    A strategy only ever sees pool members (L{heimdall.pool.pool.Member}).  It
    may read their live counters (C{in_flight}, C{ttfb_avg}, ...) and
    C{backend.weight}, but never changes them: the pool owns them.
    """

    def rebuild(members):
        """
        Replace the set of members this strategy picks from.

        Called by the pool whenever membership, eligibility or weight
        changes, with every eligible member in a stable order (the order in
        which they were added).  It must be idempotent: calling it twice
        with the same members leaves the strategy in a state equivalent to
        calling it once.  It may precompute (a ring, a heap); it may cost
        more than C{pick}.

        @param members: a sequence of L{heimdall.pool.pool.Member}.
        """

    def pick(context, avoid=()):
        """
        Choose a member for one request.

        Synchronous and never blocking.  Returns a member of the set passed
        to the last C{rebuild}.  Prefers one not in C{avoid} (the members
        that already failed this request, for retries) but returns one in
        C{avoid} rather than none.  Copes with absent context fields.

        @param context: a L{heimdall.pool.context.RequestContext}.
        @param avoid: a container of members not to pick if possible.
        @raise heimdall.errors.NoBackendAvailable: when the set is empty.
        """


class IStrategyFactory(Interface):
    """
    Creates strategies of one kind, registered under C{name}.
    """

    name = Attribute("The name the strategy is registered and configured under (str).")
    description = Attribute("One line saying when to choose this strategy (str).")

    def create(options, random, clock):
        """
        Validate C{options} and build a new strategy.

        @param options: a mapping of option names to values from the
            config (without C{name}).
        @param random: a L{random.Random} the strategy must use for any
            randomness, so that tests can seed it.
        @param clock: an L{IReactorTime} for any time the strategy reads.
        @return: an L{IStrategy} provider.
        @raise heimdall.errors.StrategyOptionError: naming the bad option.
        """


class IResponseObserver(Interface):
    """
    Optional second interface of a strategy that wants to react to the
    response it picked a backend for (sticky cookies).
    """

    def response_started(context, member, request):
        """
        Called once, after the upstream response head was received and
        before it is written to the client, with the L{IRequest} whose
        response headers may be changed.
        """


class IUpstreamResponseHandler(Interface):
    """
    Receives one upstream response from an
    L{heimdall.proxy.upstream.UpstreamConnection}.  Exactly one of
    C{response_finished}, C{response_failed} or C{switched_protocols} is
    called last, once.
    """

    def switched_protocols(reason, headers, rest):
        """
        The backend answered 101 to a request sent with the connection's
        C{expect_upgrade} set: the connection left HTTP and is never
        reused; the handler attaches a tunnel to it (C{attach_tunnel}).

        @param headers: the 101's (name, value) byte pairs, as received.
        @param rest: bytes the backend sent after the 101 head.
        """

    def head_received(status, reason, headers, content_length):
        """
        The response head arrived (1xx interim responses are skipped).

        @param status: the status code (int).
        @param reason: the reason phrase (bytes).
        @param headers: a list of (name, value) byte pairs, as received,
            hop-by-hop headers included.
        @param content_length: the body length if the response is framed
            by Content-Length, 0 if it has no body, else L{None}.
        """

    def body_received(data):
        """
        Some bytes of the response body (already de-chunked).
        """

    def response_finished():
        """
        The response is complete.  The connection may now be reused.
        """

    def response_timed_out():
        """
        No response head arrived before the deadline set with
        C{set_deadline}; the connection is already aborted.
        """

    def response_failed(kind, detail, response_started):
        """
        The exchange failed.

        @param kind: a L{heimdall.pool.values.FailureKind}: C{RESET} (the
            connection closed or broke) or C{BAD_RESPONSE} (a framing or
            syntax error; the connection is already closed).
        @param detail: a human-readable description (str).
        @param response_started: whether any byte of the response had
            arrived, i.e. whether the backend provably processed the request.
        """


class IClientExchange(Interface):
    """
    What a L{heimdall.proxy.site.HeimdallRequest} needs from the exchange
    that serves it (L{heimdall.proxy.exchange.ProxyExchange}): the request
    reports, without a C{notifyFinish()} Deferred per request, the two
    client-side events the exchange must react to.  The exchange sets
    itself as C{request.exchange} and clears it when it is done.
    """

    def client_lost(reason, status=None):
        """
        The client connection closed before the response finished, or its
        request turned out malformed: abort the upstream side (nothing more
        of the request may reach it) and release what the exchange holds.

        @param reason: the L{Failure} of the connection loss.
        @param status: the status the channel answered itself (400 for a
            malformed request), for the access log; None: the client left.
        """

    def body_too_large():
        """
        The client's streamed request body went over the body size limit:
        answer 413 if no response head was sent yet, else abort the client.
        """


class ITimedExchange(Interface):
    """
    What an L{heimdall.proxy.timeouts.ExchangeTimer} tells the exchange it
    times (L{heimdall.proxy.exchange.ProxyExchange}).
    """

    timeout = Attribute("The kind of timeout that ended the exchange, or None.")

    def timed_out(kind):
        """
        The wait C{kind} (one of L{heimdall.proxy.timeouts.TIMEOUT_KINDS})
        ran out: end the exchange (which stops the timer).  The timer's
        waits still show what was waited on.
        """


class IRequestBodyConsumer(Interface):
    """
    Where a L{heimdall.proxy.body.RequestBody} sends the client's body (an
    upstream connection).  The body registers itself as a push producer
    with C{transport}, so that a slow backend pauses the client.
    """

    transport = Attribute("The consumer's ITransport, or None (then no flow control).")

    def write_body(data):
        """
        Send C{data} (bytes, de-chunked) as the next part of the body.
        """

    def end_body():
        """
        The body is complete (for a chunked body: send the last chunk).
        """


class IHealthCheck(Interface):
    """
    One kind of active probe (HTTP, TCP connect, ...), run by
    L{heimdall.health.active.HealthProber} on its schedule.
    """

    def check(backend):
        """
        Probe C{backend} once.

        @param backend: a L{heimdall.pool.values.Backend}.
        @return: a L{Deferred} firing with a L{heimdall.health.probes.ProbeOutcome}
            (C{ok}, C{detail}); it may also fail, or the call may raise: the
            prober turns every failure into a failed result, never into an
            exception that would stop its loop.  It must honour
            cancellation, which the prober uses for its timeout, by
            releasing what it holds (closing its connection).  It must not
            keep state between calls that makes one probe depend on the
            last (no connection reuse: each probe proves the backend
            accepts new connections).
        """


class IBackendTls(Interface):
    """
    How heimdall talks TLS to the C{https://} backends of one service: the
    upstream connections and the health probes ask the same provider
    (L{heimdall.tls.client.BackendTls}), through
    L{heimdall.proxy.endpoints.backend_endpoint}.
    """

    def creator_for(backend):
        """
        The C{IOpenSSLClientConnectionCreator} for C{backend} (a
        L{heimdall.pool.values.Backend} with scheme https): its trust
        roots, the name it sends by SNI and verifies, its client
        certificate.  Built once per backend and then returned again (the
        settings were read when heimdall started).  A certificate it
        rejects ends the handshake with a reason saying why.
        """


class IAlertSink(Interface):
    """
    Where alerts go: the log, a webhook, a program.  Fed by
    L{heimdall.observe.alerts.AlertDispatcher}, never on the data path.
    """

    name = Attribute("A short description for the log, e.g. the webhook's URL (str).")

    def send(alert):
        """
        Deliver one alert, without blocking.

        @param alert: the alert document, a JSON-ready C{dict} (its shape is
            documented in docs/health.md and L{heimdall.observe.alerts}).
        @return: L{None}, or a L{Deferred} that fires (never fails) when the
            delivery is over, with whether it succeeded.  A failed delivery
            is logged by the sink, never raised.
        """

    def stop():
        """
        Give up deliveries in progress (cancel retries and requests, kill
        programs); called once at shutdown.  Returns L{None} or a
        L{Deferred} that fires when they are gone.
        """


class IInFlightAware(Interface):
    """
    Optional second interface of a strategy that wants the pool's total of
    requests in flight on the members of the last rebuild (bounded-load
    hashing compares one member's load with the average).
    """

    def attach_in_flight_total(total):
        """
        @param total: a callable returning that total in O(1); the pool
            keeps it up to date on every lease and release.
        """


class ILoadAware(Interface):
    """
    Optional second interface of a strategy that tracks load itself: the
    pool calls it on every change of a routable member's in-flight count,
    so that picking the least loaded member needs no scan.
    """

    def in_flight_changed(member):
        """
        C{member.in_flight} just went up or down by one.  Must be O(1) or
        O(log n) and must not raise.
        """


class IRequestRewrite(Interface):
    """
    How a route changes a proxied request and its response (see
    L{heimdall.routing.table}).  The exchange applies it once per client
    request; every method is cheap, pure (it keeps no per-request state)
    and never raises.
    """

    host = Attribute("The Host to send upstream (bytes), or None to send the client's.")

    def path(path):
        """
        The path to send upstream (bytes, without the query) for the
        client's C{path}: prefix stripped and/or added.
        """

    def request_headers(headers):
        """
        The upstream request's headers: C{headers} is a list of C{(name,
        value)} bytes pairs (hop-by-hop ones already removed); return the
        list to send (it may be the same list, changed).
        """

    def response_headers(headers):
        """
        Change the client response's L{twisted.web.http_headers.Headers}
        in place, before the head is sent.
        """
