"""Trace continuation: the handler's span is a child of the attempt span the lease names,
in the submitter's trace (spans caught with the OpenTelemetry SDK's in-memory exporter)."""

from __future__ import annotations

from typing import Any

import pytest
from support import SETTLE_SECONDS, new_worker

import vow

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402


@pytest.fixture
def spans() -> tuple[Any, InMemorySpanExporter]:
    """A tracer provider of the test's own (not the global one), exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_the_handler_span_is_a_child_of_the_attempt(client: vow.Client, run_worker: Any, spans: Any) -> None:
    provider, exporter = spans
    worker = new_worker(client, tracer_provider=provider)
    seen: dict[str, Any] = {}

    @worker.handler("py-trace")
    def traced(ctx: vow.Context) -> None:
        seen["traceparent"] = ctx.traceparent
        seen["current"] = trace.get_current_span().get_span_context()

    with run_worker(worker):
        with provider.get_tracer("test").start_as_current_span("submitter") as submitter:
            task = client.submit("py-trace", "ok")
        finished = client.await_(task.id, timeout=SETTLE_SECONDS)

    submitter_trace_id = submitter.get_span_context().trace_id
    _, trace_id, attempt_span_id, _ = seen["traceparent"].split("-")
    (handler_span,) = [span for span in exporter.get_finished_spans() if span.name == "task.handle"]
    assert finished.trace_id == f"{submitter_trace_id:032x}", "the client sent its context with Submit"
    assert int(trace_id, 16) == submitter_trace_id, "the attempt is in the submitter's trace"
    assert handler_span.context.trace_id == submitter_trace_id
    assert handler_span.parent is not None and handler_span.parent.span_id == int(attempt_span_id, 16)
    assert handler_span.parent.is_remote
    assert seen["current"].span_id == handler_span.context.span_id, "the handler runs inside its span"
    assert handler_span.attributes["task.id"] == task.id
    assert handler_span.attributes["task.attempt"] == 1
    assert handler_span.status.status_code is StatusCode.UNSET


def test_a_failed_handler_marks_its_span(client: vow.Client, run_worker: Any, spans: Any) -> None:
    provider, exporter = spans
    worker = new_worker(client, tracer_provider=provider)

    @worker.handler("py-trace")
    def refuse(ctx: vow.Context) -> None:
        raise vow.TaskError("INVALID_ARGUMENT", "refused")

    with run_worker(worker):
        client.await_(client.submit("py-trace", None).id, timeout=SETTLE_SECONDS)

    (handler_span,) = [span for span in exporter.get_finished_spans() if span.name == "task.handle"]
    assert handler_span.status.status_code is StatusCode.ERROR
    assert handler_span.status.description == "INVALID_ARGUMENT: refused"
    assert [event.name for event in handler_span.events] == ["exception"]
