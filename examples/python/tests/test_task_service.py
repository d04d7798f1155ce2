"""End-to-end tests of vow.v1.TaskService through the `vow` package, against a real vowd."""

import time

import grpc
import pytest

import vow
from vow import TaskState

# Generous bound on anything that should finish at once, for a loaded CI machine.
SETTLE_SECONDS = 10


def test_echo_submit_then_await_returns_the_input(client):
    task = client.submit("echo", {"hello": "world", "n": [1, 2.5, None, True]})

    finished = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert finished.done
    assert finished.id == task.id
    assert finished.state is TaskState.SUCCEEDED
    assert finished.output == {"hello": "world", "n": [1, 2.5, None, True]}
    assert finished.attempt == 1


def test_get_shows_the_task_before_and_after_it_finishes(client):
    task = client.submit("sleep", {"ms": 5000})

    before = client.get(task.id)
    assert before.state in (TaskState.QUEUED, TaskState.RUNNING)
    assert before.input == {"ms": 5000}

    client.cancel(task.id, reason="test is done with it")
    finished = client.await_(task.id, timeout=SETTLE_SECONDS)
    after = client.get(task.id)

    assert finished.done
    assert after.state is TaskState.CANCELLED
    assert after.revision == finished.revision > before.revision


def test_get_of_a_finished_echo_is_stable(client):
    task = client.submit("echo", "plain string")
    finished = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert client.get(task.id).proto == finished.proto
    assert finished.output == "plain string"


def test_await_answers_not_done_before_the_call_deadline(client):
    task = client.submit("sleep", {"ms": 10_000})
    try:
        started = time.monotonic()
        answer = client.await_(task.id, timeout=0.3)
        elapsed = time.monotonic() - started

        assert not answer.done
        assert not answer.state.terminal
        # vowd answers a margin before the deadline (5 to 100 ms); a Get covers a late answer.
        assert elapsed < SETTLE_SECONDS
    finally:
        client.cancel(task.id)


@pytest.mark.parametrize("call", ["get", "await_", "cancel"])
def test_malformed_id_is_invalid_argument_on_field_id(client, call):
    with pytest.raises(vow.VowError) as raised:
        getattr(client, call)("not-a-task-id")

    error = raised.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "id" in error.field_violations
    assert error.domain == "vow"


def test_unknown_id_is_not_found(client):
    with pytest.raises(vow.VowError) as raised:
        client.get("0123456789abcdef0123456789abcdef")

    assert raised.value.code is grpc.StatusCode.NOT_FOUND
    assert raised.value.domain == "vow"


def test_unknown_kind_is_invalid_argument_naming_the_known_kinds(client):
    with pytest.raises(vow.VowError) as raised:
        client.submit("no-such-kind", {})

    error = raised.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    for known in ("echo", "sleep", "fail"):
        assert known in error.message
    assert "kind" in error.field_violations


def test_non_retryable_handler_error_fails_the_task_after_one_attempt(client):
    task = client.submit("fail", {"code": "INVALID_ARGUMENT", "message": "the input is wrong"})

    finished = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert finished.done
    assert finished.state is TaskState.FAILED
    assert finished.attempt == 1
    assert finished.error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert finished.error.message == "the input is wrong"
    assert finished.error.domain == "vow"


def test_run_returns_the_finished_task(client):
    task = client.run("echo", {"via": "run"}, timeout=SETTLE_SECONDS)

    assert task.state is TaskState.SUCCEEDED
    assert task.output == {"via": "run"}


def test_cancel_stops_a_running_sleep(client):
    task = client.submit("sleep", {"ms": 10_000})

    client.cancel(task.id, reason="no longer needed")
    finished = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert finished.done
    assert finished.state is TaskState.CANCELLED
