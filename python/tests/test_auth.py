"""The client's credentials against a vowd with access control on: bearer tokens from
`vowd keys new` (every call and stream, and the worker's calls), and mutual TLS with a
client certificate that the auth file maps to a namespace."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import SETTLE_SECONDS, new_worker, running_vowd, vowd_binary

import vow
from vow import TaskState

KIND = "py-auth"
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"
ALL_PERMISSIONS = "submit,read,cancel,delete,work"
CLIENT_SAN = "spiffe://vow.test/python-worker"


def new_key(name: str, namespace: str, permissions: str) -> tuple[str, str]:
    """A key made the way an operator makes one: (the key, its [[api_keys]] entry)."""
    made = subprocess.run(
        [str(vowd_binary()), "keys", "new", "--name", name, "--namespace", namespace, "--permissions", permissions],
        capture_output=True,
        text=True,
        check=True,
    )
    key, entry = made.stdout.split("\n", 1)
    return key.strip(), entry


@dataclass
class Secured:
    address: str
    keys: dict[str, str]

    def client(self, key: str | None, **options: Any) -> vow.Client:
        return vow.Client(self.address, token=self.keys[key] if key else None, **options)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A vowd with --auth-file: team-a and team-b may do everything in their namespace, reader only read."""
    keys, entries = {}, []
    for name, namespace, permissions in (
        ("team-a", "team-a", ALL_PERMISSIONS),
        ("team-b", "team-b", ALL_PERMISSIONS),
        ("reader", "team-a", "read"),
    ):
        keys[name], entry = new_key(name, namespace, permissions)
        entries.append(entry)
    auth_file = tmp_path_factory.mktemp("auth") / "auth.toml"
    auth_file.write_text("\n".join(entries))
    with running_vowd("--auth-file", str(auth_file), "--remote-kind", KIND) as address:
        yield Secured(address, keys)


def test_a_token_reaches_every_call_and_stream(secured: Secured) -> None:
    with secured.client("team-a") as client:
        task = client.submit("echo", {"who": "team-a"})
        events = list(client.watch(task.id, timeout=SETTLE_SECONDS))
        finished = client.await_(task.id, timeout=SETTLE_SECONDS)
        listed = client.list(kinds=["echo"])
        client.delete(task.id)

    assert task.namespace == "team-a"
    assert events[-1].task is not None and events[-1].task.state is TaskState.SUCCEEDED
    assert finished.output == {"who": "team-a"}
    assert task.id in [listed_task.id for listed_task in listed.tasks]


@pytest.mark.parametrize("key", [None, "wrong"], ids=["no-token", "wrong-token"])
def test_without_a_valid_token_calls_and_streams_are_unauthenticated(secured: Secured, key: str | None) -> None:
    options = {"token": "vow_" + "0" * 64} if key == "wrong" else {}
    with vow.Client(secured.address, **options) as client:
        with pytest.raises(vow.VowError) as unary:
            client.get(UNKNOWN_ID)
        with pytest.raises(vow.VowError) as stream:
            list(client.watch(UNKNOWN_ID, timeout=SETTLE_SECONDS))

    assert unary.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert stream.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert unary.value.domain == "vow"


def test_another_namespaces_task_is_not_found(secured: Secured) -> None:
    with secured.client("team-a") as team_a, secured.client("team-b") as team_b:
        task = team_a.submit("sleep", {"ms": 10_000})
        try:
            for call in (lambda: team_b.get(task.id), lambda: team_b.cancel(task.id)):
                with pytest.raises(vow.VowError) as raised:
                    call()
                assert raised.value.code is grpc.StatusCode.NOT_FOUND
            with pytest.raises(vow.VowError) as watched:
                list(team_b.watch(task.id, timeout=SETTLE_SECONDS))
            assert watched.value.code is grpc.StatusCode.NOT_FOUND
            assert team_a.get(task.id).state in (TaskState.QUEUED, TaskState.RUNNING)
        finally:
            team_a.cancel(task.id)


