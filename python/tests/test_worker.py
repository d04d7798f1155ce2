"""vow.Worker against a real vowd: outputs, error mapping and retries, progress, async handlers."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
from support import SETTLE_SECONDS, new_worker

import vow
from vow import TaskState


def test_a_handler_output_completes_the_task(client: vow.Client, run_worker: Any) -> None:
    worker = new_worker(client, worker_id="python-test-echo")

    @worker.handler("py-echo")
    def echo(ctx: vow.Context) -> Any:
        return {"echoed": ctx.input, "attempt": ctx.attempt}

    with run_worker(worker):
        tasks = [client.submit("py-echo", {"n": n}) for n in range(20)]
        finished = [client.await_(task.id, timeout=SETTLE_SECONDS) for task in tasks]

    assert [task.state for task in finished] == [TaskState.SUCCEEDED] * 20
    assert [task.output for task in finished] == [{"echoed": {"n": n}, "attempt": 1} for n in range(20)]
    assert {task.worker_id for task in finished} == {"python-test-echo"}


def test_bytes_in_bytes_out(client: vow.Client, run_worker: Any) -> None:
    worker = new_worker(client)
    worker.register("py-bytes", lambda ctx: bytes(reversed(ctx.input)))

    with run_worker(worker):
        task = client.await_(client.submit("py-bytes", b"abc").id, timeout=SETTLE_SECONDS)

    assert task.output == b"cba"


def test_async_handlers_run_on_an_event_loop(client: vow.Client, run_worker: Any) -> None:
    worker = new_worker(client, concurrency=4)
    loops: set[int] = set()

    @worker.handler("py-async")
    async def double(ctx: vow.Context) -> int:
        loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.01)
        return ctx.input * 2

    with run_worker(worker):
        tasks = [client.submit("py-async", n) for n in range(8)]
        finished = [client.await_(task.id, timeout=SETTLE_SECONDS) for task in tasks]

    assert [task.output for task in finished] == [n * 2 for n in range(8)]
    assert len(loops) == 1


@pytest.mark.parametrize(
    ("raised", "code", "reason", "message"),
    [
        (vow.TaskError("INVALID_ARGUMENT", "no image", reason="BAD_IMAGE"), "INVALID_ARGUMENT", "BAD_IMAGE", "no image"),
        (vow.TaskError(grpc.StatusCode.NOT_FOUND, "gone"), "NOT_FOUND", "NOT_FOUND", "gone"),
        (vow.TaskError(9, "not now"), "FAILED_PRECONDITION", "FAILED_PRECONDITION", "not now"),
        (KeyError("image"), "INTERNAL", "HANDLER_ERROR", "KeyError: 'image'"),
    ],
)
def test_a_handler_exception_becomes_the_task_error(
    client: vow.Client, run_worker: Any, raised: Exception, code: str, reason: str, message: str
) -> None:
    worker = new_worker(client)

    @worker.handler("py-errors")
    def fail(ctx: vow.Context) -> None:
        raise raised

    with run_worker(worker):
        # One attempt only: INTERNAL would otherwise be retried.
        task = client.await_(client.submit("py-errors", {}, max_attempts=1).id, timeout=SETTLE_SECONDS)

    assert task.state is TaskState.FAILED
    assert task.error is not None
    assert task.error.code.name == code
    assert task.error.reason == reason
    assert task.error.message == message


def test_retryable_errors_are_retried_with_the_delay_asked_for(client: vow.Client, run_worker: Any) -> None:
    worker = new_worker(client)

    @worker.handler("py-retry")
    def flaky(ctx: vow.Context) -> str:
        if ctx.attempt == 1:
            raise vow.TaskError("UNAVAILABLE", "down", retry_after=0.2)
        if ctx.attempt == 2:
            raise RuntimeError("still down")  # INTERNAL: retried too
        return f"up on attempt {ctx.attempt}"

    retry = vow.Retry(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    with run_worker(worker):
        task = client.submit("py-retry", None, retry=retry)
        events = list(client.watch(task.id, timeout=SETTLE_SECONDS))

    last = events[-1].task
    assert last is not None and last.state is TaskState.SUCCEEDED
    assert last.output == "up on attempt 3" and last.attempt == 3
    waits = [event.task for event in events if event.task is not None and event.task.state is TaskState.RETRY_WAIT]
    assert [waiting.error.code.name for waiting in waits if waiting.error] == ["UNAVAILABLE", "INTERNAL"]
    # RetryInfo set the first wait: 0.2 s, where the policy alone allows at most 0.05 s.
    first_wait = waits[0].proto
    delay = first_wait.next_attempt_time.ToNanoseconds() - first_wait.update_time.ToNanoseconds()
    assert delay >= 150_000_000, first_wait


def test_a_non_retryable_code_ends_the_task_after_one_attempt(client: vow.Client, run_worker: Any) -> None:
    worker = new_worker(client)
    attempts: list[int] = []

    @worker.handler("py-retry")
    def refuse(ctx: vow.Context) -> None:
        attempts.append(ctx.attempt)
        raise vow.TaskError("PERMISSION_DENIED", "not yours")

    with run_worker(worker):
        task = client.await_(client.submit("py-retry", None, max_attempts=5).id, timeout=SETTLE_SECONDS)

    assert task.state is TaskState.FAILED and task.attempt == 1
    assert attempts == [1]


def test_progress_is_sent_with_the_next_heartbeat(client: vow.Client, run_worker: Any) -> None:
    worker = new_worker(client, lease_duration=3.0, progress_interval=0.2)
    seen = threading.Event()

    @worker.handler("py-progress")
    def slow(ctx: vow.Context) -> str:
        ctx.progress(50, "halfway")
        # Finishes once the test saw the report (bounded, in case it never comes).
        seen.wait(SETTLE_SECONDS)
        return "done"

    with run_worker(worker):
        task = client.submit("py-progress", None)
        progress = None
        for event in client.watch(task.id, timeout=SETTLE_SECONDS):
            if event.task is not None and event.task.progress is not None and progress is None:
                progress = event.task.progress
                seen.set()
        finished = client.get(task.id)

    assert progress == vow.Progress(50.0, "halfway")
    assert finished.state is TaskState.SUCCEEDED


def test_an_output_json_cannot_carry_fails_the_attempt(client: vow.Client, run_worker: Any) -> None:
    worker = new_worker(client)
    worker.register("py-unencodable", lambda ctx: {"a set": {1, 2}})

    with run_worker(worker):
        task = client.await_(client.submit("py-unencodable", None, max_attempts=1).id, timeout=SETTLE_SECONDS)

    assert task.state is TaskState.FAILED
    assert task.error is not None and task.error.reason == "OUTPUT_NOT_ENCODABLE"


def test_the_context_describes_the_attempt(client: vow.Client, run_worker: Any) -> None:
    worker = new_worker(client, worker_id="python-context")
    seen: dict[str, Any] = {}

    @worker.handler("py-context")
    def describe(ctx: vow.Context) -> None:
        seen.update(
            id=ctx.id,
            kind=ctx.kind,
            labels=dict(ctx.labels),
            max_attempts=ctx.max_attempts,
            deadline=ctx.deadline,
            time_left=ctx.time_left(),
            worker_id=ctx.worker_id,
            cancelled=ctx.cancelled.is_set(),
        )

    with run_worker(worker):
        task = client.submit("py-context", None, labels={"a": "b"}, max_attempts=2, attempt_timeout=60)
        client.await_(task.id, timeout=SETTLE_SECONDS)

    assert seen["id"] == task.id and seen["kind"] == "py-context"
    assert seen["labels"] == {"a": "b"} and seen["max_attempts"] == 2
    assert seen["deadline"] is not None and 0 < seen["time_left"] <= 60
    assert seen["worker_id"] == "python-context" and not seen["cancelled"]


def test_a_worker_of_an_undeclared_kind_raises_invalid_argument(client: vow.Client) -> None:
    worker = new_worker(client)
    worker.register("not-declared-remote", lambda ctx: None)

    with pytest.raises(vow.VowError) as raised:
        worker.run(install_signal_handlers=False)

    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "kinds[0]" in raised.value.field_violations


def test_registering_a_kind_twice_is_refused(client: vow.Client) -> None:
    worker = new_worker(client)
    worker.register("py-echo", lambda ctx: None)

    with pytest.raises(ValueError, match="py-echo"):
        worker.register("py-echo", lambda ctx: None)



def test_a_stopped_worker_can_run_again(client: vow.Client, run_worker: Any) -> None:
    worker = new_worker(client)
    worker.register("py-echo", lambda ctx: ctx.input)

    outputs = []
    for run in range(2):
        with run_worker(worker):
            outputs.append(client.await_(client.submit("py-echo", run).id, timeout=SETTLE_SECONDS).output)

    assert outputs == [0, 1]
