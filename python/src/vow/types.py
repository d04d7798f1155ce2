"""Python views of the vow.v1 messages a caller reads: `Task`, `WatchEvent`, states.

Each view decodes what a caller reaches for first (the state as an enum, the
input and output as Python values, the error as `ErrorDetails`, times as aware
datetimes) and keeps the message itself in `.proto` for everything else, so the
package never hides a field the API has.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from google.protobuf import timestamp_pb2

from vow._payload import from_payload
from vow.errors import ErrorDetails
from vow.v1 import task_pb2, task_service_pb2


class TaskState(enum.IntEnum):
    """Where a task is: QUEUED -> RUNNING -> (RETRY_WAIT -> RUNNING)* -> a terminal state."""

    UNSPECIFIED = task_pb2.TASK_STATE_UNSPECIFIED
    QUEUED = task_pb2.TASK_STATE_QUEUED
    RUNNING = task_pb2.TASK_STATE_RUNNING
    RETRY_WAIT = task_pb2.TASK_STATE_RETRY_WAIT
    SUCCEEDED = task_pb2.TASK_STATE_SUCCEEDED
    FAILED = task_pb2.TASK_STATE_FAILED
    CANCELLED = task_pb2.TASK_STATE_CANCELLED

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELLED: nothing changes after them."""
        return self in _TERMINAL


_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


class WatchEventType(enum.IntEnum):
    """What a watch message carries."""

    UNSPECIFIED = task_service_pb2.WATCH_EVENT_TYPE_UNSPECIFIED
    SNAPSHOT = task_service_pb2.WATCH_EVENT_TYPE_SNAPSHOT
    CHANGE = task_service_pb2.WATCH_EVENT_TYPE_CHANGE
    RESYNC = task_service_pb2.WATCH_EVENT_TYPE_RESYNC
    HEARTBEAT = task_service_pb2.WATCH_EVENT_TYPE_HEARTBEAT


@dataclass(frozen=True)
class Progress:
    """The latest progress a handler reported."""

    percent: float
    message: str


@dataclass(frozen=True)
class Task:
    """A snapshot of a task. `done` says whether it can still change."""

    proto: task_pb2.Task

    @property
    def id(self) -> str:
        return self.proto.id

    @property
    def kind(self) -> str:
        return self.proto.kind

    @property
    def state(self) -> TaskState:
        return TaskState(self.proto.state)

    @property
    def done(self) -> bool:
        """True when the task is terminal (SUCCEEDED, FAILED or CANCELLED)."""
        return self.state.terminal

    @property
    def revision(self) -> int:
        return self.proto.revision

    @property
    def attempt(self) -> int:
        return self.proto.attempt

    @property
    def max_attempts(self) -> int:
        return self.proto.max_attempts

    @property
    def input(self) -> Any:
        """The input as a Python value (JSON decoded, bytes as bytes)."""
        return from_payload(self.proto.input)

    @property
    def output(self) -> Any:
        """The output as a Python value; None until the task SUCCEEDED."""
        return from_payload(self.proto.output)

    @property
    def error(self) -> ErrorDetails | None:
        """Why the task FAILED or was CANCELLED (or why the last attempt failed); None otherwise."""
        if not self.proto.HasField("error"):
            return None
        return ErrorDetails.from_status(self.proto.error)

    @property
    def progress(self) -> Progress | None:
        if not self.proto.HasField("progress"):
            return None
        return Progress(self.proto.progress.percent, self.proto.progress.message)

    @property
    def labels(self) -> Mapping[str, str]:
        return dict(self.proto.labels)

    @property
    def priority(self) -> int:
        return self.proto.priority

    @property
    def trace_id(self) -> str:
        return self.proto.trace_id

    @property
    def namespace(self) -> str:
        return self.proto.namespace

    @property
    def worker_id(self) -> str:
        return self.proto.worker_id

    @property
    def cancel_requested(self) -> bool:
        return self.proto.cancel_requested

    @property
    def create_time(self) -> datetime | None:
        return _time(self.proto, "create_time")

    @property
    def end_time(self) -> datetime | None:
        return _time(self.proto, "end_time")

    @property
    def deadline(self) -> datetime | None:
        return _time(self.proto, "deadline")

    def __repr__(self) -> str:
        return f"Task(id={self.id!r}, kind={self.kind!r}, state={self.state.name}, attempt={self.attempt}, revision={self.revision})"


@dataclass(frozen=True)
class WatchEvent:
    """One message of a watch: its type and the task after the change (None for heartbeats)."""

    type: WatchEventType
    task: Task | None

    @classmethod
    def from_proto(cls, message: task_service_pb2.WatchResponse) -> WatchEvent:
        task = Task(message.task) if message.HasField("task") else None
        return cls(WatchEventType(message.type), task)


@dataclass(frozen=True)
class AwaitManySummary:
    """How the awaited tasks stand: counts by outcome, and FAILED ones by error code name."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    unfinished: int = 0
    not_found: int = 0
    failed_by_code: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AwaitedMany:
    """What `Client.await_many` found: `done` when the wait (ALL or ANY) was satisfied."""

    done: bool
    finished: Sequence[Task]
    not_found_ids: Sequence[str]
    summary: AwaitManySummary

    @classmethod
    def from_proto(cls, message: task_service_pb2.AwaitManyResponse) -> AwaitedMany:
        summary = message.summary
        return cls(
            done=message.done,
            finished=tuple(Task(task) for task in message.finished),
            not_found_ids=tuple(message.not_found_ids),
            summary=AwaitManySummary(
                succeeded=summary.succeeded,
                failed=summary.failed,
                cancelled=summary.cancelled,
                unfinished=summary.unfinished,
                not_found=summary.not_found,
                failed_by_code=dict(summary.failed_by_code),
            ),
        )


@dataclass(frozen=True)
class TaskPage:
    """One page of `Client.list`: the tasks, newest first, and the token of the next page ("" at the end)."""

    tasks: Sequence[Task]
    next_page_token: str

    @classmethod
    def from_proto(cls, message: task_service_pb2.ListResponse) -> TaskPage:
        return cls(tuple(Task(task) for task in message.tasks), message.next_page_token)


def to_datetime(timestamp: timestamp_pb2.Timestamp) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(timestamp.seconds + timestamp.nanos / 1e9, tz=timezone.utc)


def _time(message: Any, name: str) -> datetime | None:
    return to_datetime(getattr(message, name)) if message.HasField(name) else None
