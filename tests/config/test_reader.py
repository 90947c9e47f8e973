"""
L{heimdall.config.reader}: the one strict JSON reader, on its own (the
config, the state file and the manager API each test their messages too).
"""

from __future__ import annotations

import json

import attrs
import pytest

from heimdall.config import fields
from heimdall.config.reader import (
    FROM_JSON,
    DuplicateKey,
    ReadError,
    StrictObject,
    UnknownKey,
    build,
    closest,
    entries,
    join,
    json_type,
    loads,
    read_list,
    read_object,
    structure,
    suggestion,
)
from heimdall.errors import ConfigError


@attrs.frozen
class Inner:
    port: int = attrs.field(default=1, validator=fields.validator(fields.integer(1, 9)))


@attrs.frozen
class Outer:
    name: str = attrs.field(default="x", validator=fields.validator(fields.text))
    inner: Inner = attrs.field(
        factory=Inner,
        validator=fields.validator(fields.instance_of(Inner, "an Inner")),
        metadata={FROM_JSON: lambda value, path: structure(Inner, value, path)},
    )


def error_of(function, *args, **kwargs) -> ReadError:
    with pytest.raises(ReadError) as caught:
        function(*args, **kwargs)
    return caught.value


def test_unknown_key_with_a_suggestion():
    error = error_of(read_object, {"wieght": 1}, "servers[0]", ("url", "weight"))
    assert isinstance(error, UnknownKey) and isinstance(error, ConfigError)
    assert str(error) == 'servers[0].wieght: unknown key; did you mean "weight"?'
    assert (error.path, error.key, error.known, error.suggestion) == ("servers[0].wieght", "wieght", ["url", "weight"], "weight")


def test_unknown_key_without_a_suggestion_lists_the_known_keys():
    error = error_of(read_object, {"zzz": 1}, "", ("url", "weight"))
    assert str(error) == "zzz: unknown key; known keys: url, weight"
    assert error.suggestion is None


def test_duplicate_key():
    data = loads('{"a": 1, "b": 2, "a": 3}')
    assert isinstance(data, StrictObject) and data.duplicate_keys == {"a"}
    error = error_of(read_object, data, "top", ("a", "b"))
    assert isinstance(error, DuplicateKey)
    assert str(error) == "top.a: duplicate key"


def test_the_first_problem_in_document_order_is_reported():
    data = loads('{"b": 1, "zzz": 2, "b": 3}')
    assert str(error_of(read_object, data, "", ("b",))) == "b: duplicate key"


def test_wrong_types():
    assert str(error_of(read_object, [], "document", ("a",))) == "document: must be an object"
    assert str(error_of(read_list, {}, "servers")) == "servers: must be a list"
    assert str(error_of(read_list, 3, "servers", "must be a list of URLs")) == "servers: must be a list of URLs"
    assert str(error_of(read_object, {1: 2}, "x", ("a",))) == "x: keys must be strings, not 1"
    assert str(error_of(structure, Outer, {"name": ""}, "")) == "name: must be a non-empty string"


def test_required_keys():
    assert str(error_of(read_object, {}, "servers[2]", ("url",), required=("url",))) == "servers[2].url: is required"


def test_nested_field_path():
    error = error_of(structure, Outer, loads('{"inner": {"port": 10}}'), "")
    assert (error.path, error.problem) == ("inner.port", "must be an integer from 1 to 9")
    error = error_of(structure, Outer, {"inner": {"prot": 1}}, "outer")
    assert str(error) == 'outer.inner.prot: unknown key; did you mean "port"?'
    assert structure(Outer, {"inner": {"port": 3}, "_comment": "ignored"}, "") == Outer(inner=Inner(3))


def test_comments_and_ignored_keys():
    data = {"_note": 1, "$schema": "s", "a": 2}
    assert list(entries(data, "", ("a",), also_ignored=("$schema",))) == [("a", 2, "a")]
    # Only where comments are allowed (the config; not the state file or the API).
    assert str(error_of(read_object, {"_note": 1}, "", ("a",))).startswith("_note: unknown key")
    assert read_object({"_note": 1}, "", ("a",), comments=True) == {}


def test_build_puts_the_path_in_front():
    assert str(error_of(build, Inner, {"port": 0}, "servers[1]")) == "servers[1].port: must be an integer from 1 to 9"
    assert build(Inner, {"port": 2}, "") == Inner(2)
    assert build(Inner, {"port": 4}, "", base=Inner(2)) == Inner(4)

    def refuse(**values):
        raise ValueError("weight must be an integer")

    assert str(error_of(build, refuse, {}, "servers[0]")) == "servers[0]: weight must be an integer"


def test_loads_constants():
    assert loads("NaN") != loads("NaN")  # accepted unless refused
    with pytest.raises(ValueError, match="^NaN is not valid JSON$"):
        loads('{"a": NaN}', reject_constants=True)
    with pytest.raises(json.JSONDecodeError):
        loads("{")


def test_suggestions_and_helpers():
    assert closest("JSON", ["text", "json"]) == "json"
    assert closest("zzz", ["text", "json"]) is None
    assert closest(3, ["text"]) is None
    assert suggestion("lisn", ["listen"]) == '; did you mean "listen"?'
    assert suggestion("zzz", ["listen"]) == ""
    assert (join("", "a"), join("a", "b"), join("a", "[0]")) == ("a", "a.b", "a[0]")
    assert [json_type(v) for v in ({}, [], "", True, 1, None)] == [
        "an object", "a list", "a string", "a boolean", "a number", "null"
    ]
