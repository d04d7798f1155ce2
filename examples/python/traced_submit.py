"""Calls Vow inside an OpenTelemetry span, so the server's spans join its trace.

`vow.Client` injects the current OpenTelemetry context (W3C `traceparent`,
`tracestate`, `baggage`) into the metadata of every call when opentelemetry
is installed; the server makes its RPC span a child of it, and every attempt
of a submitted task a child of that.

    python traced_submit.py 127.0.0.1:50051 submit echo '{"hello": "world"}'
    python traced_submit.py 127.0.0.1:50051 await TASK_ID --wait 10

`--trace-id`/`--span-id` fix the ids of the client span (random otherwise),
so a test can look for them at its OTLP receiver. Prints one JSON object:
the `traceparent` that was sent and the task as the server answered.

Needs the `vow` package (python/ in this repository), opentelemetry-api and
opentelemetry-sdk.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

from google.protobuf import json_format
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator

import vow


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
    with vow.Client(args.target) as client, tracer.start_as_current_span(
        f"traced_submit {args.command}", kind=trace.SpanKind.CLIENT
    ):
        client.wait_ready(timeout=10)
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # what the client adds to each call's metadata
        if args.command == "submit":
            task = client.submit(args.kind, json.loads(args.input), retry=_retry(args))
            answer: dict[str, Any] = {"task": _task_json(task)}
        else:
            task = client.await_(args.id, timeout=args.wait)
            answer = {"task": _task_json(task), "done": task.done}
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


def _retry(args: argparse.Namespace) -> vow.Retry | None:
    if args.max_attempts is None and args.backoff_ms is None:
        return None
    backoff = None if args.backoff_ms is None else args.backoff_ms / 1000
    return vow.Retry(max_attempts=args.max_attempts, initial_backoff=backoff, max_backoff=backoff)


def _task_json(task: vow.Task) -> dict[str, Any]:
    return json_format.MessageToDict(task.proto, preserving_proto_field_name=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
