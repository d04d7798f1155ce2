"""vow.Client against a real vowd: submit, get, await, watch, cancel, run, delete, and refused calls."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from support import SETTLE_SECONDS, wait_until

import vow
from vow import TaskState, WatchEventType


def test_submit_then_await_returns_the_finished_task(client: vow.Client) -> None:
    submitted = client.submit("echo", {"hello": "world", "n": [1, 2.5, None, True]})

    task = client.await_(submitted.id, timeout=SETTLE_SECONDS)

    assert submitted.state in (TaskState.QUEUED, TaskState.RUNNING, TaskState.SUCCEEDED)
    assert task.done and task.state is TaskState.SUCCEEDED
    assert task.output == {"hello": "world", "n": [1, 2.5, None, True]}
    assert task.attempt == 1
    assert task.error is None


def test_bytes_input_comes_back_as_bytes(client: vow.Client) -> None:
    task = client.submit("echo", b"\x00\x01raw", content_type="application/x-test")

    finished = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert finished.output == b"\x00\x01raw"
    assert finished.proto.output.content_type == "application/x-test"


def test_submit_options_reach_the_task(client: vow.Client) -> None:
    task = client.submit(
        "sleep",
        {"ms": 10_000},
        labels={"team": "python"},
        priority=7,
        max_attempts=2,
        attempt_timeout=30,
        ttl=60,
        idempotency_key="python-options-1",
    )
    try:
        again = client.submit(
            "sleep",
            {"ms": 10_000},
            labels={"team": "python"},
            priority=7,
            max_attempts=2,
            attempt_timeout=30,
            ttl=60,
            idempotency_key="python-options-1",
        )

        assert again.id == task.id, "the same key and request name the same task"
        assert task.labels == {"team": "python"}
        assert task.priority == 7
        assert task.max_attempts == 2
        assert task.proto.attempt_timeout.seconds == 30
        assert task.deadline is not None
    finally:
        client.cancel(task.id)


def test_get_shows_the_task_before_and_after_it_finishes(client: vow.Client) -> None:
    task = client.submit("sleep", {"ms": 10_000})

    before = client.get(task.id)
    client.cancel(task.id, reason="the test is done with it")
    finished = client.await_(task.id, timeout=SETTLE_SECONDS)
    after = client.get(task.id)

    assert before.state in (TaskState.QUEUED, TaskState.RUNNING)
    assert before.input == {"ms": 10_000}
    assert finished.done and after.state is TaskState.CANCELLED
    assert after.revision == finished.revision > before.revision


def test_await_at_its_bound_returns_the_unfinished_task(client: vow.Client) -> None:
    task = client.submit("sleep", {"ms": 10_000})
    try:
        started = time.monotonic()
        answer = client.await_(task.id, timeout=0.3)
        elapsed = time.monotonic() - started

        assert not answer.done
        assert answer.state in (TaskState.QUEUED, TaskState.RUNNING)
        # The bound is the call's deadline; generous slack for the Get a late answer falls back to.
        assert elapsed < SETTLE_SECONDS
    finally:
        client.cancel(task.id)


def test_cancel_stops_a_running_task(client: vow.Client) -> None:
    task = client.submit("sleep", {"ms": 10_000})
    wait_until(lambda: client.get(task.id).state is TaskState.RUNNING, "the sleep to start")

    acknowledged = client.cancel(task.id, reason="no longer needed")
    finished = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert acknowledged.cancel_requested or acknowledged.state is TaskState.CANCELLED
    assert finished.state is TaskState.CANCELLED
    assert finished.error is not None and finished.error.code is grpc.StatusCode.CANCELLED


def test_watch_yields_snapshot_changes_then_the_terminal_change(client: vow.Client) -> None:
    task = client.submit("sleep", {"ms": 600})

    events = list(client.watch(task.id, timeout=SETTLE_SECONDS))

    first, *changes = events
    assert first.type is WatchEventType.SNAPSHOT and first.task is not None
    assert changes and all(event.type is WatchEventType.CHANGE for event in changes)
    revisions = [event.task.revision for event in events if event.task is not None]
    assert revisions == list(range(revisions[0], revisions[0] + len(revisions)))
    assert changes[-1].task is not None and changes[-1].task.state is TaskState.SUCCEEDED
    assert any(event.task is not None and event.task.progress for event in changes), "progress arrives as changes"


def test_watch_resumes_after_a_revision_without_gap(client: vow.Client) -> None:
    task = client.submit("sleep", {"ms": 2000, "steps": 20})
    with client.watch(task.id, timeout=SETTLE_SECONDS) as first:
        seen = [next(first)]
        while not (seen[-1].task and seen[-1].task.progress):
            seen.append(next(first))
        k = first.last_revision
    wait_until(lambda: client.get(task.id).revision >= k + 2, "changes while nobody watches")

    replayed = list(client.watch(task.id, after_revision=k, timeout=SETTLE_SECONDS))

    assert replayed[0].type is WatchEventType.CHANGE, "a replay, not a snapshot or a resync"
    assert replayed[0].task is not None and replayed[0].task.revision == k + 1
    assert replayed[-1].task is not None and replayed[-1].task.state is TaskState.SUCCEEDED


def test_watch_ends_quietly_at_its_timeout(client: vow.Client) -> None:
    task = client.submit("sleep", {"ms": 10_000})
    try:
        events = list(client.watch(task.id, timeout=0.5))

        assert events and events[0].type is WatchEventType.SNAPSHOT
        assert not any(event.task is not None and event.task.done for event in events)
    finally:
        client.cancel(task.id)


def test_run_returns_the_finished_task(client: vow.Client) -> None:
    task = client.run("echo", {"via": "run"}, timeout=SETTLE_SECONDS)

    assert task.state is TaskState.SUCCEEDED
    assert task.output == {"via": "run"}


def test_delete_forgets_a_finished_task(client: vow.Client) -> None:
    task = client.await_(client.submit("echo", 1).id, timeout=SETTLE_SECONDS)

    client.delete(task.id)

    with pytest.raises(vow.VowError) as raised:
        client.get(task.id)
    assert raised.value.code is grpc.StatusCode.NOT_FOUND


def test_unknown_kind_raises_invalid_argument_naming_the_field(client: vow.Client) -> None:
    with pytest.raises(vow.VowError) as raised:
        client.submit("no-such-kind", {})

    error = raised.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "kind" in error.field_violations
    assert error.domain == "vow" and error.reason
    assert "echo" in error.message, "the message names the known kinds"


@pytest.mark.parametrize("call", ["get", "await_", "cancel"])
def test_malformed_id_raises_invalid_argument_on_field_id(client: vow.Client, call: str) -> None:
    with pytest.raises(vow.VowError) as raised:
        getattr(client, call)("not-a-task-id")

    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "id" in raised.value.field_violations


def test_unknown_id_raises_not_found(client: vow.Client) -> None:
    with pytest.raises(vow.VowError) as raised:
        client.get("0123456789abcdef0123456789abcdef")

    assert raised.value.code is grpc.StatusCode.NOT_FOUND
    assert raised.value.domain == "vow"


def test_watch_of_an_unknown_task_raises_not_found(client: vow.Client) -> None:
    with pytest.raises(vow.VowError) as raised:
        list(client.watch("0123456789abcdef0123456789abcdef", timeout=SETTLE_SECONDS))

    assert raised.value.code is grpc.StatusCode.NOT_FOUND


def test_an_input_json_cannot_carry_fails_before_any_call(client: vow.Client) -> None:
    with pytest.raises(TypeError, match="set"):
        client.submit("echo", {1, 2})


def test_a_failed_task_is_not_an_exception(client: vow.Client) -> None:
    task = client.submit("fail", {"code": "INVALID_ARGUMENT", "message": "the input is wrong"})

    finished = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert finished.state is TaskState.FAILED and finished.attempt == 1
    assert finished.error is not None
    assert finished.error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert finished.error.message == "the input is wrong"
    assert finished.error.domain == "vow"


def test_unreachable_server_raises_unavailable() -> None:
    with vow.Client("127.0.0.1:1", retries=1) as unreachable:
        with pytest.raises(vow.VowError) as raised:
            unreachable.get("0123456789abcdef0123456789abcdef", timeout=5)

    assert raised.value.code is grpc.StatusCode.UNAVAILABLE


def test_await_many_all_returns_every_finished_task_and_the_unknown_ids(client: vow.Client) -> None:
    tasks = [client.submit("echo", n) for n in range(3)]
    unknown = "0123456789abcdef0123456789abcdef"

    answer = client.await_many([task.id for task in tasks] + [unknown], timeout=SETTLE_SECONDS)

    assert answer.done
    assert sorted(task.output for task in answer.finished) == [0, 1, 2]
    assert answer.not_found_ids == (unknown,)
    assert (answer.summary.succeeded, answer.summary.not_found, answer.summary.unfinished) == (3, 1, 0)


def test_await_many_any_returns_once_one_is_done(client: vow.Client) -> None:
    slow = client.submit("sleep", {"ms": 10_000})
    try:
        quick = client.submit("echo", "first")

        answer = client.await_many([slow.id, quick.id], any_=True, timeout=SETTLE_SECONDS)

        assert answer.done
        assert [task.id for task in answer.finished] == [quick.id]
        assert answer.summary.unfinished == 1
    finally:
        client.cancel(slow.id)


def test_await_many_at_its_bound_is_not_done(client: vow.Client) -> None:
    slow = client.submit("sleep", {"ms": 10_000})
    try:
        answer = client.await_many([slow.id], timeout=0.3)

        assert not answer.done and not answer.finished
    finally:
        client.cancel(slow.id)


def test_list_filters_by_label_newest_first_in_pages(client: vow.Client) -> None:
    label = {"list-test": str(time.monotonic_ns())}
    ids = [client.submit("echo", n, labels=label).id for n in range(3)]

    first = client.list(labels=label, page_size=2)
    second = client.list(labels=label, page_size=2, page_token=first.next_page_token)

    listed = [*first.tasks, *second.tasks]
    assert sorted(task.id for task in listed) == sorted(ids)
    assert len(first.tasks) == 2 and first.next_page_token and not second.next_page_token
    times = [task.create_time for task in listed]
    assert times == sorted(times, reverse=True), "newest first"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda client: client.await_many(["not-a-task-id"], timeout=1), "ids[0]"),
        (lambda client: client.list(page_size=-1), "page_size"),
        (lambda client: client.list(page_token="garbage"), "page_token"),
        (lambda client: client.submit("echo", None, priority=10**6), "priority"),
        (lambda client: client.submit("echo", None, ttl=-5), "ttl"),
    ],
    ids=["await-many-id", "page-size", "page-token", "priority", "ttl"],
)
def test_bad_arguments_name_the_field(client: vow.Client, call: Any, field: str) -> None:
    with pytest.raises(vow.VowError) as raised:
        call(client)

    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.field_violations, raised.value.field_violations


def test_list_and_watch_filter_by_state(client: vow.Client) -> None:
    label = {"state-filter-test": str(time.monotonic_ns())}
    with client.watch(labels=label, states=[TaskState.SUCCEEDED], timeout=SETTLE_SECONDS) as watch:
        task = client.submit("echo", "x", labels=label)
        change = next(watch)
    client.await_(task.id, timeout=SETTLE_SECONDS)

    succeeded = client.list(labels=label, states=[TaskState.SUCCEEDED])
    failed = client.list(labels=label, states=[TaskState.FAILED, TaskState.CANCELLED])

    assert change.task is not None and change.task.id == task.id and change.task.state is TaskState.SUCCEEDED
    assert [listed.id for listed in succeeded.tasks] == [task.id]
    assert failed.tasks == ()
