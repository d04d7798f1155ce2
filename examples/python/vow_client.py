"""A small Python client of the Vow task service (vow.v1.TaskService).

Copy this file next to the stubs that generate.py writes (vow/v1/*_pb2*.py).
It needs grpcio, grpcio-status and googleapis-common-protos.

    client = VowClient.connect("127.0.0.1:50051")
    task = client.submit("echo", {"hello": "world"})
    answer = client.await_(task.id, timeout=30)
    if answer.done and answer.task.state == SUCCEEDED:
        print(output_of(answer.task))

Errors of the RPCs themselves surface as grpc.RpcError; `error_details` decodes
the rich details (ErrorInfo, BadRequest, ...) that the server attaches.
Errors of a task's execution live in `task.error` instead.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from vow.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

QUEUED = task_pb2.TASK_STATE_QUEUED
RUNNING = task_pb2.TASK_STATE_RUNNING
RETRY_WAIT = task_pb2.TASK_STATE_RETRY_WAIT
SUCCEEDED = task_pb2.TASK_STATE_SUCCEEDED
FAILED = task_pb2.TASK_STATE_FAILED
CANCELLED = task_pb2.TASK_STATE_CANCELLED
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})

SNAPSHOT = task_service_pb2.WATCH_EVENT_TYPE_SNAPSHOT
CHANGE = task_service_pb2.WATCH_EVENT_TYPE_CHANGE
RESYNC = task_service_pb2.WATCH_EVENT_TYPE_RESYNC
HEARTBEAT = task_service_pb2.WATCH_EVENT_TYPE_HEARTBEAT


class VowClient:
    """Typed calls over one channel. `timeout` arguments are seconds.

    For Await, the gRPC deadline bounds only the waiting: when it comes first,
    the server still answers OK with done=False and the current snapshot.
    For Run, the gRPC deadline bounds the task itself.
    """

    def __init__(self, channel: grpc.Channel):
        self.channel = channel
        self.stub = task_service_pb2_grpc.TaskServiceStub(channel)

    @classmethod
    def connect(cls, target: str, ready_timeout: float | None = 10.0) -> "VowClient":
        """Opens a plaintext channel to `host:port` and waits until it is ready."""
        channel = grpc.insecure_channel(target)
        if ready_timeout is not None:
            grpc.channel_ready_future(channel).result(timeout=ready_timeout)
        return cls(channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "VowClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(self, kind: str, input: Any = None, *, timeout: float | None = 10.0, **options: Any) -> task_pb2.Task:
        """Enqueues a task; `options` are the other SubmitRequest fields (labels, retry, ttl, ...)."""
        request = task_service_pb2.SubmitRequest(kind=kind, input=to_payload(input), **options)
        return self.stub.Submit(request, timeout=timeout).task

    def get(self, task_id: str, *, timeout: float | None = 10.0) -> task_pb2.Task:
        """The current snapshot; never blocks on the task."""
        return self.stub.Get(task_service_pb2.GetRequest(id=task_id), timeout=timeout).task

    def await_(
        self, task_id: str, *, wait: float | None = None, timeout: float | None = None
    ) -> task_service_pb2.AwaitResponse:
        """Waits for the task to finish: at most `wait` (server side) and the call `timeout`.

        Returns the AwaitResponse: `.done` tells whether `.task` is terminal.
        """
        request = task_service_pb2.AwaitRequest(id=task_id, timeout=_duration(wait))
        return self.stub.Await(request, timeout=timeout)

    def result(self, task_id: str, *, poll: float = 30.0) -> task_pb2.Task:
        """Awaits again and again until the task is terminal; returns it."""
        while True:
            answer = self.await_(task_id, wait=poll, timeout=poll + 5)
            if answer.done:
                return answer.task

    def run(self, kind: str, input: Any = None, *, timeout: float | None = None, **options: Any) -> task_pb2.Task:
        """Submits and awaits in one call; the call's `timeout` is the task's deadline."""
        request = task_service_pb2.RunRequest(kind=kind, input=to_payload(input), **options)
        return self.stub.Run(request, timeout=timeout).task

    def watch(
        self,
        task_id: str = "",
        *,
        after_revision: int = 0,
        kinds: Iterable[str] = (),
        labels: dict[str, str] | None = None,
        states: Iterable[int] = (),
        timeout: float | None = None,
    ) -> Any:
        """Streams the changes of one task (or, without `task_id`, of every task matching the filter).

        Returns the call itself: iterating it yields WatchResponse messages
        (`.type` is SNAPSHOT, CHANGE, RESYNC or HEARTBEAT; `.task` the task after
        the change). A single-task watch opens with a SNAPSHOT, or with the changes
        after `after_revision` when resuming (a RESYNC if the server no longer has
        them), and ends after the terminal change; the iteration then stops and
        `.code()` is OK. Otherwise the iteration raises grpc.RpcError. `.cancel()`
        stops the stream. `timeout` bounds the watching, never the task.

            for event in client.watch(task.id, timeout=60):
                if event.type != HEARTBEAT:
                    print(event.task.revision, event.task.state, event.task.progress.percent)
        """
        request = task_service_pb2.WatchRequest(
            id=task_id, after_revision=after_revision, kinds=kinds, labels=labels, states=states
        )
        return self.stub.Watch(request, timeout=timeout)

    def cancel(self, task_id: str, reason: str = "", *, timeout: float | None = 10.0) -> task_pb2.Task:
        """Asks the task to stop; idempotent. A running task may still show RUNNING with cancel_requested."""
        request = task_service_pb2.CancelRequest(id=task_id, reason=reason)
        return self.stub.Cancel(request, timeout=timeout).task


def to_payload(value: Any) -> task_pb2.Payload | None:
    """A JSON-able value becomes a JSON payload, bytes a binary one; None stays unset."""
    if value is None:
        return None
    if isinstance(value, task_pb2.Payload):
        return value
    if isinstance(value, (bytes, bytearray)):
        return task_pb2.Payload(binary=bytes(value), content_type="application/octet-stream")
    json_value = struct_pb2.Value()
    # Going through json.dumps rejects what JSON cannot carry (sets, objects) early.
    json_format.Parse(json.dumps(value), json_value)
    return task_pb2.Payload(json=json_value)


def from_payload(payload: task_pb2.Payload) -> Any:
    """The Python value of a payload: JSON as dicts/lists/scalars, binary as bytes."""
    kind = payload.WhichOneof("data")
    if kind == "json":
        return json_format.MessageToDict(payload.json)
    if kind == "binary":
        return payload.binary
    return None


def output_of(task: task_pb2.Task) -> Any:
    return from_payload(task.output)


def error_details(source: grpc.RpcError | status_pb2.Status) -> list[Message]:
    """Decodes the details of an RPC error (grpc-status-details-bin) or of `task.error`.

    Known google.rpc types (ErrorInfo, BadRequest, RetryInfo, ...) come back
    unpacked; unknown ones are left as Any.
    """
    status = rpc_status.from_call(source) if isinstance(source, grpc.RpcError) else source
    if status is None:
        return []
    return [_unpack(detail) for detail in status.details]


def error_info(source: grpc.RpcError | status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    return next(_of_type(error_details(source), error_details_pb2.ErrorInfo), None)


def field_violations(source: grpc.RpcError | status_pb2.Status) -> dict[str, str]:
    """BadRequest violations as {field: description}."""
    violations: dict[str, str] = {}
    for bad_request in _of_type(error_details(source), error_details_pb2.BadRequest):
        for violation in bad_request.field_violations:
            violations[violation.field] = violation.description
    return violations


_DETAIL_TYPES = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


def _unpack(detail: Any) -> Message:
    for detail_type in _DETAIL_TYPES:
        if detail.Is(detail_type.DESCRIPTOR):
            message = detail_type()
            detail.Unpack(message)
            return message
    return detail


def _of_type(messages: Iterable[Message], message_type: type) -> Iterable[Any]:
    return (message for message in messages if isinstance(message, message_type))


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration
