"""OpenTelemetry, when it is installed; nothing at all when it is not.

Two jobs: put the current context (W3C `traceparent`, `tracestate`, `baggage`)
into the metadata of every call, so vowd's spans join the caller's trace; and
run each handler in a span whose parent is the attempt's span (the lease's
`traceparent`), so a handler's own spans and calls join the submitter's trace.
The package never requires opentelemetry: without it both are no-ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # opentelemetry is an optional dependency
    propagate = None  # type: ignore[assignment]

INSTRUMENTATION_NAME = "vow"


def available() -> bool:
    """True when opentelemetry-api can be imported."""
    return propagate is not None


def current_context_metadata() -> list[tuple[str, str]]:
    """The current context as gRPC metadata; empty without opentelemetry or an active span."""
    if propagate is None:
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


@contextlib.contextmanager
def handler_span(
    name: str,
    traceparent: str,
    tracestate: str,
    attributes: dict[str, Any],
    tracer_provider: Any = None,
) -> Iterator[Any]:
    """Runs the body inside a span that is a child of `traceparent`; yields the span (or None).

    An exception escaping the body marks the span as an error and is recorded,
    then goes on; the caller maps it to the attempt's outcome.
    """
    if propagate is None:
        yield None
        return
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    parent = propagate.extract(carrier) if traceparent else otel_context.Context()
    tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as error:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            raise


def mark_error(span: Any, code_name: str, message: str) -> None:
    """Marks the handler's span failed for an outcome that was not an exception escaping it."""
    if span is not None and propagate is not None:
        span.set_status(Status(StatusCode.ERROR, f"{code_name}: {message}"))
