"""Builds the request messages whose options a caller passes as keywords.

Times are accepted the Python way (seconds as float, `timedelta`, aware
`datetime`) and converted here once, so `Client` stays a thin layer of calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from vow._payload import to_payload
from vow.v1 import task_pb2, task_service_pb2

Seconds = float | int | timedelta


@dataclass(frozen=True)
class Retry:
    """How failed attempts are retried; None takes the server's default (or the kind's)."""

    max_attempts: int | None = None
    initial_backoff: Seconds | None = None
    max_backoff: Seconds | None = None
    backoff_multiplier: float | None = None
    jitter: float | None = None
    non_retryable_reasons: Iterable[str] = field(default_factory=tuple)

    def to_proto(self) -> task_pb2.RetryPolicy:
        policy = task_pb2.RetryPolicy(
            max_attempts=self.max_attempts or 0,
            non_retryable_reasons=list(self.non_retryable_reasons),
        )
        if self.initial_backoff is not None:
            policy.initial_backoff.CopyFrom(duration(self.initial_backoff))
        if self.max_backoff is not None:
            policy.max_backoff.CopyFrom(duration(self.max_backoff))
        if self.backoff_multiplier is not None:
            policy.backoff_multiplier = self.backoff_multiplier
        if self.jitter is not None:
            policy.jitter = self.jitter
        return policy


Request = TypeVar("Request", task_service_pb2.SubmitRequest, task_service_pb2.RunRequest)


def task_request(
    message_type: type[Request],
    kind: str,
    input: Any,
    *,
    content_type: str = "",
    labels: Mapping[str, str] | None = None,
    priority: int = 0,
    idempotency_key: str = "",
    deadline: datetime | None = None,
    ttl: Seconds | None = None,
    attempt_timeout: Seconds | None = None,
    not_before: datetime | None = None,
    retention: Seconds | None = None,
    max_attempts: int | None = None,
    retry: Retry | task_pb2.RetryPolicy | None = None,
) -> Request:
    """A SubmitRequest or RunRequest (they have the same fields) from Python values."""
    request = message_type(
        kind=kind,
        labels=dict(labels or {}),
        priority=priority,
        idempotency_key=idempotency_key,
    )
    if input is not None or content_type:
        request.input.CopyFrom(to_payload(input, content_type))
    policy = retry.to_proto() if isinstance(retry, Retry) else retry
    if max_attempts is not None:
        policy = policy or task_pb2.RetryPolicy()
        policy.max_attempts = max_attempts
    if policy is not None:
        request.retry.CopyFrom(policy)
    if deadline is not None:
        request.deadline.CopyFrom(timestamp(deadline))
    if not_before is not None:
        request.not_before.CopyFrom(timestamp(not_before))
    for name, value in (("ttl", ttl), ("attempt_timeout", attempt_timeout), ("retention", retention)):
        if value is not None:
            getattr(request, name).CopyFrom(duration(value))
    return request


def duration(value: Seconds) -> duration_pb2.Duration:
    """Seconds (or a timedelta) as a protobuf Duration."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def seconds(value: Seconds) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A datetime as a protobuf Timestamp; a naive one is local time, as everywhere in Python."""
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(timezone.utc))
    return message
