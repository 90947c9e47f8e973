"""
heimdall: a dynamic HTTP load balancer on Twisted.

The public API for embedding heimdall in another Twisted application::

    from heimdall import balancer_resource
    root.putChild(b"api", balancer_resource(["http://127.0.0.1:8081"], strategy="round_robin"))

or several services behind one L{Router} (routes by host, path, headers...)::

    router = Router.build([RouteConfig(match=MatchConfig(host="api.example.com"), service="api")],
                          {"api": balancer_resource([...], service="api"), "default": balancer_resource([...])})

Names are imported lazily (PEP 562): C{import heimdall} stays cheap and
installs no reactor; C{heimdall.BalancerResource} imports
C{twisted.web.proxy}, which installs the default reactor if none is
installed yet, so install yours first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module it lives in
_EXPORTS = {
    "AdminState": "heimdall.pool.values",
    "Backend": "heimdall.pool.values",
    "BackendPool": "heimdall.pool.pool",
    "Health": "heimdall.pool.values",
    "Member": "heimdall.pool.pool",
    "Outcome": "heimdall.pool.values",
    "PoolEvent": "heimdall.pool.values",
    "is_eligible": "heimdall.pool.pool",
    "BalancerResource": "heimdall.proxy.resource",
    "HeimdallSite": "heimdall.proxy.site",
    "UpstreamPool": "heimdall.proxy.upstream",
    "RequestContext": "heimdall.pool.context",
    "IStrategy": "heimdall.interfaces",
    "IStrategyFactory": "heimdall.interfaces",
    "StrategyRegistry": "heimdall.strategies.registry",
    "default_registry": "heimdall.strategies.registry",
    "Config": "heimdall.config.model",
    "load_config": "heimdall.config.model",
    "parse_config": "heimdall.config.model",
    "ConfigError": "heimdall.errors",
    "NoBackendAvailable": "heimdall.errors",
    "UnknownStrategy": "heimdall.errors",
    "StrategyOptionError": "heimdall.errors",
    "HeimdallService": "heimdall.service",
    "Router": "heimdall.routing.router",
    "Routing": "heimdall.routing.router",
    "RouteTable": "heimdall.routing.table",
    "RouteConfig": "heimdall.config.routes",
    "MatchConfig": "heimdall.config.routes",
    "HeaderRewriteConfig": "heimdall.config.routes",
    "RespondConfig": "heimdall.config.routes",
    "ServiceConfig": "heimdall.config.services",
    "balancer_resource": "heimdall.embed",
    "create_strategy": "heimdall.embed",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'heimdall' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from heimdall.config.model import Config, load_config, parse_config
    from heimdall.pool.context import RequestContext
    from heimdall.embed import balancer_resource, create_strategy
    from heimdall.errors import ConfigError, NoBackendAvailable, StrategyOptionError, UnknownStrategy
    from heimdall.interfaces import IStrategy, IStrategyFactory
    from heimdall.pool.pool import BackendPool, Member, is_eligible
    from heimdall.pool.values import AdminState, Backend, Health, Outcome, PoolEvent
    from heimdall.proxy.resource import BalancerResource
    from heimdall.strategies.registry import StrategyRegistry, default_registry
    from heimdall.service import HeimdallService
    from heimdall.config.routes import HeaderRewriteConfig, MatchConfig, RespondConfig, RouteConfig
    from heimdall.config.services import ServiceConfig
    from heimdall.routing.router import Router, Routing
    from heimdall.routing.table import RouteTable
    from heimdall.proxy.site import HeimdallSite
    from heimdall.proxy.upstream import UpstreamPool
