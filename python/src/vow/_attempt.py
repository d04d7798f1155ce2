"""One leased attempt: runs its handler, maps what happened to an outcome, and
reports it (Complete, on the worker's event loop), or leaves it to the lease's
fate when the outcome would be refused anyway.

The mapping mirrors the Rust worker: a cancel that was requested completes
CANCELLED; a handler failing after its deadline completes DEADLINE_EXCEEDED
(`ATTEMPT_TIMEOUT`); a `TaskError` carries its own code; any other exception
is INTERNAL with the exception's type and message; a lost lease or a lease
released at shutdown completes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeAlias

import grpc
from google.rpc import status_pb2

from vow import _tracing
from vow._payload import to_payload
from vow._retry import RETRYABLE_CODES
from vow.context import Cancelled, CancelReason, Context
from vow.errors import TaskError, VowError, status_code
from vow.types import Task, to_datetime
from vow.v1 import task_pb2, worker_service_pb2

LOG = logging.getLogger("vow.worker")

# How long a Complete is retried while the server is unreachable.
COMPLETE_RETRY_BOUND_SECONDS = 60.0
# Codes after which repeating the same Complete is safe and may succeed: those `_retry` retries,
# and a deadline that fell while the answer was on its way.
TRANSIENT_CODES = RETRYABLE_CODES | {grpc.StatusCode.DEADLINE_EXCEEDED}
SPAN_NAME = "task.handle"

Outcome: TypeAlias = task_pb2.Payload | status_pb2.Status


class Attempt:
    """A lease and its handler run. Only the worker's event loop changes its lease state;
    `claim` also guards it against the drain."""

    def __init__(self, lease: worker_service_pb2.Lease, client: Any, worker_id: str, on_progress: Callable[[], None]):
        self.lease = lease
        self.token = lease.token
        now_wall, now = time.time(), time.monotonic()
        lease_left = _seconds_until(lease.expire_time, now_wall) if lease.HasField("expire_time") else 3.0
        self.heartbeat_interval = max(0.1, lease_left / 3)
        """Renew at a third of the lease, as the lease contract asks."""
        self.expires_at = now + lease_left
        self.next_heartbeat = now + self.heartbeat_interval
        self.last_heartbeat = now
        self.heartbeat_timer: asyncio.TimerHandle | None = None
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.deadline_at: float | None = None
        deadline: datetime | None = None
        if lease.HasField("attempt_deadline"):
            deadline = to_datetime(lease.attempt_deadline)
            self.deadline_at = now + _seconds_until(lease.attempt_deadline, now_wall)
        self.lock = threading.Lock()
        self.state = "running"  # -> "finishing" | "released"
        self.runner: asyncio.Task[None] | None = None
        """The worker's task that runs the handler and completes the attempt."""
        self.context = Context(
            Task(lease.task),
            deadline=deadline,
            deadline_monotonic=self.deadline_at,
            traceparent=lease.traceparent,
            tracestate=lease.tracestate,
            worker_id=worker_id,
            client=client,
            on_progress=on_progress,
        )

    def claim(self, new_state: str) -> bool:
        """Moves a running attempt to `new_state`; False if the handler's end or the drain came first."""
        with self.lock:
            if self.state != "running":
                return False
            self.state = new_state
            return True

    def span_attributes(self) -> dict[str, Any]:
        task = self.lease.task
        return {"task.id": task.id, "task.kind": task.kind, "task.attempt": task.attempt}

    def outcome(self, value: Any, error: BaseException | None) -> Outcome | None:
        """What to report for the handler's return `value` or raised `error`; None to report nothing."""
        reason = self.context.cancel_reason
        if reason in (CancelReason.LEASE_LOST, CancelReason.SHUTDOWN):
            return None
        if reason is CancelReason.CANCEL_REQUESTED:
            return TaskError("CANCELLED", "cancelled", reason="CANCELLED").to_status()
        if error is None:
            try:
                return to_payload(value)
            except (TypeError, ValueError) as unencodable:
                error = TaskError("INTERNAL", f"the output cannot be sent: {unencodable}", reason="OUTPUT_NOT_ENCODABLE")
        if reason is CancelReason.DEADLINE:
            return TaskError("DEADLINE_EXCEEDED", "the attempt deadline passed", reason="ATTEMPT_TIMEOUT").to_status()
        return status_of(error)

    async def complete(self, workers: Any, metadata: Sequence[tuple[str, str]], outcome: Outcome) -> Task | None:
        """Sends the outcome, retrying while the server is unreachable; the task after it, or None."""
        if isinstance(outcome, task_pb2.Payload):
            request = worker_service_pb2.CompleteRequest(token=self.token, output=outcome)
        else:
            request = worker_service_pb2.CompleteRequest(token=self.token, error=outcome)
        give_up_at = time.monotonic() + COMPLETE_RETRY_BOUND_SECONDS
        backoff = 0.1
        while True:
            try:
                response = await workers.Complete(request, timeout=10.0, metadata=metadata)
                return Task(response.task)
            except grpc.RpcError as rpc_error:
                error = VowError.from_rpc_error(rpc_error)
            if error.code not in TRANSIENT_CODES or time.monotonic() + backoff > give_up_at:
                # A lost lease, or an outcome the server refused: nothing more to do here.
                LOG.warning("task %s: Complete failed: %s (reason %s)", self.lease.task.id, error, error.reason or "-")
                return None
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 5.0)


