"""
L{RecordCollector}: the shape of a collector fed by request records (a
resource's C{request_observers}) and registered on a metrics registry,
shared by L{heimdall.observe.edge} and L{heimdall.observe.protection}.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Sequence

from heimdall.observe.metrics import observe_requests, undo_all

__all__ = ["RecordCollector"]


class RecordCollector:
    """
    Registers itself on C{registry}; L{attach} feeds it the request records
    of resources through C{observe_request(record)}, which a subclass
    defines with C{collect()}.
    """

    def __init__(self, registry) -> None:
        self._registry = registry
        registry.register(self)

    def attach(self, resources: Sequence) -> Callable[[], None]:
        """
        Observe the requests of C{resources} (objects with
        C{request_observers}); returns the function that stops it and
        unregisters the collector.
        """
        undo: List[Callable[[], None]] = [lambda: self._registry.unregister(self)]
        for resource in resources:
            observe_requests(resource, self.observe_request, undo)
        return lambda: undo_all(undo)

    def observe_request(self, record) -> None:
        raise NotImplementedError

    def describe(self) -> Iterable:
        return list(self.collect())

    def collect(self) -> Iterable:
        raise NotImplementedError
