"""
The config loader against random and mutated JSON (hypothesis): whatever
the file holds, loading it either gives a Config or raises ConfigError
naming a field path; never another exception (a traceback at start).

Seeded (derandomize) with a fixed number of examples, so a run is the
same every time and takes a few seconds.  The seeds are heimdall's own
configs: config.json and the JSON examples in the README and docs.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heimdall.config.model import Config, load_config, parse_config
from heimdall.config.reader import loads
from heimdall.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
_SETTINGS = settings(
    derandomize=True,
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _valid_seeds():
    texts = [(ROOT / "config.json").read_text()]
    for doc in [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if doc.exists():
            texts += re.findall(r"```json\n(.*?)```", doc.read_text(), re.S)
    seeds = []
    for text in texts:
        try:
            data = json.loads(text)
            parse_config(loads(text))
        except (ValueError, ConfigError):
            continue  # a fragment, not a whole config
        if isinstance(data, dict):
            seeds.append(data)
    return seeds


SEEDS = _valid_seeds()


def _key_names():
    names = set()

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                names.add(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for seed in SEEDS:
        walk(seed)

    def fields(cls, seen):
        if cls in seen or not attrs.has(cls):
            return
        seen.add(cls)
        for field in attrs.fields(cls):
            names.add(field.name)
            if isinstance(field.type, type):
                fields(field.type, seen)

    fields(Config, set())
    for value in [Config()]:
        for name in attrs.fields_dict(type(value)):
            section = getattr(value, name)
            if attrs.has(type(section)):
                fields(type(section), set())
    return sorted(names)


KEYS = _key_names()

# Values a field might plausibly get wrong: edge numbers, durations and
# sizes with odd units, endpoint strings, URLs.
_TRICKY = st.sampled_from(
    [
        0, -1, 1, 65535, 65536, 2**31, 2**64, 10**400, -(10**30), 0.5, 1e308, -0.0, 1e-320,
        "", " ", "0", "-1s", "1e9h", "500ms", "1.5KiB", "10 MiB", "99999999999999999999d", "nan", "inf",
        "tcp:0", "tcp:99999", "ssl:8443", "ssl:0:privateKey=/nonexistent", "unix:", "systemd:domain=X",
        "tcp:80:backlog=x", "tcp:80:interface=::1:extra=1", "tcp6:1:interface=\\:\\:1", "unix:/tmp/x:mode=9",
        "http://127.0.0.1:1", "https://[::1]:0/", "http://", "gopher://x", "http://u@h:1", "http://h:99999",
        "round_robin", "weighted", "least_connections", "ip_hash", "random", "\u0000", "\ud800"[:0] + "\u202e",
        [], {}, [None], {"": None}, True, False, None,
    ]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12) | _TRICKY,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))


def _get(value, path):
    for step in path:
        value = value[step]
    return value


@st.composite
def mutated_configs(draw):
    data = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(data))
        path = draw(st.sampled_from(paths))
        target = _get(data, path)
        op = draw(st.sampled_from(["replace", "delete", "rename", "insert", "wrap", "stringify"]))
        if not path:
            if op in ("insert", "delete", "rename", "replace") and isinstance(data, dict):
                data[draw(st.sampled_from(KEYS))] = draw(_JSON)
            continue
        parent, last = _get(data, path[:-1]), path[-1]
        if op == "replace":
            parent[last] = draw(_JSON)
        elif op == "delete":
            del parent[last]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS) | st.text(max_size=10))] = parent.pop(last)
        elif op == "insert" and isinstance(target, dict):
            target[draw(st.sampled_from(KEYS))] = draw(_JSON)
        elif op == "wrap":
            parent[last] = [target] if draw(st.booleans()) else {draw(st.sampled_from(KEYS)): target}
        elif op == "stringify":
            parent[last] = json.dumps(target) if not isinstance(target, str) else draw(_TRICKY)
    return data


def _only_config_errors(load, what):
    try:
        config = load(what)
    except ConfigError as e:
        assert e.path and isinstance(e.path, str), e
        assert e.problem
        return None
    assert isinstance(config, Config)
    return config


def test_the_seeds_are_valid_configs():
    assert len(SEEDS) >= 3
    for seed in SEEDS:
        assert isinstance(parse_config(loads(json.dumps(seed))), Config)


@_SETTINGS
@given(mutated_configs())
def test_mutated_configs_raise_only_config_errors(data):
    _only_config_errors(lambda d: parse_config(loads(json.dumps(d))), data)


@_SETTINGS
@given(_JSON)
def test_random_json_raises_only_config_errors(data):
    _only_config_errors(lambda d: parse_config(loads(json.dumps(d))), data)


@_SETTINGS
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_file_text_raises_only_config_errors(tmp_path_factory, seed, data):
    text = json.dumps(seed, indent=1)
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(text)), st.integers(0, 3), st.text(max_size=3)), max_size=3))
    for at, cut, insert in edits:
        text = text[:at] + insert + text[at + cut :]
    encoding = data.draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_bytes(text.encode(encoding, errors="replace"))
    _only_config_errors(lambda p: load_config(str(p)), path)
