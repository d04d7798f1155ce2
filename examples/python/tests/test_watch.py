"""Watch end to end through the `vow` package, against a real vowd: snapshot, progress, terminal, resume."""

import time

import pytest

import vow
from vow import TaskState, WatchEventType

# Bounds the watching of tasks that take well under a second; only turns a hang into a failure.
WATCH_TIMEOUT_SECONDS = 20


def assert_contiguous(revisions):
    """Each revision is the previous one plus one: in order, no gap, no duplicate."""
    assert revisions == list(range(revisions[0], revisions[0] + len(revisions))), revisions


def test_watch_streams_snapshot_progress_then_succeeded_and_ends(client):
    # vowd's default --progress-interval (100 ms) lets several of the 10 reports through.
    task = client.submit("sleep", {"ms": 600})

    events = list(client.watch(task.id, timeout=WATCH_TIMEOUT_SECONDS))

    first, *changes = events
    assert first.type is WatchEventType.SNAPSHOT
    assert first.task.id == task.id
    assert first.task.revision >= task.revision
    assert changes, "changes follow the snapshot"
    assert all(change.type is WatchEventType.CHANGE for change in changes)
    assert_contiguous([event.task.revision for event in events])

    percents = [
        change.task.progress.percent
        for change in changes
        if change.task.state is TaskState.RUNNING and change.task.progress and change.task.progress.percent > 0
    ]
    assert percents, [str(change.task.proto.progress) for change in changes]
    assert percents == sorted(percents), "progress never goes back"

    assert events[-1].task.state is TaskState.SUCCEEDED
    # The stream closes right after the terminal change: nothing is terminal before it.
    assert not any(event.task.done for event in events[:-1])


def test_watch_resumed_after_revision_k_continues_at_k_plus_one(client):
    # Long enough to still run when the second watch starts: the server replays
    # missed changes of a running task from its retained history.
    task = client.submit("sleep", {"ms": 2000, "steps": 20})

    seen = []
    with client.watch(task.id, timeout=WATCH_TIMEOUT_SECONDS) as first_watch:  # closed: the "broken" stream
        for event in first_watch:
            seen.append(event)
            if event.type is WatchEventType.CHANGE and event.task.progress and event.task.progress.percent > 0:
                break
    k = seen[-1].task.revision
    assert not seen[-1].task.done, "the first watch stopped before the end"
    # Let changes happen while nobody watches, so the resume has some to replay.
    wait_until(lambda: client.get(task.id).revision >= k + 2, f"task {task.id} to pass revision {k + 1}")

    replayed = list(client.watch(task.id, after_revision=k, timeout=WATCH_TIMEOUT_SECONDS))

    assert replayed[0].type is WatchEventType.CHANGE, "a replay, not a snapshot or a resync"
    assert replayed[0].task.revision == k + 1
    assert all(event.type is WatchEventType.CHANGE for event in replayed)
    assert_contiguous([event.task.revision for event in seen + replayed])
    assert replayed[-1].task.state is TaskState.SUCCEEDED


def test_watch_of_an_unknown_task_is_not_found(client):
    with pytest.raises(vow.VowError) as raised:
        list(client.watch("0123456789abcdef0123456789abcdef", timeout=WATCH_TIMEOUT_SECONDS))

    assert raised.value.code.name == "NOT_FOUND"


def wait_until(condition, what, bound=10.0):
    """Polls `condition` every 10 ms until it holds; fails after `bound` seconds."""
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {bound} s waiting for {what}"
        time.sleep(0.01)
