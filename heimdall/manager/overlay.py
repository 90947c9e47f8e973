"""
The state file laid over config.json: which backends a service's pool
holds, given the config's backends and the runtime changes the manager
kept (L{overlay}), and the reverse, the state file's content for a pool as
it is (L{snapshot_state}).

One function for start-up and for reload: a reload gives the pool what a
restart with the new config file would give it (the runtime changes kept
on top of the new config), without dropping what stays.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

import attrs
from twisted.logger import Logger

from heimdall.manager.statefile import ConfigChange, ServerRecord, State
from heimdall.pool.pool import AdminState, Backend

__all__ = ["MemberSpec", "Overlay", "overlay", "snapshot_state"]

_log = Logger()


@attrs.frozen
class MemberSpec:
    """
    What one pool member should be: its backend (with its configured
    weight), admin state, backup flag, connection limit, and whether it is
    one of config.json's backends.
    """

    backend: Backend
    admin: AdminState = AdminState.READY
    backup: bool = False
    max_connections: int = 0
    from_config: bool = False

    @property
    def id(self) -> str:
        return self.backend.id


@attrs.frozen
class Overlay:
    """
    @ivar members: the members to add as they are: config.json's (with
        their runtime changes), then the servers registered at runtime.
    @ivar to_start: the managed servers to spawn (they join once ready).
    """

    members: Tuple[MemberSpec, ...]
    to_start: Tuple[ServerRecord, ...]


def overlay(config_backends: Sequence[Any], state: Optional[State]) -> Overlay:
    """
    config.json's backends (L{heimdall.config.model.BackendConfig}s) with
    C{state}'s changes, additions and removals (None: a first start).
    """
    removed = set(state.config_removed) if state is not None else set()
    config_ids = {entry.backend.id for entry in config_backends}
    members: List[MemberSpec] = []
    for entry in config_backends:
        backend, backup, admin, limit = entry.backend, entry.backup, AdminState.READY, entry.max_connections
        if backend.id in removed:
            _log.info("config backend {id} stays removed (removed through the manager)", id=backend.id)
            continue
        change = state.change_for(backend.id) if state is not None else None
        if change is not None:
            if change.weight is not None:
                backend = attrs.evolve(backend, weight=change.weight)
            if change.admin is not None:
                admin = AdminState(change.admin)
            if change.backup is not None:
                backup = change.backup
            if change.max_connections is not None:
                limit = change.max_connections
        members.append(MemberSpec(backend, admin, backup, limit, from_config=True))
    if state is None:
        return Overlay(tuple(members), ())
    for stale in removed - config_ids:
        _log.info("state file: config backend {id} is no longer in the config; ignored", id=stale)
    seen = {spec.id for spec in members} | config_ids
    to_start: List[ServerRecord] = []
    for record in state.servers:
        if record.id in seen:
            _log.info("state file: {id} is in the config now; the config's entry is used", id=record.id)
            continue
        seen.add(record.id)
        if record.managed:
            to_start.append(record)
        else:
            members.append(MemberSpec(record.backend, AdminState(record.admin), record.backup, record.max_connections))
    return Overlay(tuple(members), tuple(to_start))


def snapshot_state(
    members: Iterable[Tuple[Any, Any]], config_entries: Mapping[str, Any], strategy: Optional[Mapping[str, Any]]
) -> State:
    """
    The state file's content for a pool: C{members} are C{(member,
    server_info)} pairs (L{heimdall.pool.pool.Member},
    L{heimdall.manager.servers.ServerInfo}); C{config_entries} config.json's
    backends by id; C{strategy} the one set at runtime, if any.  Weights are
    the configured ones, never a slow-start ramp's.
    """
    servers: List[ServerRecord] = []
    changes: List[ConfigChange] = []
    present = set()
    for member, info in members:
        present.add(member.id)
        weight = member.backend.weight
        config_entry = config_entries.get(member.id)
        if config_entry is not None and not info.managed:
            change = ConfigChange(
                member.id,
                weight=weight if weight != config_entry.backend.weight else None,
                admin=member.admin.value if member.admin is not AdminState.READY else None,
                backup=info.backup if info.backup != config_entry.backup else None,
                max_connections=(
                    member.max_connections if member.max_connections != config_entry.max_connections else None
                ),
            )
            if not change.is_empty:
                changes.append(change)
            continue
        servers.append(ServerRecord(
            member.backend.url, weight, info.backup, member.admin.value, info.managed, member.max_connections
        ))
    removed = tuple(backend_id for backend_id in config_entries if backend_id not in present)
    return State(tuple(servers), tuple(changes), removed, strategy)
