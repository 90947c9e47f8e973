"""
The strategy registry: names, refusals, options, and third-party strategies
through the C{heimdall.strategies} entry-point group.
"""

from __future__ import annotations

import os
import random
import sys

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from zope.interface import Invalid, implementer

from heimdall.pool.context import RequestContext
from heimdall.errors import DuplicateStrategy, StrategyOptionError, UnknownStrategy
from heimdall.interfaces import IStrategyFactory
from heimdall.pool.pool import BackendPool
from heimdall.pool.values import Backend, Health
from heimdall.strategies.registry import ENTRY_POINT_GROUP, StrategyRegistry, default_registry
from heimdall.strategies import BUILTIN, register_builtin
from heimdall.strategies._base import StrategyFactory
from heimdall.strategies.round_robin import RoundRobin

PLUGIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugin_pkg")


def builtin_registry():
    registry = StrategyRegistry()
    register_builtin(registry)
    return registry


def a_factory(name="mine"):
    return StrategyFactory(name=name, description="test", build=lambda options, random, clock: RoundRobin(random))


def test_builtins_are_registered_by_name():
    registry = builtin_registry()
    assert registry.names() == sorted(f.name for f in BUILTIN)
    for factory in BUILTIN:
        assert registry.get(factory.name) is factory
    assert registry.factories() == [registry.get(n) for n in registry.names()]


def test_default_registry_is_built_once():
    assert default_registry() is default_registry()
    assert set(builtin_registry().names()) <= set(default_registry().names())


def test_duplicate_name_is_an_error():
    registry = builtin_registry()
    with pytest.raises(DuplicateStrategy, match="round_robin"):
        registry.register(a_factory("round_robin"))
    registry.register(a_factory("mine"))
    with pytest.raises(DuplicateStrategy):
        registry.register(a_factory("mine"))


def test_an_object_not_providing_the_factory_interface_is_an_error():
    registry = StrategyRegistry()

    class NotAFactory:
        name = "imposter"
        description = "not declared"

        def create(self, options, random, clock):
            return None

    with pytest.raises(TypeError, match="IStrategyFactory"):
        registry.register(NotAFactory())

    @implementer(IStrategyFactory)
    class Broken:  # declares the interface but has no create()
        name = "broken"
        description = "broken"

    with pytest.raises(Invalid):
        registry.register(Broken())
    assert registry.names() == []


def test_a_factory_without_a_name_is_an_error():
    with pytest.raises(TypeError, match="name"):
        StrategyRegistry().register(a_factory(""))


def test_unknown_name_lists_the_known_names():
    registry = builtin_registry()
    with pytest.raises(UnknownStrategy) as caught:
        registry.get("fastest")
    message = str(caught.value)
    assert "'fastest'" in message
    for name in registry.names():
        assert name in message
    assert caught.value.known == registry.names()


def test_options_are_validated_by_the_factory_naming_the_option():
    registry = builtin_registry()
    with pytest.raises(StrategyOptionError) as caught:
        registry.create("least_time", {"half_life": -1}, random.Random(1), Clock())
    assert caught.value.path == "half_life"
    with pytest.raises(StrategyOptionError) as caught:
        registry.create("round_robin", {"weight": 2}, random.Random(1), Clock())
    assert caught.value.path == "weight"
    assert "unknown option" in str(caught.value)


def test_create_defaults_random_and_clock():
    strategy = builtin_registry().create("round_robin")
    strategy.rebuild([])


# -- entry points ----------------------------------------------------------------


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """
    Simulate installed distributions: a directory on sys.path holding
    C{*.dist-info/METADATA} and C{entry_points.txt}, which is what
    importlib.metadata reads, plus the plug-in's module on sys.path.
    Returns a function that installs one distribution.
    """
    monkeypatch.syspath_prepend(PLUGIN_DIR)
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(distribution, entries):
        info = tmp_path / f"{distribution}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1.0\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")

    yield install
    sys.modules.pop("heimdall_failover", None)


def test_third_party_strategy_through_the_entry_point(installed):
    installed("heimdall_failover", {"failover": "heimdall_failover:factory"})
    registry = builtin_registry()
    registry.load_entry_points()
    assert "failover" in registry.names()

    # It is a strategy like the others: options, pool, avoid.
    clock = Clock()
    with pytest.raises(StrategyOptionError) as caught:
        registry.create("failover", {"primary": -1}, random.Random(1), clock)
    assert caught.value.path == "primary"
    pool = BackendPool(registry.create("failover", {}, random.Random(1), clock), clock=clock)
    first, second = pool.add(Backend("http", "a", 80)), pool.add(Backend("http", "b", 80))
    assert pool.pick(RequestContext()) is first
    assert pool.pick(RequestContext(), avoid={first}) is second
    pool.set_health(first.id, Health.DOWN)
    assert pool.pick(RequestContext()) is second


def test_a_broken_plugin_is_logged_and_skipped_and_the_others_load(installed):
    installed("heimdall_broken", {"broken": "no_such_module:factory", "nothing": "heimdall_failover:nothing"})
    installed("heimdall_failover", {"failover": "heimdall_failover:factory"})
    registry = builtin_registry()
    with capturedLogs() as events:
        registry.load_entry_points()
    assert "failover" in registry.names()
    assert "broken" not in registry.names() and "nothing" not in registry.names()
    failed = sorted(e["entry"] for e in events if "log_failure" in e)
    assert failed == ["heimdall_failover:nothing", "no_such_module:factory"]


def test_a_plugin_cannot_replace_a_builtin(installed, tmp_path):
    (tmp_path / "heimdall_impostor.py").write_text(
        "from heimdall.strategies._base import StrategyFactory\n"
        "from heimdall.strategies.first import First\n"
        "factory = StrategyFactory('round_robin', 'impostor', lambda o, r, c: First(1))\n"
    )
    installed("heimdall_impostor", {"round_robin": "heimdall_impostor:factory"})
    registry = builtin_registry()
    builtin = registry.get("round_robin")
    with capturedLogs() as events:
        registry.load_entry_points()  # logged, not raised
    assert registry.get("round_robin") is builtin
    assert any(e.get("log_failure") and e["log_failure"].check(DuplicateStrategy) for e in events)
    sys.modules.pop("heimdall_impostor", None)
