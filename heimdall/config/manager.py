"""
The manager's config section: its listening address, the servers it may
spawn and how it restarts them, its token and its state file.  A part of
L{heimdall.config.model.Config} (C{manager}), kept apart so that the model
stays one screenful per section.
"""

from __future__ import annotations

from typing import Optional, Tuple

import attrs

from heimdall.config.fields import (
    duration,
    endpoint_field,
    integer,
    one_of,
    optional_text,
    section,
    text,
    tuple_from_list,
    validator,
)
from heimdall.errors import ConfigError

__all__ = ["ManagerConfig", "RestartConfig"]


def _check_command(instance, attribute, value) -> None:
    if value is None:
        return
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, 'must be a list of strings with a "{port}" placeholder, or null')
    if not value:
        raise ConfigError(attribute.name, "must not be empty (use null for the built-in demo backend)")
    for index, argument in enumerate(value):
        if not isinstance(argument, str):
            raise ConfigError(f"{attribute.name}[{index}]", "must be a string")
    if not any("{port}" in argument for argument in value):
        raise ConfigError(attribute.name, 'must contain "{port}" in at least one argument')


def _ready_path(value) -> Optional[str]:
    if value is None or isinstance(value, str) and value.startswith("/") and " " not in value:
        return None
    return 'must be a path starting with "/" (like "/health"), or null for a TCP connect'


@attrs.frozen
class RestartConfig:
    """
    What the manager does when a server it spawned exits on its own.

    @ivar policy: C{"always"} restarts it, C{"on-failure"} only when it
        exited with a non-zero status or a signal, C{"never"} leaves it down.
    @ivar backoff: the delay before the first restart; each further
        restart in a row waits twice as long as the one before.
    @ivar max_backoff: the longest delay between two restarts.
    @ivar max_restarts: restarts in a row after which the manager gives up
        (the server stays down until removed); 0 means never give up.
    @ivar reset_after: a server that stayed up this long is healthy again:
        its next exit starts from C{backoff} and a count of 0.
    """

    policy: str = attrs.field(default="always", validator=validator(one_of("always", "on-failure", "never")))
    backoff: float = duration(1.0)
    max_backoff: float = duration(30.0)
    max_restarts: int = attrs.field(default=0, validator=validator(integer(0, 1000000)))
    reset_after: float = duration(60.0)

    def __attrs_post_init__(self) -> None:
        if self.max_backoff < self.backoff:
            raise ConfigError("max_backoff", f"must not be less than backoff ({self.backoff:g} s)")


@attrs.frozen
class ManagerConfig:
    """
    The manager: its own listening address, the local backend processes
    it may spawn, and where it keeps runtime changes across restarts.

    @ivar command: the argv of a spawned backend, with C{{port}} in at
        least one argument; L{None} for the built-in demo backend.
    @ivar drain_timeout: seconds a draining backend is given to finish its
        requests; 0 removes it at once.
    @ivar token: a bearer token the manager requires, or L{None}.
    @ivar token_env: the name of an environment variable holding it.
        Only one of the two may be set.
    @ivar ready_path: a spawned server is ready once C{GET ready_path}
        answers 2xx; L{None}: once its port accepts a connection.
    @ivar ready_timeout: how long a spawned server has to become ready.
    @ivar stop_grace: seconds between SIGTERM and SIGKILL when a spawned
        server is stopped.
    @ivar restart: what happens when a spawned server exits on its own.
    """

    listen: str = endpoint_field("tcp:9090:interface=127.0.0.1")
    base_port: int = attrs.field(default=8081, validator=validator(integer(1, 65535)))
    port_range: int = attrs.field(default=1000, validator=validator(integer(1, 10000)))
    host: str = attrs.field(default="127.0.0.1", validator=validator(text))
    command: Optional[Tuple[str, ...]] = attrs.field(default=None, converter=tuple_from_list, validator=_check_command)
    drain_timeout: float = duration(30.0, allow_zero=True)
    state_file: str = attrs.field(default="heimdall-state.json", validator=validator(text))
    # Kept out of repr so that logging the config does not log the secret.
    token: Optional[str] = attrs.field(default=None, validator=validator(optional_text), repr=False)
    token_env: Optional[str] = attrs.field(default=None, validator=validator(optional_text))
    ready_path: Optional[str] = attrs.field(default="/health", validator=validator(_ready_path))
    ready_timeout: float = duration(10.0)
    stop_grace: float = duration(5.0, allow_zero=True)
    restart: RestartConfig = section(RestartConfig, "a RestartConfig")

    def __attrs_post_init__(self) -> None:
        last_port = self.base_port + self.port_range - 1
        if last_port > 65535:
            raise ConfigError(
                "port_range",
                f"base_port + port_range reaches port {last_port}, beyond 65535",
            )
        if self.token is not None and self.token_env is not None:
            raise ConfigError("token_env", "set token or token_env, not both")


