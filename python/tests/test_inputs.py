"""Inputs the package refuses before anything is sent: they fail at once, naming what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

import vow
from vow._payload import from_payload, to_payload
from vow.v1 import task_pb2

NOWHERE = "127.0.0.1:1"


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ({1, 2}, TypeError, "set"),
        ({1: "a"}, TypeError, "keys are strings"),
        (float("nan"), ValueError, "not a JSON number"),
        (2**60, ValueError, "too large"),
        (object(), TypeError, "object"),
    ],
    ids=["set", "int-key", "nan", "huge-int", "object"],
)
def test_values_json_cannot_carry_are_refused(value: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        to_payload(value)


@pytest.mark.parametrize("value", [None, True, 0, -3, 2.5, "text", [], {}, {"a": [1, {"b": None}]}, b"\x00raw"])
def test_what_json_or_bytes_can_carry_comes_back_unchanged(value: Any) -> None:
    assert from_payload(to_payload(value)) == value


@pytest.mark.parametrize("code", ["OK", 0, "NOT_A_CODE", 99])
def test_a_task_error_needs_a_real_error_code(code: Any) -> None:
    with pytest.raises(ValueError):
        vow.TaskError(code, "message")


@pytest.mark.parametrize("options", [{"retries": -1}, {"token": "two\nlines"}, {"token": " padded "}])
def test_bad_client_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        vow.Client(NOWHERE, **options)


def test_a_worker_without_handlers_does_not_start() -> None:
    with vow.Client(NOWHERE) as client:
        with pytest.raises(ValueError, match="handler"):
            vow.Worker(client).run(install_signal_handlers=False)


@pytest.mark.parametrize("percent", [-1, 100.5])
def test_progress_is_a_percentage(percent: float) -> None:
    context = vow.Context(
        vow.Task(task_pb2.Task(id="t")),
        deadline=None,
        deadline_monotonic=None,
        traceparent="",
        tracestate="",
        worker_id="w",
        client=None,  # type: ignore[arg-type]
        on_progress=lambda: None,
    )

    with pytest.raises(ValueError, match="0 to 100"):
        context.progress(percent)
