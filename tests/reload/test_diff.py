"""
The pure diffs of a reload: two configs (services, routes, listeners,
what needs a restart) and a pool's members against the wanted ones.
"""

from __future__ import annotations

from heimdall.config.model import parse_config
from heimdall.manager.overlay import MemberSpec, overlay
from heimdall.manager.statefile import ConfigChange, ServerRecord, State
from heimdall.pool.pool import AdminState, Backend
from heimdall.reload.diff import MemberChange, diff_configs, diff_members


def _config(**data):
    return parse_config({"backends": ["http://127.0.0.1:8001"], **data})


def test_the_same_config_changes_nothing():
    diff = diff_configs(_config(), _config())
    assert diff.added_services == diff.removed_services == diff.changed_services == ()
    assert not diff.routes and diff.listeners == () and diff.restart_needed == ()


def test_services_added_removed_and_changed_in_config_order():
    old = _config(services={"a": {"backends": ["http://127.0.0.1:9001"]}, "b": {"backends": []}})
    new = _config(
        services={
            "c": {"backends": []},
            "a": {"backends": ["http://127.0.0.1:9002"], "strategy": "least_connections", "retries": 0},
            "d": {},
        },
        routes=[{"match": {"path_prefix": "/a"}, "service": "a"}],
    )
    diff = diff_configs(old, new)
    assert diff.added_services == ("c", "d")
    assert diff.removed_services == ("b",)
    assert [(c.name, c.settings, c.backends) for c in diff.changed_services] == [
        ("a", ("strategy", "retries"), True)
    ]
    assert diff.routes


def test_the_default_service_follows_the_top_level():
    diff = diff_configs(_config(), _config(backends=["http://127.0.0.1:8002"], strategy="random", retries=1))
    [change] = diff.changed_services
    assert (change.name, change.settings, change.backends) == ("default", ("strategy", "retries"), True)


def test_a_top_level_setting_a_service_inherits_changes_it():
    old = _config(services={"a": {}, "b": {"timeouts": {"response": "9s"}}})
    new = _config(timeouts={"response": "3s"}, services={"a": {}, "b": {"timeouts": {"response": "9s"}}})
    assert {c.name: c.settings for c in diff_configs(old, new).changed_services} == {
        "default": ("timeouts",), "a": ("timeouts",)
    }


def test_listeners_and_what_needs_a_restart():
    old = _config()
    new = _config(
        listen="tcp:8181:interface=127.0.0.1",
        manager={"listen": "tcp:9191:interface=127.0.0.1"},
        limits={"max_body_bytes": "1MB"},
        timeouts={"client_idle": "20s", "connect": "1s", "shutdown_grace": "5s"},
        access_log={"enabled": False},
    )
    diff = diff_configs(old, new)
    assert diff.listeners == ("listen",)
    # limits and client_idle apply on reload; these do not.
    assert diff.restart_needed == ("manager", "access_log", "timeouts.shutdown_grace")
    assert [c.settings for c in diff.changed_services] == [("timeouts",)]
    assert diff.as_dict()["restart_needed"] == ["manager", "access_log", "timeouts.shutdown_grace"]


def _spec(port, weight=1, **options):
    return MemberSpec(Backend("http", "127.0.0.1", port, weight), **options)


def test_members_added_removed_changed_and_kept():
    current = [_spec(1), _spec(2), _spec(3, backup=True)]
    wanted = [_spec(4), _spec(3, weight=5, max_connections=2), _spec(1, admin=AdminState.DRAINING)]
    diff = diff_members(current, wanted)
    assert [spec.id for spec in diff.added] == ["127.0.0.1:4"]
    assert diff.removed == ("127.0.0.1:2",)
    assert diff.kept == ("127.0.0.1:1", "127.0.0.1:3")
    assert diff.changed == (
        MemberChange("127.0.0.1:1", admin=AdminState.DRAINING),
        MemberChange("127.0.0.1:3", weight=5, backup=False, max_connections=2),
    )


def test_another_url_for_the_same_host_and_port_is_another_backend():
    diff = diff_members([_spec(1)], [MemberSpec(Backend("https", "127.0.0.1", 1))])
    assert diff.removed == ("127.0.0.1:1",)
    assert [spec.backend.scheme for spec in diff.added] == ["https"]
    assert diff.kept == ()


def test_runtime_changes_stay_on_top_of_the_new_config():
    """
    The overlay a reload uses is start-up's: the state's weight and
    removal win over the new file, runtime servers stay, spawned ones are
    left to run.
    """
    new = parse_config({"backends": [
        {"url": "http://127.0.0.1:1", "weight": 3}, "http://127.0.0.1:2", "http://127.0.0.1:5",
    ]}).backends
    state = State(
        servers=(ServerRecord("http://127.0.0.1:7", 2), ServerRecord("http://127.0.0.1:8", managed=True)),
        config_changes=(ConfigChange("127.0.0.1:1", weight=9),),
        config_removed=("127.0.0.1:2",),
    )
    layered = overlay(new, state)
    assert [(spec.id, spec.backend.weight, spec.from_config) for spec in layered.members] == [
        ("127.0.0.1:1", 9, True), ("127.0.0.1:5", 1, True), ("127.0.0.1:7", 2, False)
    ]
    assert [record.id for record in layered.to_start] == ["127.0.0.1:8"]
    current = [_spec(1, weight=9), _spec(2), _spec(7, weight=2)]
    diff = diff_members(current, layered.members)
    assert diff.removed == ("127.0.0.1:2",) and [s.id for s in diff.added] == ["127.0.0.1:5"]
    assert diff.changed == ()


def test_the_diffs_are_deterministic():
    def configs():
        return _config(services={"a": {}, "b": {}}), _config(services={"b": {"retries": 1}, "c": {}})

    diff = diff_configs(*configs())
    assert diff == diff_configs(*configs())  # the same from configs parsed again
    assert (diff.added_services, diff.removed_services) == (("c",), ("a",))
    assert [c.name for c in diff.changed_services] == ["b"]
    current, wanted = [_spec(p) for p in (5, 3, 1)], [_spec(p) for p in (2, 3, 4)]
    members = diff_members(current, wanted)
    assert members == diff_members([_spec(p) for p in (5, 3, 1)], [_spec(p) for p in (2, 3, 4)])
    # In the given orders (wanted for added, current for removed), not sorted.
    assert [spec.id for spec in members.added] == ["127.0.0.1:2", "127.0.0.1:4"]
    assert members.removed == ("127.0.0.1:5", "127.0.0.1:1") and members.kept == ("127.0.0.1:3",)
