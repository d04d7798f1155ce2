"""What every call carries (a bearer token, the trace context) and TLS, against an
in-process gRPC server that records the metadata it receives (vowd need not
support a feature for the client to send it)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

import vow
from vow.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

TASK_ID = "0123456789abcdef0123456789abcdef"


class RecordingTaskService(task_service_pb2_grpc.TaskServiceServicer):
    """Answers Get and Watch with a fixed task, keeping each call's metadata."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def Get(self, request: Any, context: grpc.ServicerContext) -> task_service_pb2.GetResponse:
        self.metadata.append(dict(context.invocation_metadata()))
        return task_service_pb2.GetResponse(task=task_pb2.Task(id=request.id, state=task_pb2.TASK_STATE_SUCCEEDED))

    def Watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[task_service_pb2.WatchResponse]:
        self.metadata.append(dict(context.invocation_metadata()))
        task = task_pb2.Task(id=request.id, state=task_pb2.TASK_STATE_SUCCEEDED, revision=1)
        yield task_service_pb2.WatchResponse(type=task_service_pb2.WATCH_EVENT_TYPE_SNAPSHOT, task=task)


@pytest.fixture
def recording() -> Iterator[tuple[RecordingTaskService, grpc.Server]]:
    service = RecordingTaskService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(service, server)
    yield service, server
    server.stop(grace=None)


def serve_plaintext(server: grpc.Server) -> str:
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return f"127.0.0.1:{port}"


def test_the_token_goes_with_every_call(recording: Any) -> None:
    service, server = recording
    with vow.Client(serve_plaintext(server), token="s3cret") as client:
        client.get(TASK_ID)
        list(client.watch(TASK_ID, timeout=5))

    assert [metadata["authorization"] for metadata in service.metadata] == ["Bearer s3cret"] * 2


def test_without_a_token_no_authorization_is_sent(recording: Any) -> None:
    service, server = recording
    with vow.Client(serve_plaintext(server)) as client:
        client.get(TASK_ID)

    assert "authorization" not in service.metadata[0]


def test_the_current_trace_context_goes_with_calls(recording: Any) -> None:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    service, server = recording
    tracer = sdk_trace.TracerProvider().get_tracer("test")
    address = serve_plaintext(server)
    with vow.Client(address) as client, vow.Client(address, propagate_trace=False) as untraced:
        with tracer.start_as_current_span("caller") as span:
            client.get(TASK_ID)
            untraced.get(TASK_ID)

    context = span.get_span_context()
    _, trace_id, parent_id, _ = service.metadata[0]["traceparent"].split("-")
    assert (trace_id, parent_id) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert "traceparent" not in service.metadata[1]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost` and its key, made by the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def serve_tls(server: grpc.Server, certificate: tuple[Path, Path]) -> int:
    cert, key = certificate
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return port


def test_tls_with_a_private_ca(recording: Any, certificate: tuple[Path, Path]) -> None:
    service, server = recording
    port = serve_tls(server, certificate)
    ca = certificate[0]

    with vow.Client(f"https://127.0.0.1:{port}", root_certificates=ca, server_name="localhost", token="t") as client:
        assert client.get(TASK_ID).id == TASK_ID
    with vow.Client(f"127.0.0.1:{port}", root_certificates=ca.read_bytes(), server_name="localhost") as client:
        assert client.get(TASK_ID).id == TASK_ID

    assert service.metadata[0]["authorization"] == "Bearer t"


def test_tls_refuses_a_server_it_does_not_trust(recording: Any, certificate: tuple[Path, Path]) -> None:
    _, server = recording
    port = serve_tls(server, certificate)

    with vow.Client(f"https://127.0.0.1:{port}", server_name="localhost", retries=0) as client:
        with pytest.raises(vow.VowError) as raised:
            client.get(TASK_ID, timeout=5)

    assert raised.value.code is grpc.StatusCode.UNAVAILABLE


def test_tls_false_contradicting_an_https_target_is_refused() -> None:
    with pytest.raises(ValueError, match="https"):
        vow.Client("https://127.0.0.1:1", tls=False)
