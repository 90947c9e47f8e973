"""
The readiness check of a spawned server, against a real HTTP server.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.web.server import Site

from heimdall.manager.readiness import HttpReadyCheck, NotReady
from heimdall.manager.spawner import SpawnedServer


class _Flaky:
    """
    A resource answering 503 for the first C{failures} requests, then 200.
    """

    isLeaf = True

    def __init__(self, failures):
        self.failures = failures
        self.seen = 0

    def render(self, request):
        self.seen += 1
        request.setResponseCode(200 if self.seen > self.failures else 503)
        return b"{}"

    def getChildWithDefault(self, name, request):
        return self


@pytest.mark.parametrize("failures, timeout, passes", [(2, 5.0, True), (10**6, 0.3, False)])
@pytest_twisted.inlineCallbacks
def test_http_ready_check(reactor, tracked, failures, timeout, passes):

    resource = _Flaky(failures)
    port = tracked.listen(Site(resource)).getHost().port
    server = SpawnedServer(port=port, host="127.0.0.1", pid=1, command=[], started_at=0.0)
    check = HttpReadyCheck(reactor, path="/health", timeout=timeout, interval=0.02)
    if passes:
        yield check(server)
        assert resource.seen == 3
    else:
        with pytest.raises(NotReady, match=r"GET /health did not answer 2xx within 0.3 s \(last"):
            yield check(server)
