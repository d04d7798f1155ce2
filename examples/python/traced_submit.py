"""Calls Vow inside an OpenTelemetry span, so the server's spans join its trace.

A gRPC client interceptor injects the current OpenTelemetry context
(W3C `traceparent`, `tracestate`, `baggage`) into the metadata of every call,
the way `opentelemetry-instrumentation-grpc` does; the server makes its RPC
span a child of it, and every attempt of a submitted task a child of that.

    python traced_submit.py 127.0.0.1:50051 submit echo '{"hello": "world"}'
    python traced_submit.py 127.0.0.1:50051 await TASK_ID --wait 10

`--trace-id`/`--span-id` fix the ids of the client span (random otherwise),
so a test can look for them at its OTLP receiver. Prints one JSON object:
the `traceparent` that was sent and the task as the server answered.

Needs grpcio, opentelemetry-api and opentelemetry-sdk, and the stubs that
generate.py writes.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator

from vow.v1 import task_pb2
from vow_client import VowClient


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """grpc.ClientCallDetails is abstract; interceptors pass on their own copy."""


class TraceContextInjector(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the current OpenTelemetry context to the metadata of each call."""

    def _with_context(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the global propagator: W3C trace context and baggage by default
        metadata = list(details.metadata or []) + list(carrier.items())
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_context(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_context(details), request)


class FixedIds(IdGenerator):
    """Gives the first span the ids asked for (random where none was asked)."""

    def __init__(self, trace_id: int | None, span_id: int | None):
        self.trace_id = trace_id or random.getrandbits(128)
        self.span_id = span_id or random.getrandbits(64)

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        span_id, self.span_id = self.span_id, random.getrandbits(64)
        return span_id


def main(argv: list[str]) -> int:
    args = _parse(argv)
    tracer = TracerProvider(id_generator=FixedIds(args.trace_id, args.span_id)).get_tracer("traced_submit")
    channel = grpc.intercept_channel(grpc.insecure_channel(args.target), TraceContextInjector())
    grpc.channel_ready_future(channel).result(timeout=10)
    with VowClient(channel) as vow, tracer.start_as_current_span(
        f"traced_submit {args.command}", kind=trace.SpanKind.CLIENT
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if args.command == "submit":
            task = vow.submit(args.kind, json.loads(args.input), **_options(args))
            answer: dict[str, Any] = {"task": _task_json(task)}
        else:
            response = vow.await_(args.id, wait=args.wait, timeout=args.wait + 5)
            answer = {"task": _task_json(response.task), "done": response.done}
    answer["traceparent"] = carrier["traceparent"]
    print(json.dumps(answer))
    return 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="host:port of vowd")
    parser.add_argument("--trace-id", type=lambda text: int(text, 16), help="32 hex digits")
    parser.add_argument("--span-id", type=lambda text: int(text, 16), help="16 hex digits")
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="submit a task")
    submit.add_argument("kind")
    submit.add_argument("input", help="the input as JSON")
    submit.add_argument("--max-attempts", type=int)
    submit.add_argument("--backoff-ms", type=int, help="initial (and maximal) wait between attempts")
    await_ = commands.add_parser("await", help="wait for a task to finish")
    await_.add_argument("id")
    await_.add_argument("--wait", type=float, default=10.0, help="seconds")
    return parser.parse_args(argv)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    if args.max_attempts is None and args.backoff_ms is None:
        return {}
    retry = task_pb2.RetryPolicy(max_attempts=args.max_attempts or 0)
    if args.backoff_ms is not None:
        backoff = duration_pb2.Duration()
        backoff.FromMilliseconds(args.backoff_ms)
        retry.initial_backoff.CopyFrom(backoff)
        retry.max_backoff.CopyFrom(backoff)
    return {"retry": retry}


def _task_json(task: task_pb2.Task) -> dict[str, Any]:
    return json_format.MessageToDict(task, preserving_proto_field_name=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
