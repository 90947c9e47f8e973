"""
Building a balancer in code, without a config file or twistd: what
L{heimdall.balancer_resource} does for applications that embed heimdall.
"""

from __future__ import annotations

import random as _random
from typing import Any, Iterable, Mapping, Optional, Union

from heimdall.clock import maybe_global_reactor
from heimdall.config.model import TimeoutsConfig, UpstreamConfig
from heimdall.pool.pool import Backend, BackendPool
from heimdall.proxy.resource import BalancerResource
from heimdall.strategies.registry import default_registry
from heimdall.proxy.upstream import UpstreamPool


def create_strategy(
    name: str,
    options: Optional[Mapping[str, Any]] = None,
    *,
    random: Optional[_random.Random] = None,
    clock=None,
):
    """
    A strategy by its registered name, e.g. C{create_strategy("round_robin")}.
    @raise heimdall.errors.UnknownStrategy: listing the known names.
    @raise heimdall.errors.StrategyOptionError: naming a bad option.
    """
    return default_registry().create(name, options, random=random, clock=clock)


def balancer_resource(
    backends: Iterable[Union[str, Backend]] = (),
    strategy: str = "round_robin",
    strategy_options: Optional[Mapping[str, Any]] = None,
    *,
    clock=None,
    random: Optional[_random.Random] = None,
    connect_timeout: Optional[float] = None,
    idle_timeout: Optional[float] = None,
    max_idle_per_backend: Optional[int] = None,
    **resource_options: Any,
) -> BalancerResource:
    """
    A L{BalancerResource} over a new L{BackendPool} of C{backends} (URLs
    like C{"http://127.0.0.1:8081"} or L{Backend} values), ready to mount
    anywhere in a resource tree.  Its pool is C{resource.pool} (add and
    remove backends there at runtime) and its upstream connections are
    C{resource.upstream} (call C{close_all()} on shutdown).

    C{random} is the strategy's source of randomness (seed one for
    repeatable picks).  C{resource_options} go to L{BalancerResource}: C{retries},
    C{response_timeout}, C{max_body_bytes}, C{trusted_proxies},
    C{path_prefix}, C{access_log}.

    C{clock} connects too (it is the reactor: the global one by default).
    The timeouts and the idle-connection limit not given are the config's
    defaults (L{TimeoutsConfig}, L{UpstreamConfig}).
    """
    clock = maybe_global_reactor(clock)
    timeouts, upstream_config = TimeoutsConfig(), UpstreamConfig()
    pool = BackendPool(
        create_strategy(strategy, strategy_options, random=random, clock=clock), clock=clock
    )
    for backend in backends:
        pool.add(Backend.from_url(backend) if isinstance(backend, str) else backend)
    upstream = UpstreamPool(
        reactor=clock,
        connect_timeout=timeouts.connect if connect_timeout is None else connect_timeout,
        idle_timeout=timeouts.idle_upstream if idle_timeout is None else idle_timeout,
        max_idle_per_backend=(
            upstream_config.max_idle_per_backend if max_idle_per_backend is None else max_idle_per_backend
        ),
    )
    resource_options.setdefault("response_timeout", timeouts.response)
    return BalancerResource(pool, upstream, clock=clock, **resource_options)
