"""How a running handler hears it should stop: a cancel (from the next heartbeat) and its attempt deadline."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
from support import SETTLE_SECONDS, new_worker

import vow
from vow import CancelReason, TaskState

# Heartbeats every second (a third of the lease): a cancel reaches the handler with the first one after it.
LEASE_SECONDS = 3.0
HEARTBEAT_SECONDS = LEASE_SECONDS / 3
# What a loaded machine may add to the heartbeat's round trip and the handler's wake-up.
SCHEDULING_SLACK_SECONDS = 0.75


def test_a_cancel_reaches_the_handler_within_one_heartbeat(client: vow.Client, run_worker: Any) -> None:
    worker = new_worker(client, lease_duration=LEASE_SECONDS)
    started = threading.Event()
    heard: dict[str, Any] = {}

    @worker.handler("py-cancel")
    def wait_for_cancel(ctx: vow.Context) -> None:
        started.set()
        if ctx.cancelled.wait(SETTLE_SECONDS):
            heard.update(at=time.monotonic(), reason=ctx.cancel_reason)
        ctx.raise_if_cancelled()

    with run_worker(worker):
        task = client.submit("py-cancel", None)
        assert started.wait(SETTLE_SECONDS), "the handler started"
        cancelled_at = time.monotonic()
        client.cancel(task.id, reason="the test asks")
        finished = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert heard["reason"] is CancelReason.CANCEL_REQUESTED
    # Within one heartbeat interval of the Cancel (plus scheduling slack), well before the lease's end.
    assert heard["at"] - cancelled_at < HEARTBEAT_SECONDS + SCHEDULING_SLACK_SECONDS
    assert finished.state is TaskState.CANCELLED
    assert finished.attempt == 1


def test_the_attempt_deadline_fires_the_cancellation(client: vow.Client, run_worker: Any) -> None:
    worker = new_worker(client, lease_duration=LEASE_SECONDS)
    heard: dict[str, Any] = {}

    @worker.handler("py-deadline")
    def overrun(ctx: vow.Context) -> None:
        heard["deadline"] = ctx.deadline
        if ctx.cancelled.wait(SETTLE_SECONDS):
            heard.update(reason=ctx.cancel_reason, time_left=ctx.time_left())
        ctx.raise_if_cancelled()

    with run_worker(worker):
        task = client.submit("py-deadline", None, attempt_timeout=0.5, max_attempts=1)
        finished = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert heard["deadline"] is not None
    assert heard["reason"] is CancelReason.DEADLINE
    assert heard["time_left"] <= 0
    assert finished.state is TaskState.FAILED
    assert finished.error is not None and finished.error.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_an_async_handler_awaits_its_cancellation(client: vow.Client, run_worker: Any) -> None:
    worker = new_worker(client, lease_duration=LEASE_SECONDS)
    started = threading.Event()
    heard: dict[str, Any] = {}

    @worker.handler("py-async")
    async def wait_for_cancel(ctx: vow.Context) -> None:
        started.set()
        heard["fired"] = await ctx.wait_cancelled(timeout=SETTLE_SECONDS)
        heard["reason"] = ctx.cancel_reason
        ctx.raise_if_cancelled()

    with run_worker(worker):
        task = client.submit("py-async", None)
        assert started.wait(SETTLE_SECONDS), "the handler started"
        client.cancel(task.id)
        finished = client.await_(task.id, timeout=SETTLE_SECONDS)

    assert heard == {"fired": True, "reason": CancelReason.CANCEL_REQUESTED}
    assert finished.state is TaskState.CANCELLED