def status_of(error: BaseException) -> status_pb2.Status:
    """The `google.rpc.Status` of what a handler raised."""
    if isinstance(error, TaskError):
        return error.to_status()
    if isinstance(error, Cancelled):
        # raise_if_cancelled() for a reason outcome() did not already settle: a deadline.
        return TaskError("DEADLINE_EXCEEDED", "the attempt deadline passed", reason="ATTEMPT_TIMEOUT").to_status()
    name = type(error).__name__
    message = f"{name}: {error}" if str(error) else name
    return TaskError("INTERNAL", message, reason="HANDLER_ERROR", metadata={"exception": name}).to_status()


def run_sync(attempt: Attempt, handler: Callable[[Context], Any], tracer_provider: Any) -> Outcome | None:
    """Runs a plain handler in this thread, inside its span; returns the outcome to report."""
    with _tracing.handler_span(
        SPAN_NAME, attempt.lease.traceparent, attempt.lease.tracestate, attempt.span_attributes(), tracer_provider
    ) as span:
        value, error = None, None
        try:
            value = handler(attempt.context)
        except Exception as raised:  # noqa: BLE001 - every handler failure becomes an outcome
            error = raised
        outcome = attempt.outcome(value, error)
        _mark_span(span, outcome, error)
    return outcome


async def run_async(attempt: Attempt, handler: Callable[[Context], Any], tracer_provider: Any) -> Outcome | None:
    """Runs an `async def` handler on the running loop, inside its span; returns the outcome to report."""
    with _tracing.handler_span(
        SPAN_NAME, attempt.lease.traceparent, attempt.lease.tracestate, attempt.span_attributes(), tracer_provider
    ) as span:
        value, error = None, None
        try:
            value = await handler(attempt.context)
        except Exception as raised:  # noqa: BLE001 - every handler failure becomes an outcome
            error = raised
        outcome = attempt.outcome(value, error)
        _mark_span(span, outcome, error)
    return outcome


def _mark_span(span: Any, outcome: Outcome | None, error: BaseException | None) -> None:
    if span is None:
        return
    if error is not None:
        span.record_exception(error)
    if isinstance(outcome, status_pb2.Status):
        _tracing.mark_error(span, status_code(outcome.code).name, outcome.message)


def _seconds_until(timestamp: Any, now_wall: float) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9 - now_wall

