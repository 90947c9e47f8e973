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
