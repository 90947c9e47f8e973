"""
The one strict JSON reader: for the config file, the manager's state file
and the manager API's request bodies.

JSON documents come in as plain data; this module reads their objects
against the keys the reader knows, and reports the first problem with the
field's path (C{timeouts.connect}, C{backends[0].url}, C{servers[2]}).

The API, in the order a document is read:

  - L{loads}C{(text, reject_constants=False)}: C{json.loads} whose objects
    are L{StrictObject}s, which remember the keys given twice (the json
    module keeps the last value silently).  With C{reject_constants},
    C{NaN}/C{Infinity} are a C{ValueError} (C{"NaN is not valid JSON"}).
  - L{entries}C{(data, path, known, comments=True, also_ignored=())}: the
    C{(key, value, key_path)} of an object in document order.  An unknown
    key is an L{UnknownKey}, a key given twice a L{DuplicateKey}, a
    non-string key a L{ReadError}; each is raised when its key comes, so
    that the first problem in the document is the one reported.  With
    C{comments}, keys starting with C{_} are skipped (the config file's
    comments); C{also_ignored} names more keys to skip (C{"$schema"}).
  - L{read_object}C{(data, path, known, required=(), comments=False)}: the
    same, checked to be an object first and collected into a C{dict};
    then every C{required} key must be there (C{"is required"}).
  - L{read_list}C{(data, path, problem="must be a list")}.
  - L{build}C{(cls, values, path, base=None)}: C{cls(**values)} (or
    C{attrs.evolve(base, **values)}); a validator's L{ConfigError} gets
    C{path} put in front of its own path, a C{TypeError}/C{ValueError}
    becomes a L{ReadError} at C{path} with the exception's text.
  - L{structure}C{(cls, data, path, also_ignored=())}: an attrs value from
    a JSON object whose keys are its field names, each field converted
    and validated as it comes (first error in document order).  A field
    whose JSON shape differs from its value's says how to read it in its
    metadata: C{metadata={FROM_JSON: lambda value, path: ...}}.
  - L{closest}C{(word, candidates)} and L{suggestion}: the did-you-mean,
    compared in lower case (C{"JSON"} suggests C{"json"}).
  - L{join}C{(path, child)} and L{json_type}C{(value)} (C{"a list"}) for
    messages.

Errors: L{ReadError} is a L{ConfigError} (C{path}, C{problem}, and
C{str()} is C{"path: problem"}); the config raises it as it is, the state
file and the manager API turn it into their own errors.  L{UnknownKey}
also carries C{key}, C{known} and C{suggestion} (or L{None}), for a reader
that words the message its own way.  The messages::

    timeouts.conect: unknown key; did you mean "connect"?
    upstream.pool: unknown key; known keys: max_idle_per_backend
    timeouts.connect: duplicate key
    servers: must be a list
    servers[0].url: is required

Hand-written rather than C{cattrs} (C{forbid_extra_keys},
C{transform_error}): cattrs reports every extra key of an object at once,
without the document order or the did-you-mean, in its own wording
(C{extra fields found (x) @ $.timeouts}); keeping today's messages would
take a hook per case, more code than this module, and a new dependency.
"""

from __future__ import annotations

import difflib
import json
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import attrs

from heimdall.errors import ConfigError

__all__ = [
    "FROM_JSON",
    "DuplicateKey",
    "ReadError",
    "StrictObject",
    "UnknownKey",
    "build",
    "closest",
    "entries",
    "join",
    "json_type",
    "loads",
    "read_list",
    "read_object",
    "reject_constant",
    "structure",
    "suggestion",
]

#: attrs metadata key: how a field's JSON value becomes its value (see
#: L{structure}); called as C{from_json(value, key_path)}.
FROM_JSON = "heimdall.config.reader.from_json"


class ReadError(ConfigError):
    """
    A JSON document does not have the shape its reader expects.
    """


class UnknownKey(ReadError):
    """
    An object has a key its reader does not know.

    @ivar key: the key as given.
    @ivar known: the keys the reader knows, in their order.
    @ivar suggestion: the known key closest to C{key}, or L{None}.
    """

    def __init__(self, path: str, key: str, known: Sequence[str]) -> None:
        self.key = key
        self.known = list(known)
        self.suggestion = closest(key, self.known)
        if self.suggestion is not None:
            problem = f'unknown key; did you mean "{self.suggestion}"?'
        else:
            problem = f"unknown key; known keys: {', '.join(self.known)}"
        super().__init__(path, problem)


class DuplicateKey(ReadError):
    """
    An object has a key twice.  C{path} is the key's path.
    """

    def __init__(self, path: str, key: str) -> None:
        self.key = key
        super().__init__(path, "duplicate key")


