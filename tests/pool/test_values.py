"""
L{heimdall.pool.values}: the kind enums keep today's words.
"""

from __future__ import annotations

import json

from heimdall.pool.values import BACKEND_FAILURES, EventKind, FailureKind, Outcome, PoolEvent


def test_kinds_print_compare_and_serialise_as_their_words():
    assert [kind.value for kind in FailureKind] == [
        "connect", "reset", "timeout", "bad_response", "client_gone", "body_too_large",
    ]  # fmt: skip
    assert str(FailureKind.CONNECT) == f"{FailureKind.CONNECT}" == "connect"
    assert f"{EventKind.ALL_DOWN:>9}" == " all_down"
    assert EventKind.UP == "up" and hash(EventKind.UP) == hash("up")
    assert json.dumps({EventKind.DOWN: [FailureKind.RESET]}) == '{"down": ["reset"]}'


def test_pool_events_convert_words_and_outcomes_judge_backend_failures():
    assert PoolEvent("down", "a:1", 0.0).kind is EventKind.DOWN
    assert {FailureKind.CONNECT, FailureKind.RESET, FailureKind.TIMEOUT, FailureKind.BAD_RESPONSE} == BACKEND_FAILURES
    assert Outcome(failure=FailureKind.TIMEOUT).is_backend_failure
    assert Outcome(failure="reset").is_backend_failure  # a plain word still works
    assert not Outcome(failure=FailureKind.CLIENT_GONE).is_backend_failure
    assert not Outcome(status=200).is_backend_failure
