"""Which failed calls the client retries, how often, how long apart, and how a broken Watch
resumes: against an in-process gRPC server that fails calls on purpose (vowd cannot be made
to reset a stream on cue, and a proxy's codes are what matter here)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

import vow
from vow import TaskState, WatchEventType
from vow.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

TASK_ID = "0123456789abcdef0123456789abcdef"
RETRIED = ["UNAVAILABLE", "CANCELLED", "INTERNAL", "UNKNOWN"]
NOT_RETRIED = ["INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "ALREADY_EXISTS"]


@dataclass
class Received:
    """One call as the server saw it."""

    method: str
    request: Any
    at: float


@dataclass
class FlakyTaskService(task_service_pb2_grpc.TaskServiceServicer):
    """Fails the first `failures` calls with `code` (and a RetryInfo of `retry_after`), then answers."""

    code: str = "UNAVAILABLE"
    failures: int = 0
    retry_after: float | None = None
    calls: list[Received] = field(default_factory=list)
    watch_script: list[list[task_service_pb2.WatchResponse]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls.append(Received(method, request, time.monotonic()))
            failing = len(self.calls) <= self.failures
        if failing:
            self._fail(context)

    def _fail(self, context: grpc.ServicerContext) -> None:
        status = status_pb2.Status(code=getattr(code_pb2, self.code), message=f"on purpose: {self.code}")
        if self.retry_after is not None:
            info = error_details_pb2.RetryInfo()
            info.retry_delay.FromNanoseconds(round(self.retry_after * 1e9))
            detail = any_pb2.Any()
            detail.Pack(info)
            status.details.append(detail)
        context.abort_with_status(rpc_status.to_status(status))

    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Get", request, context)
        return task_service_pb2.GetResponse(task=_task(TaskState.RUNNING))

    def Submit(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Submit", request, context)
        return task_service_pb2.SubmitResponse(task=_task(TaskState.QUEUED))

    def Run(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Run", request, context)
        return task_service_pb2.RunResponse(task=_task(TaskState.SUCCEEDED))

    def Await(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Await", request, context)
        return task_service_pb2.AwaitResponse(task=_task(TaskState.SUCCEEDED), done=True)

    def AwaitMany(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("AwaitMany", request, context)
        return task_service_pb2.AwaitManyResponse(done=True, finished=[_task(TaskState.SUCCEEDED)])

    def Cancel(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Cancel", request, context)
        return task_service_pb2.CancelResponse(task=_task(TaskState.CANCELLED))

    def Delete(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Delete", request, context)
        return task_service_pb2.DeleteResponse()

    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("List", request, context)
        return task_service_pb2.ListResponse(tasks=[_task(TaskState.QUEUED)])

    def Watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """Plays the next script: its messages, then (all but the last script) a break with `code`."""
        with self.lock:
            self.calls.append(Received("Watch", request, time.monotonic()))
            script = self.watch_script.pop(0)
            breaks = bool(self.watch_script)
        yield from script
        if breaks:
            self._fail(context)


def _task(state: TaskState, revision: int = 1) -> task_pb2.Task:
    return task_pb2.Task(id=TASK_ID, kind="echo", state=int(state), revision=revision)


def _event(kind: int, state: TaskState, revision: int) -> task_service_pb2.WatchResponse:
    return task_service_pb2.WatchResponse(type=kind, task=_task(state, revision))


@pytest.fixture
def serve() -> Iterator[Any]:
    """`serve(service)` starts a plaintext server of it and returns a client; both end with the test."""
    servers: list[grpc.Server] = []
    clients: list[vow.Client] = []

    def start(service: FlakyTaskService, **client_options: Any) -> vow.Client:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        task_service_pb2_grpc.add_TaskServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        client = vow.Client(f"127.0.0.1:{port}", **client_options)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.stop(grace=None)


CALLS = {
    "Get": lambda client: client.get(TASK_ID),
    "Await": lambda client: client.await_(TASK_ID, timeout=5),
    "AwaitMany": lambda client: client.await_many([TASK_ID], timeout=5),
    "Cancel": lambda client: client.cancel(TASK_ID),
    "Delete": lambda client: client.delete(TASK_ID),
    "List": lambda client: client.list(),
    "Submit": lambda client: client.submit("echo", {"a": 1}),
}


@pytest.mark.parametrize("code", RETRIED)
def test_a_reset_or_unavailable_get_is_retried(serve: Any, code: str) -> None:
    service = FlakyTaskService(code=code, failures=2)
    client = serve(service)

    task = client.get(TASK_ID)

    assert task.id == TASK_ID
    assert [call.method for call in service.calls] == ["Get"] * 3


@pytest.mark.parametrize("method", sorted(CALLS))
def test_every_call_safe_to_repeat_is_retried(serve: Any, method: str) -> None:
    service = FlakyTaskService(code="UNAVAILABLE", failures=1)
    client = serve(service)

    CALLS[method](client)

    assert [call.method for call in service.calls] == [method] * 2


@pytest.mark.parametrize("code", NOT_RETRIED)
def test_other_codes_are_not_retried(serve: Any, code: str) -> None:
    service = FlakyTaskService(code=code, failures=1)
    client = serve(service)

    with pytest.raises(vow.VowError) as raised:
        client.get(TASK_ID)

    assert raised.value.code.name == code
    assert len(service.calls) == 1


def test_a_submit_keeps_its_idempotency_key_across_retries(serve: Any) -> None:
    service = FlakyTaskService(code="INTERNAL", failures=1)
    client = serve(service)

    client.submit("echo", None)
    client.submit("echo", None, idempotency_key="mine")

    keys = [call.request.idempotency_key for call in service.calls]
    assert len(keys) == 3 and keys[0] == keys[1] != "" and keys[2] == "mine"


def test_a_submit_without_an_idempotency_key_is_not_retried(serve: Any) -> None:
    service = FlakyTaskService(code="UNAVAILABLE", failures=1)
    client = serve(service)

    with pytest.raises(vow.VowError) as raised:
        client.submit("echo", None, idempotency_key="")

    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert len(service.calls) == 1


def test_run_is_never_retried(serve: Any) -> None:
    service = FlakyTaskService(code="UNAVAILABLE", failures=1)
    client = serve(service)

    with pytest.raises(vow.VowError):
        client.run("echo", None, timeout=5)

    assert len(service.calls) == 1


def test_retries_are_bounded_in_number(serve: Any) -> None:
    service = FlakyTaskService(code="UNAVAILABLE", failures=1000)
    client = serve(service, retries=2)

    with pytest.raises(vow.VowError) as raised:
        client.get(TASK_ID)

    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert len(service.calls) == 3


def test_retries_stop_at_the_call_timeout(serve: Any) -> None:
    service = FlakyTaskService(code="UNAVAILABLE", failures=1000)
    client = serve(service, retries=1000)

    started = time.monotonic()
    with pytest.raises(vow.VowError):
        client.get(TASK_ID, timeout=0.6)
    elapsed = time.monotonic() - started

    assert elapsed < 0.6 + 0.4, "no attempt and no pause past the timeout (slack for a loaded machine)"
    assert 2 <= len(service.calls) < 1000, "it did retry, within the bound"


def test_retry_info_sets_the_least_pause(serve: Any) -> None:
    service = FlakyTaskService(code="UNAVAILABLE", failures=1, retry_after=0.4)
    client = serve(service)

    client.get(TASK_ID)

    first, second = service.calls
    assert second.at - first.at >= 0.4


def test_a_retry_info_past_the_timeout_fails_at_once(serve: Any) -> None:
    service = FlakyTaskService(code="UNAVAILABLE", failures=1, retry_after=30)
    client = serve(service)

    started = time.monotonic()
    with pytest.raises(vow.VowError) as raised:
        client.get(TASK_ID, timeout=2)

    assert time.monotonic() - started < 1, "it did not sleep towards a retry it could not make"
    assert raised.value.retry_after == 30
    assert len(service.calls) == 1


def test_a_broken_watch_resumes_after_the_last_revision_it_saw(serve: Any) -> None:
    snapshot, change = task_service_pb2.WATCH_EVENT_TYPE_SNAPSHOT, task_service_pb2.WATCH_EVENT_TYPE_CHANGE
    service = FlakyTaskService(code="INTERNAL")
    service.watch_script = [
        [_event(snapshot, TaskState.QUEUED, 4), _event(change, TaskState.RUNNING, 5)],
        [],  # broken again before any message
        [_event(change, TaskState.SUCCEEDED, 6)],
    ]
    client = serve(service)

    watch = client.watch(TASK_ID, timeout=10)
    events = list(watch)

    assert [(event.type, event.task.revision) for event in events if event.task] == [
        (WatchEventType.SNAPSHOT, 4),
        (WatchEventType.CHANGE, 5),
        (WatchEventType.CHANGE, 6),
    ]
    assert [call.request.after_revision for call in service.calls] == [0, 5, 5]
    assert watch.resumes == 2 and watch.last_revision == 6


def test_a_broken_filter_watch_resumes_with_a_resync(serve: Any) -> None:
    change = task_service_pb2.WATCH_EVENT_TYPE_CHANGE
    service = FlakyTaskService(code="UNAVAILABLE")
    service.watch_script = [[_event(change, TaskState.QUEUED, 1)], [_event(change, TaskState.RUNNING, 2)]]
    client = serve(service)

    events = list(client.watch(kinds=["echo"], timeout=10))

    assert [event.type for event in events] == [WatchEventType.CHANGE, WatchEventType.RESYNC, WatchEventType.CHANGE]
    assert events[1].task is None, "a filter watch's RESYNC says: list again"
    assert [list(call.request.kinds) for call in service.calls] == [["echo"], ["echo"]]


def test_a_watch_that_keeps_breaking_gives_up(serve: Any) -> None:
    service = FlakyTaskService(code="UNAVAILABLE")
    service.watch_script = [[] for _ in range(4)]
    client = serve(service, retries=2)

    with pytest.raises(vow.VowError) as raised:
        list(client.watch(TASK_ID, timeout=10))

    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert len(service.calls) == 3


@pytest.mark.parametrize("method", ["Await", "AwaitMany"])
def test_a_retried_wait_asks_only_for_what_is_left_of_its_bound(serve: Any, method: str) -> None:
    service = FlakyTaskService(code="UNAVAILABLE", failures=1, retry_after=0.3)
    client = serve(service)

    CALLS[method](client)  # a bound of 5 s

    first, second = (call.request.timeout.ToNanoseconds() / 1e9 for call in service.calls)
    assert 4.5 < first <= 5.0
    assert second <= first - 0.3, "the pause came out of the bound"
