"""
What a reload changes: L{diff_configs} compares the running L{Config}
with the new one (services added, removed and changed, routes, listening
endpoints, what only a restart applies), and L{diff_members} compares a
pool's members with the ones it should have (L{MemberSpec}s, the new
config's backends with the state file's changes laid over them by
L{heimdall.manager.overlay.overlay}).

Both are pure and deterministic: same inputs, same answer, in the
configs' order.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import attrs

from heimdall.config.model import Config
from heimdall.config.services import INHERITED, SERVICE_TIMEOUTS, ServiceConfig, service_configs
from heimdall.manager.overlay import MemberSpec
from heimdall.pool.pool import AdminState

__all__ = ["ConfigDiff", "MemberChange", "MembersDiff", "ServiceDiff", "diff_configs", "diff_members"]

#: A service's settings a reload compares (each applied on its own).
SERVICE_SETTINGS = INHERITED + ("queue",)

#: Top-level keys a reload applies (the others are listed in
#: L{ConfigDiff.restart_needed} when they change).
LIVE_KEYS = frozenset(SERVICE_SETTINGS) | {"listen", "backends", "services", "routes", "forwarded", "tls", "limits"}

#: The listener's timeouts a reload applies (to connections accepted after it).
SITE_TIMEOUTS = ("client_header", "client_idle", "client_body", "client_write")


@attrs.frozen
class ServiceDiff:
    """
    A service in both configs that changed.

    @ivar settings: its resolved settings that differ (L{SERVICE_SETTINGS}).
    @ivar backends: whether its configured backends differ.
    """

    name: str
    settings: Tuple[str, ...] = ()
    backends: bool = False


@attrs.frozen
class ConfigDiff:
    """
    @ivar added_services: services only the new config has, in its order.
    @ivar removed_services: services only the old one has.
    @ivar changed_services: services in both that changed.
    @ivar routes: whether the routes differ.
    @ivar listeners: the endpoints that move (C{listen}, C{tls.listen}).
    @ivar restart_needed: keys that differ but a reload does not apply
        (the manager, logs, limits, ...), for the log and the answer.
    """

    added_services: Tuple[str, ...] = ()
    removed_services: Tuple[str, ...] = ()
    changed_services: Tuple[ServiceDiff, ...] = ()
    routes: bool = False
    listeners: Tuple[str, ...] = ()
    restart_needed: Tuple[str, ...] = ()

    def as_dict(self) -> Dict[str, object]:
        return {
            "services_added": list(self.added_services),
            "services_removed": list(self.removed_services),
            "services_changed": {
                change.name: {"settings": list(change.settings), "backends": change.backends}
                for change in self.changed_services
            },
            "routes_changed": self.routes,
            "listeners_changed": list(self.listeners),
            "restart_needed": list(self.restart_needed),
        }


def _service_diff(name: str, old: ServiceConfig, new: ServiceConfig) -> Optional[ServiceDiff]:
    settings = tuple(key for key in SERVICE_SETTINGS if getattr(old, key) != getattr(new, key))
    backends = old.backends != new.backends
    if not settings and not backends:
        return None
    return ServiceDiff(name, settings, backends)


def _backend_tls(settings: ServiceConfig) -> Tuple[object, Dict[str, object]]:
    return settings.tls, {entry.backend.id: entry.tls for entry in settings.backends if entry.tls is not None}


def _restart_needed(
    old: Config, new: Config, old_services: Dict[str, ServiceConfig], new_services: Dict[str, ServiceConfig]
) -> Tuple[str, ...]:
    keys = []
    for name, settings in new_services.items():
        # A kept service's TLS to its backends is built at start.
        if name in old_services and _backend_tls(old_services[name]) != _backend_tls(settings):
            keys.append(f"services.{name}.tls")
    for field in attrs.fields(Config):
        name = field.name
        if name in LIVE_KEYS or name == "timeouts":
            continue
        if getattr(old, name) != getattr(new, name):
            keys.append(name)
    for name in attrs.fields_dict(type(old.timeouts)):
        if name not in SERVICE_TIMEOUTS + SITE_TIMEOUTS and getattr(old.timeouts, name) != getattr(new.timeouts, name):
            keys.append(f"timeouts.{name}")
    if old.tls.enabled != new.tls.enabled:
        keys.append("tls.enabled")
    elif old.tls.enabled and old.tls.http2 != new.tls.http2:
        keys.append("tls.http2")
    return tuple(keys)


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """
    What changes from C{old} to C{new} (both already validated).
    """
    old_services, new_services = service_configs(old), service_configs(new)
    changed = []
    for name, settings in new_services.items():
        if name in old_services:
            change = _service_diff(name, old_services[name], settings)
            if change is not None:
                changed.append(change)
    listeners = []
    if old.listen != new.listen:
        listeners.append("listen")
    if old.tls.enabled and new.tls.enabled and old.tls.listen != new.tls.listen:
        listeners.append("tls.listen")
    return ConfigDiff(
        added_services=tuple(name for name in new_services if name not in old_services),
        removed_services=tuple(name for name in old_services if name not in new_services),
        changed_services=tuple(changed),
        routes=old.routes != new.routes,
        listeners=tuple(listeners),
        restart_needed=_restart_needed(old, new, old_services, new_services),
    )


@attrs.frozen
class MemberChange:
    """
    A member that stays, with what changes (None: unchanged).
    """

    id: str
    weight: Optional[int] = None
    admin: Optional[AdminState] = None
    backup: Optional[bool] = None
    max_connections: Optional[int] = None


@attrs.frozen
class MembersDiff:
    """
    @ivar added: members to add, in the wanted order.
    @ivar removed: ids of members to drain and remove, in the current order.
    @ivar changed: members that stay with a changed setting.
    @ivar kept: ids of every member that stays (changed or not).
    """

    added: Tuple[MemberSpec, ...] = ()
    removed: Tuple[str, ...] = ()
    changed: Tuple[MemberChange, ...] = ()
    kept: Tuple[str, ...] = ()


def _change(current: MemberSpec, wanted: MemberSpec) -> Optional[MemberChange]:
    def differs(name: str):
        value = getattr(wanted, name)
        return value if value != getattr(current, name) else None

    weight = wanted.backend.weight if wanted.backend.weight != current.backend.weight else None
    change = MemberChange(current.id, weight, differs("admin"), differs("backup"), differs("max_connections"))
    if change == MemberChange(current.id):
        return None
    return change


def _same_backend(current: MemberSpec, wanted: MemberSpec) -> bool:
    # The weight may change in place; another URL (scheme, host name) for
    # the same host:port is another backend.
    return attrs.evolve(current.backend, weight=0) == attrs.evolve(wanted.backend, weight=0)


def diff_members(current: Sequence[MemberSpec], wanted: Sequence[MemberSpec]) -> MembersDiff:
    """
    From the members a pool has (C{current}) to those it should have
    (C{wanted}).  A member whose backend changed beyond its weight (another
    URL for the same host:port) is removed and added again.
    """
    now = {spec.id: spec for spec in current}
    target = {spec.id: spec for spec in wanted}
    removed, changed, kept = [], [], []
    for spec in current:
        goal = target.get(spec.id)
        if goal is None or not _same_backend(spec, goal):
            removed.append(spec.id)
            continue
        kept.append(spec.id)
        change = _change(spec, goal)
        if change is not None:
            changed.append(change)
    added = tuple(
        spec for spec in wanted if spec.id not in now or not _same_backend(now[spec.id], spec)
    )
    return MembersDiff(added, tuple(removed), tuple(changed), tuple(kept))
