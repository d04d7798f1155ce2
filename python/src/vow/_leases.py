"""Keeps the leases of running attempts alive, on the worker's event loop.

For each attempt a timer renews the lease at a third of its duration (sooner
when the handler reported progress, at most once per `progress_interval`),
sending the latest progress, and fires the handler's cancellation when a
heartbeat says `cancel_requested`, when the lease is lost, and at the attempt
deadline (a second timer). Timers rather than a task per attempt: most
attempts end before their first heartbeat, and a cancelled TimerHandle costs
next to nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc

from vow._attempt import Attempt
from vow.context import CancelReason
from vow.errors import VowError
from vow.types import Progress
from vow.v1 import task_pb2, worker_service_pb2

LOG = logging.getLogger("vow.worker")


class LeaseKeeper:
    """Heartbeats and deadline timers of the attempts between `watch` and `forget`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        workers: Any,
        metadata: Sequence[tuple[str, str]],
        progress_interval: float,
    ):
        self._loop = loop
        self._workers = workers
        self._metadata = metadata
        self._progress_interval = progress_interval
        self._watched: set[str] = set()
        self._beats: set[asyncio.Task[None]] = set()

    def watch(self, attempt: Attempt) -> None:
        """Starts renewing the attempt's lease and arms its deadline."""
        self._watched.add(attempt.token)
        self._arm(attempt)
        if attempt.deadline_at is not None:
            attempt.deadline_timer = self._loop.call_at(
                self._loop_time(attempt.deadline_at), attempt.context._cancel, CancelReason.DEADLINE
            )

    def forget(self, attempt: Attempt) -> None:
        """Stops renewing: the attempt completed, was released, or its lease is gone."""
        self._watched.discard(attempt.token)
        for timer in (attempt.heartbeat_timer, attempt.deadline_timer):
            if timer is not None:
                timer.cancel()
        attempt.heartbeat_timer = attempt.deadline_timer = None

    def progress_reported(self, attempt: Attempt) -> None:
        """From any thread: brings the next heartbeat forward, so progress shows within `progress_interval`."""
        self._loop.call_soon_threadsafe(self._bring_forward, attempt)

    async def wait_for_heartbeats(self) -> None:
        """Lets heartbeats in flight end (at shutdown, before the channel closes)."""
        if self._beats:
            await asyncio.wait(set(self._beats), timeout=5)

    def _bring_forward(self, attempt: Attempt) -> None:
        soonest = attempt.last_heartbeat + self._progress_interval
        if attempt.token in self._watched and attempt.heartbeat_timer is not None and soonest < attempt.next_heartbeat:
            attempt.next_heartbeat = soonest
            self._arm(attempt)

    def _arm(self, attempt: Attempt) -> None:
        if attempt.heartbeat_timer is not None:
            attempt.heartbeat_timer.cancel()
        attempt.heartbeat_timer = self._loop.call_at(self._loop_time(attempt.next_heartbeat), self._beat, attempt)

    def _beat(self, attempt: Attempt) -> None:
        attempt.heartbeat_timer = None
        if attempt.token not in self._watched:
            return
        beat = self._loop.create_task(self._send(attempt))
        self._beats.add(beat)
        beat.add_done_callback(self._beats.discard)

    async def _send(self, attempt: Attempt) -> None:
        progress = attempt.context._take_progress()
        request = worker_service_pb2.HeartbeatRequest(token=attempt.token)
        if progress is not None:
            request.progress.CopyFrom(task_pb2.Progress(percent=progress.percent, message=progress.message))
        sent_at = time.monotonic()
        try:
            response = await self._workers.Heartbeat(
                request, timeout=attempt.heartbeat_interval, metadata=self._metadata
            )
        except grpc.RpcError as rpc_error:
            self._failed(attempt, progress, VowError.from_rpc_error(rpc_error))
            return
        attempt.last_heartbeat = sent_at
        attempt.expires_at = sent_at + (response.expire_time.ToNanoseconds() / 1e9 - time.time())
        if response.cancel_requested:
            attempt.context._cancel(CancelReason.CANCEL_REQUESTED)
        if attempt.token in self._watched:
            attempt.next_heartbeat = sent_at + attempt.heartbeat_interval
            self._arm(attempt)

    def _failed(self, attempt: Attempt, progress: Progress | None, error: VowError) -> None:
        """A refused heartbeat: the lease is lost, or the next heartbeat tries again (before the lease ends)."""
        now = time.monotonic()
        lost = error.code is grpc.StatusCode.FAILED_PRECONDITION and error.reason == "LEASE_LOST"
        if lost or now >= attempt.expires_at:
            LOG.warning("task %s: lease lost (%s)", attempt.lease.task.id, error)
            attempt.context._cancel(CancelReason.LEASE_LOST)
            self.forget(attempt)
            return
        if progress is not None:
            attempt.context._requeue_progress(progress)
        if attempt.token in self._watched:
            # Try again soon, but not in a tight loop.
            attempt.next_heartbeat = now + min(1.0, max(0.1, (attempt.expires_at - now) / 4))
            self._arm(attempt)

    def _loop_time(self, monotonic: float) -> float:
        """A time.monotonic() instant on the loop's clock (the same clock by default, not by contract)."""
        return self._loop.time() + (monotonic - time.monotonic())
