"""
The manager per service: one L{ServerManager} per service, found by name
(C{?service=NAME} on the API; C{default} without it), and what
C{GET /services} shows.

Each service's runtime changes are kept in a state file of its own, beside
the C{default} service's C{manager.state_file}: C{heimdall-state.json}
for C{default}, C{heimdall-state.api.json} for C{api} (see
L{service_state_path}), written and read the same way.
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import attrs
from twisted.internet.defer import DeferredList

from heimdall.config.model import parse_strategy
from heimdall.config.services import DEFAULT_SERVICE
from heimdall.errors import ConfigError, InvalidChange, ServiceNotFound
from heimdall.manager.servers import Actor, ServerManager
from heimdall.strategies.registry import default_registry

__all__ = ["ServiceManagers", "service_state_path"]


def service_state_path(state_path: str, service: str) -> str:
    """
    The state file of C{service}, beside C{state_path} (the default one's).
    """
    if service == DEFAULT_SERVICE:
        return state_path
    root, extension = os.path.splitext(state_path)
    return f"{root}.{service}{extension or '.json'}"


def _route_json(index: int, route: Any) -> Dict[str, Any]:
    match = route.match
    shown = {key: value for key, value in (
        ("host", match.host), ("path_prefix", match.path_prefix), ("path_regex", match.path_regex),
        ("methods", list(match.methods) or None), ("headers", dict(match.headers) or None),
        ("query", dict(match.query) or None),
    ) if value is not None}
    return {"index": index, "match": shown}


@attrs.define(eq=False)
class ServiceManagers:
    """
    Every service's L{ServerManager}, C{default} first.

    @ivar routes: returns the routes in effect (L{heimdall.config.routes.RouteConfig}s).
    """

    managers: Mapping[str, ServerManager]
    routes: Callable[[], Sequence[Any]] = lambda: ()

    def get(self, name: Optional[str] = None) -> ServerManager:
        """
        @raise ServiceNotFound: there is no service C{name}.
        """
        manager = self.managers.get(name or DEFAULT_SERVICE)
        if manager is None:
            raise ServiceNotFound(f"no service {name!r}", {"service": name, "services": list(self.managers)})
        return manager

    @property
    def default(self) -> ServerManager:
        return self.managers[DEFAULT_SERVICE]

    def add(self, name: str, manager: ServerManager) -> None:
        """
        Service C{name} joins (a reload added it).
        """
        self.managers = {**self.managers, name: manager}

    def discard(self, name: str) -> None:
        """
        Service C{name} leaves (a reload removed it): the API no longer finds it.
        """
        self.managers = {key: value for key, value in self.managers.items() if key != name}

    def describe(self) -> List[Dict[str, Any]]:
        """
        C{GET /services}: each service with its strategy, server counts and
        the routes that send requests to it (by position in C{routes}).
        """
        routes = list(enumerate(self.routes()))
        described = []
        for name, manager in self.managers.items():
            status = manager.status()
            described.append({
                "name": name,
                "strategy": status["strategy"],
                "counts": status["counts"],
                "routes": [_route_json(index, route) for index, route in routes if route.service == name],
                "state_file": manager.writer.path,
            })
        return described

    async def set_strategy(self, actor: Actor, name: Optional[str], strategy: Any) -> Dict[str, Any]:
        """
        Give service C{name} the strategy C{strategy} (a name, or
        C{{"name": ..., options}}, checked like the config's) now, and keep
        it in its state file.

        @raise InvalidChange: naming the problem.
        """
        manager = self.get(name)
        chosen = self._strategy(strategy)
        self._apply(manager, chosen)
        manager.log_change("strategy", name or DEFAULT_SERVICE, actor, chosen.name)
        await manager.persist()
        return self.describe_one(name or DEFAULT_SERVICE)

    def restore_strategy(self, name: str, state: Any) -> None:
        """
        Apply the strategy a state file kept for service C{name}, if any (at start).
        """
        if state is not None and state.strategy is not None:
            self._apply(self.managers[name], self._strategy(state.strategy))

    @staticmethod
    def _strategy(strategy: Any):
        try:
            return parse_strategy(strategy, "strategy")
        except ConfigError as e:
            raise InvalidChange(str(e), {"field": e.path, "problem": e.problem}) from None

    @staticmethod
    def _apply(manager: ServerManager, chosen: Any) -> None:
        pool = manager.pool
        pool.set_strategy(default_registry().create(chosen.name, dict(chosen.options), random.Random(), pool.clock))
        manager.strategy_name = chosen.name
        manager.strategy_override = {"name": chosen.name, **dict(chosen.options)}

    def describe_one(self, name: str) -> Dict[str, Any]:
        return next(service for service in self.describe() if service["name"] == name)

    def stop(self):
        """
        Stop every manager (see L{ServerManager.stop}).
        """
        return DeferredList([manager.stop() for manager in self.managers.values()], fireOnOneErrback=True,
                            consumeErrors=True)
