"""Python client and worker SDK of the Vow task service (gRPC API `vow.v1`).

    import vow

    client = vow.Client("127.0.0.1:50051")
    task = client.await_(client.submit("echo", {"hello": "world"}).id, timeout=10)

    worker = vow.Worker(client)

    @worker.handler("resize")
    def resize(ctx: vow.Context) -> dict:
        return {"resized": ctx.input["image"]}

The generated stubs are importable as `vow.v1.task_pb2`, `vow.v1.task_service_pb2_grpc`, ...
"""

from vow._requests import Retry
from vow.client import Client
from vow.context import Cancelled, CancelReason, Context
from vow.errors import ErrorDetails, TaskError, VowError
from vow.types import AwaitedMany, AwaitManySummary, Progress, Task, TaskPage, TaskState, WatchEvent, WatchEventType
from vow.worker import Worker

__all__ = [
    "AwaitManySummary",
    "AwaitedMany",
    "CancelReason",
    "Cancelled",
    "Client",
    "Context",
    "ErrorDetails",
    "Progress",
    "Retry",
    "Task",
    "TaskError",
    "TaskPage",
    "TaskState",
    "VowError",
    "WatchEvent",
    "WatchEventType",
    "Worker",
]
