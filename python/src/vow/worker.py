"""`vow.Worker`: runs Python handlers for remote kinds through vow.v1.WorkerService.

    worker = vow.Worker("127.0.0.1:50051")

    @worker.handler("resize")
    def resize(ctx: vow.Context) -> dict:
        ctx.progress(50, "halfway")
        return {"resized": ctx.input["image"]}

    worker.run()   # until SIGTERM or Ctrl-C, then drains

The worker's own calls (Poll, Heartbeat, Complete, Release) run on an asyncio
event loop over a grpc.aio channel: one thread, and about half the CPU per call
of blocking gRPC. Plain handlers run on a pool of `concurrency` threads,
`async def` handlers on the loop itself (they must not block it: heartbeats
run there too). It long-polls leases as slots free up (as many per Poll as
slots are free), renews each lease at a third of its duration (`_leases`),
and completes each attempt with the handler's output or error (`_attempt`).
On SIGTERM, SIGINT or `stop()` it stops polling, lets running handlers finish
for `drain_timeout`, then fires their cancellation and releases their leases:
their tasks run again at once, the attempt not counted.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from vow._attempt import Attempt, Outcome, run_async, run_sync, status_of
from vow._leases import LeaseKeeper
from vow._pool import ThreadPool
from vow._requests import duration
from vow.client import Client
from vow.context import CancelReason, Context
from vow.errors import TaskError, VowError
from vow.v1 import worker_service_pb2, worker_service_pb2_grpc

LOG = logging.getLogger("vow.worker")

Handler = TypeVar("Handler", bound=Callable[[Context], Any])

# Extra time a Poll call gets beyond the wait it asks the server for.
POLL_CALL_SLACK_SECONDS = 5.0
# Pause after a failed Poll before the next.
POLL_RETRY_SECONDS = 1.0
# Most leases one Poll may ask for (the server's limit).
MAX_POLL_BATCH = 256
# How long shutdown waits for Completes already on their way after the drain.
COMPLETE_GRACE_SECONDS = 5.0
# Poll errors that retrying cannot fix (an undeclared kind, bad credentials): run() raises them.
FATAL_POLL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


class Worker:
    """A worker of the kinds its handlers are registered for; see the module docs.

    `client` is a `vow.Client`, or a target for one (then `client_options`,
    such as `token=` or `root_certificates=`, go to it and the worker closes it
    when done); handlers reach it as `ctx.client`. `lease_duration` (seconds)
    defaults to the server's; `poll_wait` bounds one Poll, and so how long
    `stop()` may wait for the Poll in flight (a Poll is never abandoned: a lease
    it grants would be lost). `tracer_provider` is the OpenTelemetry provider of
    the handler spans (the global one by default).
    """

    def __init__(
        self,
        client: Client | str = "127.0.0.1:50051",
        *,
        concurrency: int = 16,
        lease_duration: float | None = None,
        drain_timeout: float = 30.0,
        poll_wait: float = 5.0,
        progress_interval: float = 1.0,
        worker_id: str | None = None,
        tracer_provider: Any = None,
        **client_options: Any,
    ):
        self._owns_client = isinstance(client, str)
        self.client = Client(client, **client_options) if isinstance(client, str) else client
        self.concurrency = max(1, concurrency)
        self.lease_duration = lease_duration
        self.drain_timeout = drain_timeout
        self.poll_wait = poll_wait
        self.progress_interval = progress_interval
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.tracer_provider = tracer_provider
        self._handlers: dict[str, Callable[[Context], Any]] = {}
        self._stop_requested = False
        self._signals_received = 0
        self._stop_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: dict[str, Attempt] = {}
        self._fatal: VowError | None = None

    def handler(self, kind: str) -> Callable[[Handler], Handler]:
        """Registers the decorated function as the handler of `kind` (plain or `async def`)."""

        def register(function: Handler) -> Handler:
            self.register(kind, function)
            return function

        return register

    def register(self, kind: str, function: Callable[[Context], Any]) -> None:
        """Registers `function(ctx) -> output` as the handler of `kind`."""
        if kind in self._handlers:
            raise ValueError(f"kind {kind!r} already has a handler")
        self._handlers[kind] = function

    @property
    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def running(self) -> int:
        """Attempts in progress right now."""
        return len(self._running)

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Serves until `stop()` (or SIGTERM/SIGINT, in the main thread), then drains and returns.

        A second signal during the drain releases the unfinished attempts at
        once. Raises VowError when the server refuses the polls for good (a
        kind it does not know as remote, missing credentials).
        """
        asyncio.run(self.run_async(install_signal_handlers=install_signal_handlers))

    def stop(self) -> None:
        """Begins the shutdown: no more polls; `run()` returns once drained. Safe from any thread."""
        self._stop_requested = True
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._begin_stop)
            except RuntimeError:  # the loop already closed: nothing left to stop
                pass

    async def run_async(self, *, install_signal_handlers: bool = True) -> None:
        """`run()` on the running event loop, where `async def` handlers then run too.

        Cancelling this coroutine shuts the worker down as `stop()` does.
        """
        if not self._handlers:
            raise ValueError("register at least one handler before running the worker")
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        channel = self.client.open_aio_channel()
        self._workers = worker_service_pb2_grpc.WorkerServiceStub(channel)
        self._metadata = self.client.call_metadata
        self._leases = LeaseKeeper(loop, self._workers, self._metadata, self.progress_interval)
        plain = [handler for handler in self._handlers.values() if not inspect.iscoroutinefunction(handler)]
        self._pool = ThreadPool(self.concurrency) if plain else None
        self._outcomes: list[tuple[Attempt, Outcome | None]] = []
        self._outcomes_lock = threading.Lock()
        self._loop_of_run = loop
        self._loop = loop
        if self._stop_requested:
            self._begin_stop()
        signals = self._install_signals(loop) if install_signal_handlers else []
        poller = loop.create_task(self._poll_loop())
        try:
            try:
                await self._stopping.wait()
            finally:
                self._begin_stop()
                await self._shutdown(poller)
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            await self._leases.wait_for_heartbeats()
            await channel.close()
            if self._pool is not None:
                self._pool.shutdown()
            if self._owns_client:
                self.client.close()
            self._loop = None
            # A worker may run again (its own client aside) once this run has ended.
            self._stop_requested, self._stop_at, self._signals_received = False, None, 0
        fatal, self._fatal = self._fatal, None
        if fatal is not None:
            raise fatal

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        """SIGTERM and SIGINT stop the worker; only possible in the main thread."""
        installed: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self._on_signal)
            except (RuntimeError, ValueError):  # not the main thread, or no signals here
                continue
            installed.append(signum)
        return installed

    def _on_signal(self) -> None:
        self._signals_received += 1  # a second one cuts the drain short
        self._begin_stop()

    def _begin_stop(self) -> None:
        """On the loop: the first call starts the shutdown clock and wakes whoever waits."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stopping.set()
        self._changed.set()

    async def _shutdown(self, poller: asyncio.Task[None]) -> None:
        """Lets the Poll in flight end (its leases are released), then drains."""
        try:
            await asyncio.wait_for(asyncio.shield(poller), self.poll_wait + POLL_CALL_SLACK_SECONDS + 1)
        except asyncio.TimeoutError:
            poller.cancel()
        await self._drain()

    async def _poll_loop(self) -> None:
        while True:
            while not self._stopping.is_set() and len(self._running) >= self.concurrency:
                self._changed.clear()
                await self._changed.wait()
            if self._stopping.is_set():
                return
            request = worker_service_pb2.PollRequest(
                kinds=self.kinds,
                worker_id=self.worker_id,
                max_tasks=min(self.concurrency - len(self._running), MAX_POLL_BATCH),
                timeout=duration(self.poll_wait),
            )
            if self.lease_duration is not None:
                request.lease_duration.CopyFrom(duration(self.lease_duration))
            try:
                response = await self._workers.Poll(
                    request, timeout=self.poll_wait + POLL_CALL_SLACK_SECONDS, metadata=self._metadata
                )
            except grpc.RpcError as rpc_error:
                error = VowError.from_rpc_error(rpc_error)
                if error.code in FATAL_POLL_CODES:
                    LOG.error("the server refuses this worker's polls: %s", error)
                    self._fatal = error
                    self._begin_stop()
                    return
                LOG.warning("Poll failed, trying again in %s s: %s", POLL_RETRY_SECONDS, error)
                try:
                    await asyncio.wait_for(self._stopping.wait(), POLL_RETRY_SECONDS)
                except asyncio.TimeoutError:
                    pass
                continue
            if self._stopping.is_set():
                if response.leases:
                    await self._release([lease.token for lease in response.leases], "the worker is stopping")
                return
            for lease in response.leases:
                self._start(lease)

    def _start(self, lease: worker_service_pb2.Lease) -> None:
        attempt = Attempt(lease, self.client, self.worker_id, lambda: self._leases.progress_reported(attempt))
        self._running[attempt.token] = attempt
        self._leases.watch(attempt)
        handler = self._handlers.get(lease.task.kind)
        if handler is None:
            # The server leases only the kinds polled for; this guards a bug, not a case.
            self._finish(attempt, TaskError("UNIMPLEMENTED", f"this worker has no handler for {lease.task.kind!r}").to_status())
        elif inspect.iscoroutinefunction(handler):
            attempt.runner = asyncio.get_running_loop().create_task(self._run_async_handler(attempt, handler))
        else:
            assert self._pool is not None
            self._pool.submit(lambda: self._run_in_thread(attempt, handler))

    async def _run_async_handler(self, attempt: Attempt, handler: Callable[[Context], Any]) -> None:
        try:
            outcome = await run_async(attempt, handler, self.tracer_provider)
        except BaseException as error:  # noqa: BLE001 - cancelled at exit, or worse: the slot must come back
            outcome = status_of(error)
        self._finish(attempt, outcome)

    def _run_in_thread(self, attempt: Attempt, handler: Callable[[Context], Any]) -> None:
        """On a pool thread: runs a plain handler, then hands its outcome back to the loop."""
        try:
            outcome = run_sync(attempt, handler, self.tracer_provider)
        except BaseException as error:  # noqa: BLE001 - SystemExit and the like in a handler
            outcome = status_of(error)
        with self._outcomes_lock:
            self._outcomes.append((attempt, outcome))
            first = len(self._outcomes) == 1
        if first:
            # One wake-up of the loop carries every outcome that arrives until it runs.
            try:
                self._loop_of_run.call_soon_threadsafe(self._take_outcomes)
            except RuntimeError:  # the worker is gone (a lease released at shutdown): nobody listens
                pass

    def _take_outcomes(self) -> None:
        with self._outcomes_lock:
            outcomes, self._outcomes = self._outcomes, []
        for attempt, outcome in outcomes:
            self._finish(attempt, outcome)

    def _finish(self, attempt: Attempt, outcome: Outcome | None) -> None:
        """On the loop: completes the attempt unless the drain released it first, then frees its slot."""
        if attempt.claim("finishing") and outcome is not None:
            self._leases.forget(attempt)
            attempt.runner = asyncio.get_running_loop().create_task(self._complete(attempt, outcome))
        else:
            self._ended(attempt)

    async def _complete(self, attempt: Attempt, outcome: Outcome) -> None:
        try:
            await attempt.complete(self._workers, self._metadata, outcome)
        finally:
            self._ended(attempt)

    def _ended(self, attempt: Attempt) -> None:
        self._leases.forget(attempt)
        self._running.pop(attempt.token, None)
        self._changed.set()

    async def _drain(self) -> None:
        """Waits up to the drain timeout for running attempts; then stops and releases the rest."""
        give_up_at = (self._stop_at or time.monotonic()) + self.drain_timeout
        while self._running and self._signals_received < 2 and (left := give_up_at - time.monotonic()) > 0:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                break
        released = [attempt for attempt in self._running.values() if attempt.claim("released")]
        for attempt in released:
            self._leases.forget(attempt)
            attempt.context._cancel(CancelReason.SHUTDOWN)
        if released:
            LOG.info("drain timeout: releasing %d unfinished attempts", len(released))
            await self._release([attempt.token for attempt in released], "the worker is shutting down")
        completing = [
            attempt.runner for attempt in self._running.values() if attempt.state == "finishing" and attempt.runner
        ]
        if completing:
            await asyncio.wait(completing, timeout=COMPLETE_GRACE_SECONDS)

    async def _release(self, tokens: list[str], reason: str) -> None:
        request = worker_service_pb2.ReleaseRequest(tokens=tokens, reason=reason)
        try:
            await self._workers.Release(request, timeout=10.0, metadata=self._metadata)
        except grpc.RpcError as rpc_error:
            LOG.warning("Release of %d leases failed: %s", len(tokens), VowError.from_rpc_error(rpc_error))
