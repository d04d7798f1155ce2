"""The two errors of the package: `VowError` for calls the server refused, and
`TaskError`, which a handler raises to fail its attempt with a chosen code.

Calls to vowd follow the rich error model: every refused call carries a
`google.rpc.ErrorInfo` (domain `vow`) in `grpc-status-details-bin`, bad requests
a `BadRequest`, a full queue a `RetryInfo`. `VowError` unpacks them once, so a
caller branches on `error.code` and `error.reason` rather than on message text.
A failed *task* is not an exception: its error lives in `Task.error`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# The ErrorInfo domain of the errors a Python worker reports (as the Node worker does).
WORKER_ERROR_DOMAIN = "vow.worker"

_DETAIL_TYPES: tuple[type[Message], ...] = (
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


@dataclass(frozen=True)
class ErrorDetails:
    """What the details of a `google.rpc.Status` say, decoded once.

    Shared by refused calls (`VowError`) and by failed tasks (`Task.error`).
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    details: tuple[Message, ...] = ()

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> ErrorDetails:
        """Decodes a status: known google.rpc detail types unpacked, the rest left as Any."""
        details = tuple(_unpack(detail) for detail in status.details)
        info = next(_of_type(details, error_details_pb2.ErrorInfo), None)
        retry = next(_of_type(details, error_details_pb2.RetryInfo), None)
        violations = {
            violation.field: violation.description
            for bad_request in _of_type(details, error_details_pb2.BadRequest)
            for violation in bad_request.field_violations
        }
        return cls(
            code=_code_or_unknown(status.code),
            message=status.message,
            reason=info.reason if info else "",
            domain=info.domain if info else "",
            metadata=dict(info.metadata) if info else {},
            field_violations=violations,
            retry_after=retry.retry_delay.ToNanoseconds() / 1e9 if retry and retry.HasField("retry_delay") else None,
            details=details,
        )


class VowError(Exception):
    """A call vowd (or the channel) refused, with the status code and the decoded details.

    `code` is a `grpc.StatusCode`; `reason` the ErrorInfo reason (for example
    `LEASE_LOST`, empty when the server sent none); `field_violations` maps a
    request field to what is wrong with it; `retry_after` is the server's
    RetryInfo delay in seconds, if any.
    """

    def __init__(self, error: ErrorDetails):
        super().__init__(f"{error.code.name}: {error.message}")
        self.error = error

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> VowError:
        """Reads the code, message and rich details of a failed call (sync or grpc.aio)."""
        # A sync failure is a grpc.Call; grpc.aio's AioRpcError has the same methods but is not one.
        if not callable(getattr(error, "code", None)):
            return cls(ErrorDetails(grpc.StatusCode.UNKNOWN, str(error)))
        try:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
        except ValueError:  # details that disagree with the status line: trust the line
            status = None
        if status is None:
            status = status_pb2.Status(code=error.code().value[0], message=error.details() or "")  # type: ignore[attr-defined]
        return cls(ErrorDetails.from_status(status))

    @property
    def code(self) -> grpc.StatusCode:
        return self.error.code

    @property
    def message(self) -> str:
        return self.error.message

    @property
    def reason(self) -> str:
        return self.error.reason

    @property
    def domain(self) -> str:
        return self.error.domain

    @property
    def metadata(self) -> Mapping[str, str]:
        return self.error.metadata

    @property
    def field_violations(self) -> Mapping[str, str]:
        return self.error.field_violations

    @property
    def retry_after(self) -> float | None:
        return self.error.retry_after

    @property
    def details(self) -> tuple[Message, ...]:
        return self.error.details


class TaskError(Exception):
    """Raised by a handler to fail its attempt with an explicit gRPC code.

    The code decides the retry as for vowd's own handlers: UNAVAILABLE,
    DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED and INTERNAL are retried,
    the others end the task. `reason` (default: the code's name) is what a
    task's `non_retryable_reasons` match; `retry_after` (seconds) sets the
    delay before the next attempt; `metadata` travels in the ErrorInfo.

        raise vow.TaskError("INVALID_ARGUMENT", "no image in the input", reason="BAD_IMAGE")
    """

    def __init__(
        self,
        code: grpc.StatusCode | str | int,
        message: str,
        *,
        reason: str | None = None,
        retry_after: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.code = status_code(code)
        if self.code is grpc.StatusCode.OK:
            raise ValueError("a TaskError needs an error code, not OK")
        self.message = message
        self.reason = self.code.name if reason is None else reason
        self.retry_after = retry_after
        self.metadata = dict(metadata or {})

    def to_status(self) -> status_pb2.Status:
        """The `google.rpc.Status` a Complete carries: ErrorInfo always, RetryInfo when asked."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=WORKER_ERROR_DOMAIN, metadata=self.metadata)
        details = [_pack(info)]
        if self.retry_after is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromNanoseconds(max(0, round(self.retry_after * 1e9)))
            details.append(_pack(retry))
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)


def status_code(code: grpc.StatusCode | str | int) -> grpc.StatusCode:
    """A grpc.StatusCode from itself, its name ("UNAVAILABLE") or its number (14)."""
    if isinstance(code, grpc.StatusCode):
        return code
    for candidate in grpc.StatusCode:
        if code == candidate.name or code == candidate.value[0]:
            return candidate
    raise ValueError(f"{code!r} is not a gRPC status code")


def _code_or_unknown(number: int) -> grpc.StatusCode:
    try:
        return status_code(number)
    except ValueError:
        return grpc.StatusCode.UNKNOWN


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _unpack(detail: any_pb2.Any) -> Message:
    for detail_type in _DETAIL_TYPES:
        if detail.Is(detail_type.DESCRIPTOR):
            message = detail_type()
            detail.Unpack(message)
            return message
    return detail


def _of_type(messages: Iterable[Message], message_type: type[Any]) -> Iterator[Any]:
    return (message for message in messages if isinstance(message, message_type))
