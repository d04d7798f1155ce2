"""Fixtures: a real vowd on an ephemeral port with the remote kinds the tests use,
a client of it, and a way to run a `vow.Worker` for the length of a test."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from support import SETTLE_SECONDS, running_vowd

import vow

# Every test uses kinds of its own, so a task one test leaves behind never reaches another's worker.
REMOTE_KINDS = (
    "py-echo",
    "py-async",
    "py-bytes",
    "py-errors",
    "py-retry",
    "py-progress",
    "py-cancel",
    "py-deadline",
    "py-drain",
    "py-release",
    "py-trace",
    "py-unencodable",
    "py-context",
)


@pytest.fixture(scope="session")
def vowd_address() -> Iterator[str]:
    arguments = ["--drain-timeout", "5s"]
    for kind in REMOTE_KINDS:
        arguments += ["--remote-kind", kind]
    with running_vowd(*arguments) as address:
        yield address


@pytest.fixture(scope="session")
def client(vowd_address: str) -> Iterator[vow.Client]:
    with vow.Client(vowd_address) as client:
        client.wait_ready(timeout=SETTLE_SECONDS)
        yield client


@pytest.fixture
def run_worker(client: vow.Client) -> Iterator[Callable[..., Any]]:
    """`with run_worker(worker): ...` serves `worker` in a thread for the block, then stops and joins it."""

    @contextmanager
    def serve(worker: vow.Worker) -> Iterator[vow.Worker]:
        failures: queue.Queue[BaseException] = queue.Queue()

        def run() -> None:
            try:
                worker.run(install_signal_handlers=False)
            except BaseException as error:  # noqa: BLE001 - reported to the test below
                failures.put(error)

        thread = threading.Thread(target=run, name="test-worker", daemon=True)
        thread.start()
        try:
            yield worker
        finally:
            worker.stop()
            thread.join(timeout=worker.poll_wait + worker.drain_timeout + 10)
            assert not thread.is_alive(), "the worker did not stop"
            if not failures.empty():
                raise failures.get()

    yield serve