class StrictObject(dict):
    """
    A JSON object that remembers which keys appeared more than once.
    """

    duplicate_keys: frozenset = frozenset()

    @classmethod
    def from_pairs(cls, pairs: List[Tuple[str, Any]]) -> "StrictObject":
        result = cls(pairs)
        if len(result) != len(pairs):
            seen: set = set()
            duplicates = set()
            for key, _ in pairs:
                (duplicates if key in seen else seen).add(key)
            result.duplicate_keys = frozenset(duplicates)
        return result


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str, reject_constants: bool = False) -> Any:
    """
    C{json.loads(text)} with L{StrictObject}s for objects.

    @raise json.JSONDecodeError: for text that is not JSON.
    @raise ValueError: for C{NaN}, C{Infinity}, C{-Infinity} if
        C{reject_constants}.
    """
    options: Dict[str, Any] = {"object_pairs_hook": StrictObject.from_pairs}
    if reject_constants:
        options["parse_constant"] = reject_constant
    return json.loads(text, **options)


def closest(word: object, candidates: Iterable[str]) -> Optional[str]:
    """
    The candidate closest to C{word}, compared in lower case, or L{None}.
    """
    if not isinstance(word, str):
        return None
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return by_lower[close[0]] if close else None


def suggestion(word: object, candidates: Iterable[str]) -> str:
    """
    C{'; did you mean "x"?'} for the closest candidate, or C{""}.
    """
    close = closest(word, candidates)
    return f'; did you mean "{close}"?' if close is not None else ""


def join(path: str, child: str) -> str:
    """
    C{join("a", "b") == "a.b"}, C{join("a", "[0]") == "a[0]"}, C{join("", "b") == "b"};
    an empty key is named C{[""]}, so that an error about it still has a path.
    """
    if not child:
        child = '[""]'
    if not path:
        return child
    return f"{path}{child}" if child.startswith("[") else f"{path}.{child}"


def json_type(value: object) -> str:
    """
    What C{value} is, in JSON's words: C{"an object"}, C{"a list"}, ...
    """
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else type(value).__name__


def entries(
    data: Mapping,
    path: str,
    known: Iterable[str],
    comments: bool = True,
    also_ignored: Iterable[str] = (),
) -> Iterator[Tuple[str, Any, str]]:
    """
    The C{(key, value, key path)} of C{data} in document order, without
    ignored keys; unknown and duplicate keys are errors, raised as they
    come.
    """
    known = list(known)
    ignored = frozenset(also_ignored)
    duplicates = getattr(data, "duplicate_keys", frozenset())
    for key, value in data.items():
        if not isinstance(key, str):
            raise ReadError(path, f"keys must be strings, not {key!r}")
        if comments and key.startswith("_") or key in ignored:
            continue
        key_path = join(path, key)
        if key not in known:
            raise UnknownKey(key_path, key, known)
        if key in duplicates:
            raise DuplicateKey(key_path, key)
        yield key, value, key_path


def read_object(
    data: object,
    path: str,
    known: Iterable[str],
    required: Iterable[str] = (),
    comments: bool = False,
    problem: str = "must be an object",
) -> Dict[str, Any]:
    """
    The entries of the JSON object C{data} as a dict (see L{entries});
    each C{required} key must be there.
    """
    if not isinstance(data, Mapping):
        raise ReadError(path, problem)
    values = {key: value for key, value, _ in entries(data, path, known, comments)}
    for key in required:
        if key not in values:
            raise ReadError(join(path, key), "is required")
    return values


def read_list(data: object, path: str, problem: str = "must be a list") -> list:
    if not isinstance(data, list):
        raise ReadError(path, problem)
    return data


def build(cls: Callable[..., Any], values: Mapping[str, Any], path: str, base: Any = None) -> Any:
    """
    C{cls(**values)}, or C{attrs.evolve(base, **values)}, with a failing
    validator's path put under C{path}.
    """
    try:
        return attrs.evolve(base, **values) if base is not None else cls(**values)
    except ConfigError as e:
        raise ReadError(join(path, e.path) if e.path else path, e.problem) from None
    except (TypeError, ValueError) as e:
        raise ReadError(path, str(e)) from None


def structure(cls: type, data: object, path: str, also_ignored: Iterable[str] = ()) -> Any:
    """
    Build the attrs class C{cls} from a JSON object whose keys are its
    field names (keys starting with C{_} are comments), reporting the
    first problem in document order with its full path.
    """
    if not isinstance(data, Mapping):
        raise ReadError(path, "must be an object")
    fields = attrs.fields_dict(cls)
    values = {}
    for key, value, key_path in entries(data, path, fields, also_ignored=also_ignored):
        field = fields[key]
        from_json = field.metadata.get(FROM_JSON)
        if from_json is not None:
            value = from_json(value, key_path)
        if field.converter is not None:
            value = field.converter(value)
        # Check each field as it comes, so the first error in the document
        # is the one reported.
        if field.validator is not None:
            try:
                field.validator(None, field, value)
            except ConfigError as e:
                raise ReadError(join(path, e.path), e.problem) from None
        values[key] = value
    return build(cls, values, path)
