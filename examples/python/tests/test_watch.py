"""Watch end to end through vow_client, against a real vowd: snapshot, progress, terminal, resume."""

import time

import grpc
import pytest

from vow_client import CHANGE, RUNNING, SNAPSHOT, SUCCEEDED, TERMINAL_STATES

# Bounds the watching of tasks that take well under a second; only turns a hang into a failure.
WATCH_TIMEOUT_SECONDS = 20


def assert_contiguous(revisions):
    """Each revision is the previous one plus one: in order, no gap, no duplicate."""
    assert revisions == list(range(revisions[0], revisions[0] + len(revisions))), revisions


def test_watch_streams_snapshot_progress_then_succeeded_and_ends_ok(client):
    # vowd's default --progress-interval (100 ms) lets several of the 10 reports through.
    task = client.submit("sleep", {"ms": 600})

    call = client.watch(task.id, timeout=WATCH_TIMEOUT_SECONDS)
    events = list(call)

    assert call.code() == grpc.StatusCode.OK
    first, *changes = events
    assert first.type == SNAPSHOT
    assert first.task.id == task.id
    assert first.task.revision >= task.revision
    assert changes, "changes follow the snapshot"
    assert all(change.type == CHANGE for change in changes)
    assert_contiguous([event.task.revision for event in events])

    percents = [c.task.progress.percent for c in changes if c.task.state == RUNNING and c.task.progress.percent > 0]
    assert percents, [str(change.task.progress) for change in changes]
    assert percents == sorted(percents), "progress never goes back"

    assert events[-1].task.state == SUCCEEDED
    # The stream closes right after the terminal change: nothing is terminal before it.
    assert not any(event.task.state in TERMINAL_STATES for event in events[:-1])


def test_watch_resumed_after_revision_k_continues_at_k_plus_one(client):
    # Long enough to still run when the second watch starts: the server replays
    # missed changes of a running task from its retained history.
    task = client.submit("sleep", {"ms": 2000, "steps": 20})

    first_call = client.watch(task.id, timeout=WATCH_TIMEOUT_SECONDS)
    seen = []
    for event in first_call:
        seen.append(event)
        if event.type == CHANGE and event.task.progress.percent > 0:
            break
    first_call.cancel()  # the "broken" stream
    k = seen[-1].task.revision
    assert seen[-1].task.state not in TERMINAL_STATES, "the first watch stopped before the end"
    # Let changes happen while nobody watches, so the resume has some to replay.
    wait_until(lambda: client.get(task.id).revision >= k + 2, f"task {task.id} to pass revision {k + 1}")

    call = client.watch(task.id, after_revision=k, timeout=WATCH_TIMEOUT_SECONDS)
    replayed = list(call)

    assert call.code() == grpc.StatusCode.OK
    assert replayed[0].type == CHANGE, "a replay, not a snapshot or a resync"
    assert replayed[0].task.revision == k + 1
    assert all(event.type == CHANGE for event in replayed)
    assert_contiguous([event.task.revision for event in seen + replayed])
    assert replayed[-1].task.state == SUCCEEDED


def test_watch_of_an_unknown_task_is_not_found(client):
    call = client.watch("0123456789abcdef0123456789abcdef", timeout=WATCH_TIMEOUT_SECONDS)

    with pytest.raises(grpc.RpcError) as raised:
        list(call)

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def wait_until(condition, what, bound=10.0):
    """Polls `condition` every 10 ms until it holds; fails after `bound` seconds."""
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {bound} s waiting for {what}"
        time.sleep(0.01)
