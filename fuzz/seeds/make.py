#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target: small, valid inputs that
the fuzzer mutates. Run from anywhere; rewrites fuzz/seeds/<target>/."""

import pathlib
import struct

SEEDS = pathlib.Path(__file__).resolve().parent


def varint(value):
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number, value):
    """A protobuf field: int → varint, float → fixed32/64 via tuple, bytes/str/list → length-delimited."""
    if isinstance(value, bool) or isinstance(value, int):
        return varint(number << 3) + varint(int(value))
    if isinstance(value, tuple):  # ("f32", x) or ("f64", x)
        kind, number_value = value
        if kind == "f32":
            return varint(number << 3 | 5) + struct.pack("<f", number_value)
        return varint(number << 3 | 1) + struct.pack("<d", number_value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def message(*fields):
    return b"".join(field(number, value) for number, value in fields)


def duration(seconds, nanos=0):
    return message((1, seconds), (2, nanos))


TASK_ID = "0123456789abcdef0123456789abcdef"
TOKEN = f"{TASK_ID}.7.{'a' * 32}"
NUMBER = message((2, ("f64", 1.5)))
# Payload{json: Value{struct_value: Struct{fields: {"n": 1.5}}}, content_type}
JSON_INPUT = message((1, message((5, message((1, message((1, "n"), (2, NUMBER))))))), (3, "application/json"))
PAYLOAD_BINARY = message((2, b"\x00\x01\xff"), (3, "application/octet-stream"))
RETRY = message((1, 3), (2, duration(1)), (3, duration(10)), (4, ("f64", 2.0)), (5, ("f64", 0.1)), (6, "BAD"))
LABEL = message((1, "team"), (2, "a"))
SUBMIT = message(
    (1, "echo"), (2, JSON_INPUT), (3, LABEL), (4, 5), (6, RETRY), (7, duration(5)),
    (9, duration(60)), (10, duration(3600)), (11, "key-1"),
)
ERROR_INFO = message((1, "FUZZ"), (2, "worker"), (3, message((1, "k"), (2, "v"))))
RETRY_INFO = message((1, duration(2)))
STATUS = message(
    (1, 14), (2, "unavailable"),
    (3, message((1, "type.googleapis.com/google.rpc.ErrorInfo"), (2, ERROR_INFO))),
    (3, message((1, "type.googleapis.com/google.rpc.RetryInfo"), (2, RETRY_INFO))),
)

TASK_REQUESTS = {
    "submit": (0, 0, SUBMIT),
    "submit-deadline": (0, 1, message((1, "remote"), (8, message((1, 4_000_000_000), (2, 5))), (5, message((1, 1_700_000_000))))),
    "get": (1, 0, message((1, TASK_ID))),
    "await": (2, 2, message((1, TASK_ID), (2, duration(0, 200_000_000)))),
    "await-many": (3, 1, message((1, TASK_ID), (1, TASK_ID), (2, 2), (3, duration(1)))),
    "watch-filter": (4, 0, message((3, "echo"), (4, LABEL), (5, 1), (5, 4))),
    "watch-task": (4, 1, message((1, TASK_ID), (2, 3))),
    "run": (5, 2, message((1, "echo"), (2, JSON_INPUT), (9, duration(10)))),
    "cancel": (6, 0, message((1, TASK_ID), (2, "no longer needed"))),
    "list": (7, 0, message((1, 20), (2, f"v1.5f5e1000.{TASK_ID}"), (3, 1), (4, "echo"), (5, LABEL))),
    "delete": (8, 1, message((1, TASK_ID), (2, 1))),
    "list-kinds": (9, 0, b""),
    "timeout-only": (11, 3, b""),
}

WORKER_REQUESTS = {
    "poll": (0, 0, message((1, "remote"), (2, "worker-1"), (3, 4), (4, duration(30)), (5, duration(1)))),
    "heartbeat": (1, 0, message((1, TOKEN), (2, message((1, ("f32", 50.0)), (2, "half"))))),
    "complete-output": (2, 0, message((1, TOKEN), (2, JSON_INPUT))),
    "complete-binary": (2, 1, message((1, TOKEN), (2, PAYLOAD_BINARY))),
    "complete-error": (2, 0, message((1, TOKEN), (3, STATUS))),
    "complete-error-last": (2, 2, message((1, TOKEN), (3, message((1, 3), (2, "bad input"))))),
    "release": (3, 0, message((1, TOKEN), (1, TOKEN), (2, "shutting down"))),
}

TIMEOUTS = ["1S", "250m", "99999999H", "0n", "7u", "12345678M", "5H", "1x", "123456789S", "-1S"]

TRACEPARENTS = {
    "sampled": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\ncongo=t61rcWkgMzE,rojo=00f067aa0ba902b7\n\x01\x02",
    "unsampled": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\n\n",
    "later-version": "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds\nk=v\n",
    "invalid-zero": "00-00000000000000000000000000000000-00f067aa0ba902b7-01\n\n",
}

KEY_HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256("test")
AUTH_FILES = {
    "api-key": f'''[[api_keys]]
name = "ci"
namespace = "team-a"
permissions = ["submit", "read"]
sha256 = "{KEY_HASH}"

[namespaces.team-a]
max_queued = 10
max_running = 2
\0test\0\0/vow.v1.TaskService/Submit\0''',
    "admin-mtls": '''[[mtls]]
name = "ops"
san = "spiffe://example.org/ops"
namespace = "*"
permissions = ["read", "cancel", "delete", "work", "submit"]
\0\0spiffe://example.org/ops\0/vow.v1.WorkerService/Poll\0team-b''',
    "jwt": '''[jwt]
jwks_file = "jwks.json"
issuer = "https://issuer.test"
audience = "vow"
namespace_claim = "ns"

[namespaces.default]
max_waiters = 5
max_watchers = 5
\0a.b.c\0\0/grpc.health.v1.Health/Check\0''',
}

# Records as the embedded store's schema tests pin them (versions 2 to 4).
RECORDS = {
    "version-2": (
        "dc001bc41030313233343536373839616263646566a46661696ca752756e6e696e679281a44a736f"
        "6e83a46c6973749301fea178a16ecb3ff8000000000000a46e6f6e65c0a09281a642696e617279a8"
        "3030303130326666b86170706c69636174696f6e2f6f637465742d73747265616d94ab556e617661"
        "696c61626c65a56c61746572ab554e415641494c41424c4581a16ba176029605920100920a00cb40"
        "00000000000000cb00000000000000009093ca422a0000a468616c6692cd03e80081a47465616da1"
        "610093a0a0a00392cd03e80092cd03e80092cd03e800c0c0c0c09200ce1dcd6500923c00a36b6579"
        "a0c2a093a46e6f64650792cd040600"
    ),
    "version-4": (
        "dc001ec41030313233343536373839616263646566a46661696ca752756e6e696e679281a44a736f"
        "6e83a46c6973749301fea178a16ecb3ff8000000000000a46e6f6e65c0a09281a642696e617279a8"
        "3030303130326666b86170706c69636174696f6e2f6f637465742d73747265616d95ab556e617661"
        "696c61626c65a56c61746572ab554e415641494c41424c4581a16ba176920300029605920100920a"
        "00cb4000000000000000cb00000000000000009093ca422a0000a468616c6692cd03e80081a47465"
        "616da1610093a0a0a00392cd03e80092cd03e80092cd03e800c0c0c0c09200ce1dcd6500923c00a3"
        "6b6579a0c2a094a46e6f64650792cd04060094d92030313233343536373839616263646566303132"
        "3334353637383961626364656692140092cd04240093d93730302d34626639326633353737623334"
        "646136613363653932396430653065343733362d303066303637616130626139303262372d3031a3"
        "613d62a0a8776f726b65722d319206a6646967657374a67465616d2d61"
    ),
}


def write(target, name, data):
    directory = SEEDS / target
    directory.mkdir(exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (directory / name).write_bytes(data)


def main():
    for name, (method, choice, body) in TASK_REQUESTS.items():
        write("task_service_requests", name, bytes([method, choice]) + body)
    for name, (method, attempt, body) in WORKER_REQUESTS.items():
        write("worker_service_requests", name, bytes([method, attempt]) + body)
    for index, timeout in enumerate(TIMEOUTS):
        write("grpc_timeout", f"timeout-{index}", timeout)
    for name, text in TRACEPARENTS.items():
        write("traceparent", name, text)
    for name, text in AUTH_FILES.items():
        write("auth_file", name, text)
    for name, hex_record in RECORDS.items():
        write("store_record", name, bytes.fromhex(hex_record))
    jwks = (SEEDS.parent / "keys" / "jwks.json").read_bytes()
    # The jwt target's input is `arbitrary`-shaped: a variant index, then data.
    write("jwt", "jwks", b"\x01" + jwks)
    write("jwt", "token", b"\x00eyJhbGciOiJFUzI1NiIsImtpZCI6ImZ1enoifQ.eyJpc3MiOiJ4In0.c2ln")


if __name__ == "__main__":
    main()
