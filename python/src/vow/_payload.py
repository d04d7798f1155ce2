"""Conversions between Python values and `vow.v1.Payload`.

JSON-able values travel as `google.protobuf.Value` (so a grpcurl user sees plain
JSON), bytes as `binary` with a content type. This is the one place that
decides how a value crosses the wire, for inputs and outputs alike.

The conversions walk the values directly rather than through json_format
(JSON text in between): every task crosses here twice on each side, and the
direct walk is several times cheaper.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2

from vow.v1 import task_pb2

BINARY_CONTENT_TYPE = "application/octet-stream"
# Above this, a double no longer holds every integer: such ints are refused rather than rounded.
MAX_EXACT_INTEGER = 2**53


def to_payload(value: Any, content_type: str = "") -> task_pb2.Payload:
    """A JSON-able value as a JSON payload, bytes as a binary one, a Payload as it is.

    What JSON cannot carry (a set, an arbitrary object, NaN, a huge int) raises
    TypeError or ValueError naming it, before anything is sent.
    """
    if isinstance(value, task_pb2.Payload):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return task_pb2.Payload(binary=bytes(value), content_type=content_type or BINARY_CONTENT_TYPE)
    payload = task_pb2.Payload(content_type=content_type)
    _fill(payload.json, value)
    return payload


def from_payload(payload: task_pb2.Payload) -> Any:
    """The Python value of a payload: JSON as dicts, lists and scalars; binary as bytes; unset as None."""
    kind = payload.WhichOneof("data")
    if kind == "json":
        return _python(payload.json)
    if kind == "binary":
        return payload.binary
    return None


def _fill(message: struct_pb2.Value, value: Any) -> None:
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif value is True or value is False:
        message.bool_value = value
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, (int, float)):
        message.number_value = _number(value)
    elif isinstance(value, dict):
        fields = message.struct_value.fields
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys are strings, not {type(key).__name__} ({key!r})")
            _fill(fields[key], item)
        if not value:
            message.struct_value.SetInParent()
    elif isinstance(value, (list, tuple)):
        values = message.list_value.values
        for item in value:
            _fill(values.add(), item)
        if not value:
            message.list_value.SetInParent()
    else:
        raise TypeError(f"a {type(value).__name__} cannot travel as JSON: {value!r}")


def _number(value: int | float) -> float:
    if isinstance(value, int) and abs(value) > MAX_EXACT_INTEGER:
        raise ValueError(f"{value} is too large for a JSON number (a double): send it as a string")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value} is not a JSON number")
    return number


def _python(message: struct_pb2.Value) -> Any:
    kind = message.WhichOneof("kind")
    if kind == "string_value":
        return message.string_value
    if kind == "number_value":
        number = message.number_value
        # google.protobuf.Value keeps numbers as doubles; whole ones come back as int, as JSON would.
        return int(number) if number.is_integer() and abs(number) <= MAX_EXACT_INTEGER else number
    if kind == "struct_value":
        return {key: _python(item) for key, item in message.struct_value.fields.items()}
    if kind == "list_value":
        return [_python(item) for item in message.list_value.values]
    if kind == "bool_value":
        return message.bool_value
    return None
