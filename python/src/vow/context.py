"""`Context`: what a handler knows about its attempt, and how it hears that it should stop.

The Python twin of the Rust `HandlerContext`: the task and its input, the
attempt deadline (the lease's `attempt_deadline`, the earlier of the attempt
timeout and the task deadline), progress reporting, and one cancellation
signal that fires for every reason an attempt should stop. Stopping is
cooperative: a thread cannot be killed safely, so a handler checks
`ctx.cancelled` (a threading.Event) or awaits `ctx.wait_cancelled()`.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from vow.types import Progress, Task

if TYPE_CHECKING:
    from vow.client import Client


class CancelReason(str, enum.Enum):
    """Why `Context.cancelled` fired."""

    CANCEL_REQUESTED = "cancel_requested"
    """A client cancelled the task (learned from a heartbeat)."""
    DEADLINE = "deadline"
    """The attempt deadline passed."""
    LEASE_LOST = "lease_lost"
    """The lease expired or was taken over: the result would be refused."""
    SHUTDOWN = "shutdown"
    """The worker is stopping and the drain timeout passed; the lease was released."""


class Cancelled(Exception):
    """Raised by `Context.raise_if_cancelled()`; the worker reports it by its `reason`."""

    def __init__(self, reason: CancelReason):
        super().__init__(f"the attempt was stopped: {reason.value}")
        self.reason = reason


class Context:
    """One attempt of one task, as its handler sees it."""

    def __init__(
        self,
        task: Task,
        *,
        deadline: datetime | None,
        deadline_monotonic: float | None,
        traceparent: str,
        tracestate: str,
        worker_id: str,
        client: Client,
        on_progress: Callable[[], None],
    ):
        self.task = task
        self.input: Any = task.input
        """The task's input as a Python value (JSON decoded, bytes as bytes)."""
        self.deadline = deadline
        """When this attempt must be done (aware UTC datetime), or None when nothing bounds it."""
        self.traceparent = traceparent
        """W3C context of the attempt's span: the parent of this handler's span."""
        self.tracestate = tracestate
        self.worker_id = worker_id
        self.client = client
        """The worker's client, to submit follow-up tasks on the same connection."""
        self.cancelled = threading.Event()
        """Set when the attempt should stop: see `cancel_reason`."""
        self._deadline_monotonic = deadline_monotonic
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._cancel_reason: CancelReason | None = None
        self._progress: Progress | None = None
        self._async_waiters: list[Callable[[], None]] = []

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def attempt(self) -> int:
        """This attempt's number, from 1."""
        return self.task.attempt

    @property
    def max_attempts(self) -> int:
        return self.task.max_attempts

    @property
    def labels(self) -> Mapping[str, str]:
        return self.task.labels

    @property
    def cancel_reason(self) -> CancelReason | None:
        """Why `cancelled` fired (the first reason wins); None while it has not."""
        return self._cancel_reason

    def time_left(self) -> float | None:
        """Seconds until the attempt deadline (negative once past); None without a deadline."""
        if self._deadline_monotonic is None:
            return None
        return self._deadline_monotonic - time.monotonic()

    def progress(self, percent: float, message: str = "") -> None:
        """Reports progress (0 to 100); sent with the next heartbeat, later reports replacing earlier ones."""
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"progress must be from 0 to 100, not {percent}")
        with self._lock:
            self._progress = Progress(float(percent), message)
        self._on_progress()

    def raise_if_cancelled(self) -> None:
        """Raises `Cancelled` once the attempt should stop; a cheap check for loops."""
        reason = self._cancel_reason
        if reason is not None:
            raise Cancelled(reason)

    async def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Waits (without blocking the event loop) until `cancelled` fires; False after `timeout`."""
        loop = asyncio.get_running_loop()
        fired = loop.create_future()

        def settle() -> None:
            if not fired.done():
                fired.set_result(True)

        def wake() -> None:
            loop.call_soon_threadsafe(settle)

        with self._lock:
            if self._cancel_reason is not None:
                return True
            self._async_waiters.append(wake)
        try:
            return await asyncio.wait_for(fired, timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            with self._lock:
                self._async_waiters.remove(wake)

    def _cancel(self, reason: CancelReason) -> bool:
        """Fires the signal for `reason`; True if this call fired it (the first reason is kept)."""
        with self._lock:
            if self._cancel_reason is not None:
                return False
            self._cancel_reason = reason
            waiters = list(self._async_waiters)
        self.cancelled.set()
        for wake in waiters:
            wake()
        return True

    def _take_progress(self) -> Progress | None:
        """The report not yet sent, if any; the heartbeat that sends it takes it."""
        with self._lock:
            progress, self._progress = self._progress, None
        return progress

    def _requeue_progress(self, progress: Progress) -> None:
        """Puts back a report whose heartbeat failed, unless a newer one came meanwhile."""
        with self._lock:
            if self._progress is None:
                self._progress = progress
