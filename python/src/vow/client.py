"""`vow.Client`: the TaskService calls as Python methods.

    client = vow.Client("127.0.0.1:50051")
    task = client.submit("echo", {"hello": "world"})
    task = client.await_(task.id, timeout=30)     # returns when done, or at the bound
    if task.done:
        print(task.state.name, task.output)

A refused call raises `vow.VowError` (code, reason, field violations); a failed
*task* is not an exception, it is a task whose `state` is FAILED and whose
`error` says why. Timeouts are seconds (or `timedelta`); a call's timeout
covers its retries too (see `_retry`).
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from vow import _channel
from vow._requests import Retry, Seconds, duration, seconds, task_request
from vow._retry import call_with_retries
from vow._watch import Watch
from vow.errors import ErrorDetails, VowError
from vow.types import AwaitedMany, Task, TaskPage, TaskState
from vow.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc, worker_service_pb2_grpc

# Bound of calls that answer at once (Submit, Get, Cancel, ...), retries included.
DEFAULT_CALL_TIMEOUT_SECONDS = 10.0
# Retries after the first attempt (five attempts in all, as the Rust client).
DEFAULT_RETRIES = 4
# One Await call of an unbounded wait; the server's --max-await may end it sooner.
UNBOUNDED_AWAIT_CHUNK_SECONDS = 60.0
# Time an Await's gRPC deadline leaves beyond the wait it asks for, so the server's
# own answer (done = false) comes back before the deadline falls on this side.
AWAIT_SLACK_SECONDS = 2.0
# A bounded wait with less than this left returns what it has rather than call again.
AWAIT_MIN_WAIT_SECONDS = 0.02


class Client:
    """A connection to vowd and the calls of `vow.v1.TaskService`.

    `target` is `host:port`, or an `http://` / `https://` URL (the latter
    speaks TLS). TLS is also on with `tls=True` or any TLS material:
    `root_certificates` (PEM bytes or a path: a private CA), a client
    `certificate_chain` and `private_key` (mutual TLS), or ready-made
    `credentials`; `server_name` checks the certificate against another name.
    `token` is sent as `authorization: Bearer <token>` on every call, streams
    included; `namespace` (for an administrator's key) as `x-vow-namespace`.
    The current OpenTelemetry context goes with every call when opentelemetry
    is installed (`propagate_trace=False` turns that off). Calls safe to
    repeat are retried up to `retries` times within their timeout (`_retry`);
    `call_timeout` bounds the calls that answer at once.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        namespace: str | None = None,
        tls: bool | None = None,
        root_certificates: bytes | str | Path | None = None,
        certificate_chain: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
        propagate_trace: bool = True,
        retries: int = DEFAULT_RETRIES,
        call_timeout: float = DEFAULT_CALL_TIMEOUT_SECONDS,
    ):
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        self.target = target
        self._channel_settings: dict[str, Any] = dict(
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            credentials=credentials,
            server_name=server_name,
            options=options,
        )
        self._raw_channel = _channel.open_channel(target, **self._channel_settings)
        self.call_metadata = _channel.identity_metadata(token, namespace)
        """What a call made on another channel must add to speak as this client (token, namespace)."""
        self.channel = _channel.intercepted(self._raw_channel, self.call_metadata, propagate_trace)
        self.tasks = task_service_pb2_grpc.TaskServiceStub(self.channel)
        self.workers = worker_service_pb2_grpc.WorkerServiceStub(self.channel)
        self.retries = retries
        self.call_timeout = call_timeout

    def wait_ready(self, timeout: float = 10.0) -> Client:
        """Blocks until the channel is connected; raises VowError UNAVAILABLE after `timeout`."""
        try:
            grpc.channel_ready_future(self._raw_channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            message = f"{self.target} is not reachable within {timeout} s"
            raise VowError(ErrorDetails(grpc.StatusCode.UNAVAILABLE, message)) from None
        return self

    def open_aio_channel(self) -> grpc.aio.Channel:
        """A grpc.aio channel to the same server with the same TLS settings, for the running event loop.

        The worker speaks to vowd through one: an asyncio call costs about half
        the CPU of a blocking one. Calls on it must add `call_metadata`.
        """
        return _channel.open_channel(self.target, aio=True, **self._channel_settings)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(
        self,
        kind: str,
        input: Any = None,
        *,
        content_type: str = "",
        labels: Mapping[str, str] | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
        deadline: datetime | None = None,
        ttl: Seconds | None = None,
        attempt_timeout: Seconds | None = None,
        not_before: datetime | None = None,
        retention: Seconds | None = None,
        max_attempts: int | None = None,
        retry: Retry | task_pb2.RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Task:
        """Enqueues a task and returns it as stored (QUEUED, or already further).

        `input` is any JSON-able value, or bytes (`content_type` says what they
        are). `deadline`/`ttl` bound the whole task, `attempt_timeout` one
        attempt; `max_attempts` and `retry` set the retry policy. Without an
        `idempotency_key` the client makes one up, so its own retries after a
        lost reply cannot create a second task; `idempotency_key=""` sends
        none, and then the Submit is not retried.
        """
        if idempotency_key is None:
            idempotency_key = uuid.uuid4().hex if self.retries else ""
        request = task_request(
            task_service_pb2.SubmitRequest,
            kind,
            input,
            content_type=content_type,
            labels=labels,
            priority=priority,
            idempotency_key=idempotency_key,
            deadline=deadline,
            ttl=ttl,
            attempt_timeout=attempt_timeout,
            not_before=not_before,
            retention=retention,
            max_attempts=max_attempts,
            retry=retry,
        )
        retries = self.retries if idempotency_key else 0
        response = self._unary(self.tasks.Submit, request, timeout, retries=retries)
        return Task(response.task)

    def get(self, task_id: str, *, timeout: float | None = None) -> Task:
        """The current snapshot; never waits for the task."""
        response = self._unary(self.tasks.Get, task_service_pb2.GetRequest(id=task_id), timeout)
        return Task(response.task)

    def await_(self, task_id: str, timeout: Seconds | None = None) -> Task:
        """Waits until the task is done, for at most `timeout`; returns the task either way.

        A task still running at the bound comes back with `done == False`
        rather than as an error. Without a timeout it waits as long as the task
        takes (in calls of a minute, or the server's --max-await).
        """
        return self._wait(
            timeout,
            lambda wait: self._await_once(task_id, wait),
            lambda task: task.done,
        )

    def await_many(
        self,
        task_ids: Iterable[str],
        *,
        any_: bool = False,
        timeout: Seconds | None = None,
    ) -> AwaitedMany:
        """Waits until every task is done (or, with `any_`, the first), for at most `timeout`.

        Returns the tasks finished so far, the ids the server does not know
        (`not_found_ids`: they never finish) and a summary by outcome; `done`
        says whether the wait was satisfied. Without a timeout it waits as long
        as it takes.
        """
        request = task_service_pb2.AwaitManyRequest(
            ids=builtins.list(task_ids),
            mode=task_service_pb2.AWAIT_MODE_ANY if any_ else task_service_pb2.AWAIT_MODE_ALL,
        )

        def once(wait: float) -> AwaitedMany:
            return AwaitedMany.from_proto(self._waiting_call(self.tasks.AwaitMany, request, wait))

        return self._wait(timeout, once, lambda answer: answer.done)

    def _wait(self, timeout: Seconds | None, once: Callable[[float], Any], done: Callable[[Any], bool]) -> Any:
        """Repeats the server-side wait `once(seconds)` until `done` or the bound `timeout`."""
        give_up_at = None if timeout is None else time.monotonic() + seconds(timeout)
        while True:
            wait = UNBOUNDED_AWAIT_CHUNK_SECONDS
            if give_up_at is not None:
                wait = min(wait, max(0.0, give_up_at - time.monotonic()))
            answer = once(wait)
            # The server may answer early (its --max-await): wait on while the bound allows.
            if done(answer) or (give_up_at is not None and give_up_at - time.monotonic() < AWAIT_MIN_WAIT_SECONDS):
                return answer

    def _await_once(self, task_id: str, wait: float) -> Task:
        request = task_service_pb2.AwaitRequest(id=task_id)
        try:
            response = self._waiting_call(self.tasks.Await, request, wait)
        except VowError as error:
            if error.code is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            # The server's answer did not come within the slack (a stalled network):
            # the task was not done at the bound, which is what a Get shows.
            return self.get(task_id)
        return Task(response.task)

    def _waiting_call(self, method: Any, request: Any, wait: float) -> Any:
        """An Await or AwaitMany that waits `wait` seconds at most, its retries included.

        Each attempt asks the server to wait for what is left of `wait` and gives its
        gRPC deadline the slack beyond, so the server's own answer comes back in time.
        """

        def attempt(left: float | None) -> Any:
            assert left is not None, "a waiting call is always bounded"
            request.timeout.CopyFrom(duration(max(0.0, left - AWAIT_SLACK_SECONDS)))
            return method(request, timeout=left)

        return call_with_retries(attempt, self.retries, wait + AWAIT_SLACK_SECONDS)

    def run(
        self,
        kind: str,
        input: Any = None,
        *,
        timeout: Seconds | None = None,
        **options: Any,
    ) -> Task:
        """Submits and waits in one call; the call's `timeout` is also the task's deadline.

        Leaving the call (a timeout, a KeyboardInterrupt) cancels the task.
        `options` are those of `submit`. Never retried: a Run that broke has
        already cancelled its task.
        """
        if options.get("idempotency_key") is None:
            options["idempotency_key"] = ""
        request = task_request(task_service_pb2.RunRequest, kind, input, **options)
        bound = None if timeout is None else seconds(timeout)
        response = call_with_retries(lambda _: self.tasks.Run(request, timeout=bound), 0, None)
        return Task(response.task)

    def watch(
        self,
        task_id: str = "",
        *,
        after_revision: int = 0,
        kinds: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        states: Iterable[TaskState] = (),
        timeout: Seconds | None = None,
        heartbeats: bool = False,
    ) -> Watch:
        """Streams the changes of one task, or of every task matching a filter.

        Iterating yields `WatchEvent`s: for one task a SNAPSHOT (or, resuming
        `after_revision`, the changes after it), then each CHANGE in revision
        order; the iteration ends after the terminal change. A broken stream
        is resumed after the last revision seen (a filter watch yields a RESYNC
        without a task instead: list again). `timeout` bounds the watching,
        never the task; HEARTBEAT events are skipped unless `heartbeats`.
        The stream is open when this returns, and a filter watch subscribed:
        a change made after it (a task submitted next) is seen.
        """
        request = task_service_pb2.WatchRequest(
            id=task_id,
            after_revision=after_revision,
            kinds=list(kinds),
            labels=dict(labels or {}),
            states=[task_pb2.TaskState.Name(int(state)) for state in states],
        )
        watch = Watch(self.tasks, request, None if timeout is None else seconds(timeout), heartbeats, self.retries)
        return watch.start()

    def cancel(self, task_id: str, reason: str = "", *, timeout: float | None = None) -> Task:
        """Asks the task to stop; idempotent. A running task may still be RUNNING with `cancel_requested`."""
        request = task_service_pb2.CancelRequest(id=task_id, reason=reason)
        return Task(self._unary(self.tasks.Cancel, request, timeout).task)

    def delete(self, task_id: str, *, cancel_if_running: bool = False, timeout: float | None = None) -> None:
        """Forgets a finished task (or, with `cancel_if_running`, stops and forgets a running one)."""
        request = task_service_pb2.DeleteRequest(id=task_id, cancel_if_running=cancel_if_running)
        self._unary(self.tasks.Delete, request, timeout)

    def list(
        self,
        *,
        kinds: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        states: Iterable[TaskState] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> TaskPage:
        """One page of the tasks matching the filter, newest first; pass `next_page_token` on for the next."""
        request = task_service_pb2.ListRequest(
            kinds=builtins.list(kinds),
            labels=dict(labels or {}),
            states=[task_pb2.TaskState.Name(int(state)) for state in states],
            page_size=page_size,
            page_token=page_token,
        )
        return TaskPage.from_proto(self._unary(self.tasks.List, request, timeout))

    def _unary(self, method: Any, request: Any, timeout: float | None, *, retries: int | None = None) -> Any:
        """One call, retried within `timeout` (the client's call timeout when None)."""
        bound = self.call_timeout if timeout is None else timeout
        return call_with_retries(
            lambda left: method(request, timeout=left),
            self.retries if retries is None else retries,
            bound,
        )
