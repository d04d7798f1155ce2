"""End-to-end tests of vow.v1.TaskService through vow_client, against a real vowd."""

import time

import grpc
import pytest

from vow_client import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL_STATES,
    error_info,
    field_violations,
    from_payload,
    output_of,
)

# Generous bound on anything that should finish at once, for a loaded CI machine.
SETTLE_SECONDS = 10


def test_echo_submit_then_await_returns_the_input(client):
    task = client.submit("echo", {"hello": "world", "n": [1, 2.5, None, True]})

    answer = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert answer.done
    assert answer.task.id == task.id
    assert answer.task.state == SUCCEEDED
    assert output_of(answer.task) == {"hello": "world", "n": [1, 2.5, None, True]}
    assert answer.task.attempt == 1


def test_get_shows_the_task_before_and_after_it_finishes(client):
    task = client.submit("sleep", {"ms": 5000})

    before = client.get(task.id)
    assert before.state in (QUEUED, RUNNING)
    assert from_payload(before.input) == {"ms": 5000}

    client.cancel(task.id, reason="test is done with it")
    finished = client.await_(task.id, timeout=SETTLE_SECONDS)
    after = client.get(task.id)

    assert finished.done
    assert after.state == CANCELLED
    assert after.revision == finished.task.revision > before.revision


def test_get_of_a_finished_echo_is_stable(client):
    task = client.submit("echo", "plain string")
    finished = client.await_(task.id, timeout=SETTLE_SECONDS).task

    assert client.get(task.id) == finished
    assert output_of(finished) == "plain string"


def test_await_answers_not_done_before_the_call_deadline(client):
    task = client.submit("sleep", {"ms": 10_000})
    try:
        started = time.monotonic()
        answer = client.await_(task.id, timeout=0.3)
        elapsed = time.monotonic() - started

        assert not answer.done
        assert answer.task.state not in TERMINAL_STATES
        assert elapsed < 0.3
    finally:
        client.cancel(task.id)


def test_await_with_a_request_timeout_answers_not_done(client):
    task = client.submit("sleep", {"ms": 10_000})
    try:
        answer = client.await_(task.id, wait=0.2, timeout=SETTLE_SECONDS)

        assert not answer.done
        assert answer.task.state in (QUEUED, RUNNING)
    finally:
        client.cancel(task.id)


@pytest.mark.parametrize("call", ["get", "await_", "cancel"])
def test_malformed_id_is_invalid_argument_on_field_id(client, call):
    with pytest.raises(grpc.RpcError) as raised:
        getattr(client, call)("not-a-task-id", timeout=SETTLE_SECONDS)

    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "id" in field_violations(error)
    assert error_info(error).domain == "vow"


def test_unknown_id_is_not_found(client):
    with pytest.raises(grpc.RpcError) as raised:
        client.get("0123456789abcdef0123456789abcdef")

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(raised.value).domain == "vow"


def test_unknown_kind_is_invalid_argument_naming_the_known_kinds(client):
    with pytest.raises(grpc.RpcError) as raised:
        client.submit("no-such-kind", {})

    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    for known in ("echo", "sleep", "fail"):
        assert known in error.details()
    assert "kind" in field_violations(error)


def test_non_retryable_handler_error_fails_the_task_after_one_attempt(client):
    task = client.submit("fail", {"code": "INVALID_ARGUMENT", "message": "the input is wrong"})

    answer = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert answer.done
    assert answer.task.state == FAILED
    assert answer.task.attempt == 1
    assert answer.task.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answer.task.error.message == "the input is wrong"
    info = error_info(answer.task.error)
    assert info is not None and info.domain == "vow"


def test_run_returns_the_finished_task(client):
    task = client.run("echo", {"via": "run"}, timeout=SETTLE_SECONDS)

    assert task.state == SUCCEEDED
    assert output_of(task) == {"via": "run"}


def test_cancel_stops_a_running_sleep(client):
    task = client.submit("sleep", {"ms": 10_000})

    client.cancel(task.id, reason="no longer needed")
    answer = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert answer.done
    assert answer.task.state == CANCELLED