def test_a_missing_permission_is_permission_denied(secured: Secured) -> None:
    with secured.client("reader") as reader:
        with pytest.raises(vow.VowError) as raised:
            reader.submit("echo", None)

    assert raised.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_a_worker_polls_with_its_token(secured: Secured, run_worker: Any) -> None:
    with secured.client("team-a") as client:
        worker = new_worker(client)
        worker.register(KIND, lambda ctx: {"served": ctx.input})

        with run_worker(worker):
            task = client.await_(client.submit(KIND, "job").id, timeout=SETTLE_SECONDS)

    assert task.state is TaskState.SUCCEEDED
    assert task.output == {"served": "job"}


def test_a_worker_without_the_work_permission_is_refused(secured: Secured) -> None:
    worker = new_worker(secured.client("reader"))
    worker.register(KIND, lambda ctx: None)

    with pytest.raises(vow.VowError) as raised:
        worker.run(install_signal_handlers=False)

    assert raised.value.code is grpc.StatusCode.PERMISSION_DENIED
    worker.client.close()


# Mutual TLS ------------------------------------------------------------------------------


@dataclass
class Certificates:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]


def _openssl(*arguments: str) -> None:
    subprocess.run(["openssl", *arguments], check=True, capture_output=True)


def _issue(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    """A P-256 certificate and key signed by `ca`, with the given X.509 v3 extensions."""
    cert, key, request, config = (directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr", ".ext"))
    config.write_text(extensions)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(request))  # fmt: skip
    _openssl("x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "1", "-extfile", str(config), "-out", str(cert))  # fmt: skip
    return cert, key


def _authority(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign", "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("mtls")
    ca = _authority(directory, "test-ca")
    server = _issue(directory, "server", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    client = _issue(directory, "client", ca, f"subjectAltName=URI:{CLIENT_SAN}\nextendedKeyUsage=clientAuth\n")
    other_ca = _authority(directory, "other-ca")
    stranger = _issue(directory, "stranger", other_ca, f"subjectAltName=URI:{CLIENT_SAN}\nextendedKeyUsage=clientAuth\n")
    return Certificates(ca[0], server, client, stranger)


@pytest.fixture(scope="module")
def mtls_address(certificates: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    auth_file = tmp_path_factory.mktemp("mtls-auth") / "auth.toml"
    auth_file.write_text(
        f'[[mtls]]\nname = "python-worker"\nsan = "{CLIENT_SAN}"\nnamespace = "certs"\n'
        'permissions = ["submit", "read", "cancel", "work"]\n'
    )
    cert, key = certificates.server
    arguments = ("--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(certificates.ca))
    with running_vowd(*arguments, "--auth-file", str(auth_file)) as address:
        yield address


def test_a_client_certificate_is_an_identity(certificates: Certificates, mtls_address: str) -> None:
    cert, key = certificates.client
    port = mtls_address.rsplit(":", 1)[1]
    with vow.Client(
        f"https://localhost:{port}", root_certificates=certificates.ca, certificate_chain=cert, private_key=key
    ) as client:
        task = client.await_(client.submit("echo", "over mTLS").id, timeout=SETTLE_SECONDS)

    assert task.namespace == "certs"
    assert task.output == "over mTLS"


@pytest.mark.parametrize("identity", ["none", "stranger"])
def test_without_a_trusted_client_certificate_the_handshake_fails(
    certificates: Certificates, mtls_address: str, identity: str
) -> None:
    options: dict[str, Any] = {}
    if identity == "stranger":
        options = {"certificate_chain": certificates.stranger[0], "private_key": certificates.stranger[1]}
    port = mtls_address.rsplit(":", 1)[1]
    with vow.Client(f"https://localhost:{port}", root_certificates=certificates.ca, retries=0, **options) as client:
        with pytest.raises(vow.VowError) as raised:
            client.get(UNKNOWN_ID, timeout=5)

    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
