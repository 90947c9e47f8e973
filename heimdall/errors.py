"""
Exceptions heimdall raises across module boundaries.
"""

from __future__ import annotations


class HeimdallError(Exception):
    """
    Base class of heimdall's own errors.
    """


class NoBackendAvailable(HeimdallError):
    """
    A strategy was asked to pick from a set with no eligible backend.
    The proxy answers 503.
    """


class BackendsBusy(NoBackendAvailable):
    """
    Every backend that may get the request is at its C{max_connections}:
    the request may wait in its service's queue, else it gets 503.
    """


class BackendTlsError(HeimdallError):
    """
    The TLS handshake with a backend failed or timed out (its certificate
    was rejected, it wanted a client certificate, it speaks no TLS...).
    The proxy treats it as a connect failure: 502, and a failure against
    the backend.  C{str(error)} says why, e.g. C{TLS handshake failed:
    certificate verify failed: unable to get local issuer certificate}.
    """


class ConfigError(HeimdallError):
    """
    The configuration is invalid.  C{str(error)} names the field path and
    the problem, e.g. C{backends[1].url: scheme must be http or https}.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class StrategyOptionError(ConfigError):
    """
    A strategy factory rejected one of its options.  C{path} is the option
    name; the config loader prefixes it with C{strategy.}.
    """


class UnknownStrategy(HeimdallError):
    """
    No strategy factory is registered under that name.
    """

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"unknown strategy {name!r}; known strategies: {', '.join(sorted(known))}"
        )


class DuplicateStrategy(HeimdallError):
    """
    A strategy factory is already registered under that name.
    """


# -- the server manager's domain errors ----------------------------------------
# The manager API (heimdall.manager.api) is the one place that turns them
# into HTTP statuses; C{message} and C{detail} are what it shows.


class ManagerError(HeimdallError):
    """
    The server manager refused a lookup or a change.

    @ivar message: one line for a person.
    @ivar detail: JSON-ready data naming what was wrong (or None).
    """

    def __init__(self, message: str, detail: object = None) -> None:
        self.message = message
        self.detail = detail
        super().__init__(message)


class ServiceNotFound(ManagerError):
    """
    No service has the name given (C{?service=}).
    """


class ServerNotFound(ManagerError):
    """
    No server matches the id or port given.
    """


class AmbiguousServer(ManagerError):
    """
    A port alone names several servers (on different hosts).
    """


class InvalidChange(ManagerError):
    """
    A change that cannot be made as asked (a URL that is not one, a port
    outside the spawn range).
    """


class ServerConflict(ManagerError):
    """
    The change collides with the current state: the server or its port is
    registered already, or it is being removed.
    """


class NoSpawnPort(ManagerError):
    """
    Every port of the spawn range is taken: try again later.
    """


class ServerDidNotStart(ManagerError):
    """
    A spawned server exited, timed out or failed its ready check.
    """


class ManagerStopping(ManagerError):
    """
    heimdall is shutting down and takes no more changes.
    """


class StateNotSaved(ManagerError):
    """
    The change was applied but could not be written to the state file.
    """


class NotAuthenticated(ManagerError):
    """
    A manager request lacks the bearer token or carries a wrong one.
    """


class ConfigRejected(ManagerError):
    """
    A reload found the config file invalid (C{detail} names the field path
    and the problem) or could not apply it (a port that cannot be bound);
    the running config stays.
    """


class ReloadUnavailable(ManagerError):
    """
    heimdall was not started from a config file (embedded), so there is
    nothing to reload.
    """
