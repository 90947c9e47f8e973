"""
The pool's values: a backend's identity (L{Backend}), its states
(L{AdminState}, L{Health}), what the proxy reports of a request
(L{Outcome} with a L{FailureKind}), what the health checks report
(L{CheckResult}), and the pool's events (L{PoolEvent} with an L{EventKind}).

The kinds are C{str} enums: they compare, hash, print and serialise as
their words (C{"connect"}, C{"down"}), which are the words of the metrics
labels, the alerts and the JSON interfaces.
"""

from __future__ import annotations

import enum
from typing import Any, Dict, Optional
from urllib.parse import urlsplit

import attrs

__all__ = [
    "AdminState",
    "BACKEND_FAILURES",
    "Backend",
    "CheckResult",
    "EventKind",
    "FailureKind",
    "Health",
    "Outcome",
    "PoolEvent",
]


class _Word(str, enum.Enum):
    """
    A C{str} enum that prints and formats as its value (Python 3.11 would
    print C{FailureKind.CONNECT}), so labels and messages keep their words.
    """

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)


class AdminState(enum.Enum):
    READY = "ready"
    DRAINING = "draining"
    MAINTENANCE = "maintenance"


class Health(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class FailureKind(_Word):
    """
    How a proxied request failed (L{Outcome.failure}).
    """

    #: The connection to the backend could not be opened.
    CONNECT = "connect"
    #: The connection closed or broke before the response ended.
    RESET = "reset"
    #: No response head within the response timeout.
    TIMEOUT = "timeout"
    #: A framing or syntax error in the response.
    BAD_RESPONSE = "bad_response"
    #: The client went away (not the backend's fault).
    CLIENT_GONE = "client_gone"
    #: The request body went over the limit (not the backend's fault).
    BODY_TOO_LARGE = "body_too_large"


#: The failure kinds that count against the backend.
BACKEND_FAILURES = frozenset({FailureKind.CONNECT, FailureKind.RESET, FailureKind.TIMEOUT, FailureKind.BAD_RESPONSE})


class EventKind(_Word):
    """
    What changed in the pool (L{PoolEvent.kind}).
    """

    ADDED = "added"
    REMOVED = "removed"
    UP = "up"
    DOWN = "down"
    EJECTED = "ejected"
    RETURNED = "returned"
    WEIGHT = "weight"
    ADMIN = "admin"
    #: Became a backup (detail C{"backup"}) or a primary (C{"primary"}).
    BACKUP = "backup"
    #: Its max_connections changed (detail: the new limit).
    LIMIT = "limit"
    #: No member is eligible any more (C{backend_id} is None).
    ALL_DOWN = "all_down"
    #: A member is eligible again after C{all_down} (C{backend_id} is None).
    RECOVERED = "recovered"


def _check_weight(instance, attribute, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 1000:
        raise ValueError(f"weight must be an integer from 0 to 1000, not {value!r}")


@attrs.frozen
class Backend:
    """
    A backend's identity and configuration.  Change it with C{attrs.evolve}.
    """

    scheme: str = attrs.field(validator=attrs.validators.in_(("http", "https")))
    host: str = attrs.field(validator=attrs.validators.instance_of(str))
    port: int = attrs.field(validator=attrs.validators.instance_of(int))
    weight: int = attrs.field(default=1, validator=_check_weight)

    @port.validator
    def _check_port(self, attribute, value):
        if isinstance(value, bool) or not 0 < value < 65536:
            raise ValueError(f"port must be from 1 to 65535, not {value!r}")

    @host.validator
    def _check_host(self, attribute, value):
        if not value:
            raise ValueError("host must not be empty")

    @classmethod
    def from_url(cls, url: str, weight: int = 1) -> "Backend":
        """
        Parse C{http://host:port}.  Raises L{ValueError} with a readable
        message for anything else (a path, a query, a user name).
        """
        if not isinstance(url, str):
            raise ValueError(f"must be a URL string, not {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError("scheme must be http or https")
        if not parts.hostname:
            raise ValueError("a host is required")
        if parts.username or parts.password:
            raise ValueError("user information is not supported")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must not have a path, query or fragment")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("port must be a number from 1 to 65535") from None
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        return cls(scheme=parts.scheme, host=parts.hostname, port=port, weight=weight)

    @property
    def id(self) -> str:
        """
        A stable identifier: C{host:port} (IPv6 hosts in brackets).
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.id}"


@attrs.frozen
class Outcome:
    """
    How one proxied request ended, as reported to the pool by the proxy.

    @ivar status: the upstream status code, if a response head arrived.
    @ivar failure: L{None} on success, else a L{FailureKind}.
    @ivar ttfb: seconds from the upstream request to the first response byte.
    @ivar ttlb: seconds from the upstream request to the last response byte.
    """

    status: Optional[int] = None
    failure: Optional[FailureKind] = None
    ttfb: Optional[float] = None
    ttlb: Optional[float] = None

    @property
    def is_backend_failure(self) -> bool:
        """
        Whether this outcome counts against the backend (a client that went
        away, or a body over the limit, does not).
        """
        return self.failure in BACKEND_FAILURES


@attrs.frozen
class CheckResult:
    """
    One active health check's result, as kept on the member.

    @ivar at: when the check started (the clock's seconds).
    @ivar ok: whether it passed.
    @ivar latency: seconds from its start to its result.
    @ivar detail: what happened, e.g. C{"HTTP 200"}, C{"connect refused"},
        C{"timeout after 1s"}, C{"HTTP 503 not in 200-399"}.
    """

    at: float
    ok: bool
    latency: float
    detail: str = ""

    @property
    def result(self) -> str:
        """
        C{"pass"} or C{"fail"}, for views that show a word.
        """
        return "pass" if self.ok else "fail"

    def as_dict(self) -> Dict[str, Any]:
        return {"at": self.at, "ok": self.ok, "latency": self.latency, "detail": self.detail}


@attrs.frozen
class PoolEvent:
    """
    A change in the pool, of an L{EventKind} (a word such as C{"down"} is
    converted).  C{detail} says why: the probe's detail for C{up}/C{down},
    the passive failures for C{ejected}, the URL for C{added}, the panic
    mode for C{all_down}.
    """

    kind: EventKind = attrs.field(converter=EventKind)
    backend_id: Optional[str]
    at: float
    detail: str = ""
    #: For C{up}/C{down}: the health before (C{"unknown"}, C{"up"},
    #: C{"down"}), so that a first confirmation can be told from a recovery.
    previous: Optional[str] = None
