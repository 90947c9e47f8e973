"""
Raw-socket helpers for tests that need byte-level control: a scripted
backend that answers each request head with canned bytes, and a client
that sends exact bytes and collects what comes back.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, Factory, Protocol


class ScriptedBackend(Factory):
    """
    For each request head received, calls C{respond(protocol, head)}, which
    writes whatever it likes to C{protocol.transport}.  Counts connections
    and request heads.  Request bodies are not parsed: use bodyless requests.
    """

    def __init__(self, respond):
        self.respond = respond
        self.connections = 0
        self.heads = []
        self.protocols = []

    def buildProtocol(self, addr):
        self.connections += 1
        p = _ScriptedProtocol()
        p.factory = self
        self.protocols.append(p)
        return p


class _ScriptedProtocol(Protocol):
    buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.factory.heads.append(head)
            self.factory.respond(self, head)


class RawClient(Protocol):
    def __init__(self):
        self.received = b""
        self.closed = defer.Deferred()
        self.connected_d = defer.Deferred()

    def connectionMade(self):
        self.connected_d.callback(self)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(self.received)


def raw_connect(reactor, port):
    """
    Connect a L{RawClient} to 127.0.0.1:port; fires with it.
    """
    client = RawClient()
    factory = ClientFactory.forProtocol(lambda: client)
    reactor.connectTCP("127.0.0.1", port, factory)
    return client.connected_d


@defer.inlineCallbacks
def raw_exchange(reactor, port, data, timeout=5.0):
    """
    Send C{data}, return everything received until the server closes.
    """

    client = yield raw_connect(reactor, port)
    client.transport.write(data)
    timer = reactor.callLater(timeout, client.transport.abortConnection)
    try:
        received = yield client.closed
    finally:
        if timer.active():
            timer.cancel()
    return received
