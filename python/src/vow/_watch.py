"""`Watch`: a TaskService Watch stream as a Python iterator that resumes itself.

A watch that breaks with a code `_retry` retries (vowd draining, a dropped
connection, a proxy that reset the stream) is reopened after a pause, within
the watch's timeout and retry budget. A single-task watch resumes with
`after_revision` set to the last revision seen: the server replays what was
missed (or sends a RESYNC), so the caller sees every change once, in order.
A filter watch has no revision to resume from: it is reopened and yields a
RESYNC without a task first, as the server does when it dropped changes
("list again").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc

from vow._retry import Backoff
from vow.errors import VowError
from vow.types import WatchEvent, WatchEventType
from vow.v1 import task_service_pb2


class Watch(Iterator[WatchEvent]):
    """Iterates `WatchEvent`s until the task's terminal change or the timeout; `close()` stops early.

    Also a context manager, so `with client.watch(id) as events:` closes the stream on exit.
    """

    def __init__(
        self,
        stub: Any,
        request: task_service_pb2.WatchRequest,
        timeout: float | None,
        heartbeats: bool,
        retries: int,
    ):
        self._stub = stub
        self._request = request
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._heartbeats = heartbeats
        self._backoff = Backoff(retries, self._deadline)
        self._call: Any = None
        self._closed = False
        self._resynced = False
        self.resumes = 0
        """How many times the stream broke and was reopened."""
        self.last_revision = request.after_revision
        """Revision of the last task event seen: pass it as `after_revision` to resume elsewhere."""

    def __iter__(self) -> Watch:
        return self

    def start(self) -> Watch:
        """Opens the stream now; a filter watch also waits for the server's response headers.

        vowd subscribes a filter watch before it answers with headers, so once this
        returns every later change that matches reaches the iterator. (A single-task
        watch needs no such wait: its first message is the current snapshot.)
        """
        if self._call is None and not self._closed:
            call = self._open()
            if not self._request.id:
                call.initial_metadata()  # returns at once when the call failed; next() raises
        return self

    def __next__(self) -> WatchEvent:
        while not self._closed:
            if self._resynced:
                self._resynced = False
                return WatchEvent(WatchEventType.RESYNC, None)
            if self._call is None:
                self._open()
            try:
                message = next(self._call)
            except StopIteration:
                self._closed = True
                break
            except grpc.RpcError as rpc_error:
                if self._closed:  # close() cancelled the call: the end the caller asked for
                    break
                error = VowError.from_rpc_error(rpc_error)
                if self._resume_after(error):
                    continue
                self._closed = True
                if self._timed_out(error):
                    break
                raise error from None
            self._backoff.reset()
            event = WatchEvent.from_proto(message)
            if event.task is not None and self._request.id:
                self.last_revision = event.task.revision
                # Nothing follows a terminal change, not even after a break before the stream's end.
                self._closed = event.task.done
            if event.type is WatchEventType.HEARTBEAT and not self._heartbeats:
                continue
            return event
        raise StopIteration

    def close(self) -> None:
        """Stops the stream; the iteration then ends."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open(self) -> Any:
        request = task_service_pb2.WatchRequest()
        request.CopyFrom(self._request)
        if request.id:
            request.after_revision = self.last_revision
        timeout = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        self._call = self._stub.Watch(request, timeout=timeout)
        return self._call

    def _resume_after(self, error: VowError) -> bool:
        """Reopens the stream after a pause when `error` is worth it and time and retries remain."""
        pause = self._backoff.pause_before_retry(error)
        if pause is None:
            return False
        time.sleep(pause)
        self._call = None
        self.resumes += 1
        # A filter watch restarts from now: tell the caller that changes may have been missed.
        self._resynced = not self._request.id
        return True

    def _timed_out(self, error: VowError) -> bool:
        """Our own timeout ends the iteration, as the end of a wait, not as an error."""
        return self._deadline is not None and error.code is grpc.StatusCode.DEADLINE_EXCEEDED
