"""
Fixtures of the manager tests: spawners of quick real processes on
127.0.0.1.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from heimdall.manager.spawner import ServerSpawner, is_port_free
from tests.manager.support import QUICK
from tests.netutil import free_port



def _base(n):
    for _ in range(50):
        base = free_port()
        if base + n < 65000 and all(is_port_free("127.0.0.1", base + i) for i in range(n)):
            return base
    raise RuntimeError("no free port range")


@pytest.fixture
def spawner(reactor):
    made = []

    def make(command=QUICK, n=3, **options):
        s = ServerSpawner(reactor=reactor, base_port=_base(n), port_range=n, command=command, stop_grace=1.0,
                          **options)
        made.append(s)
        return s

    yield make
    for s in made:
        pytest_twisted.blockon(s.stopService())


