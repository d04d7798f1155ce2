"""Helpers shared by the tests: a vowd process, bounded waits on conditions (a
test never sleeps and hopes) and workers with short waits."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

import vow

REPO_ROOT = Path(__file__).resolve().parents[2]
ANNOUNCEMENT = "vowd listening on "
START_TIMEOUT_SECONDS = 20
# Above the drain timeouts the tests give vowd, so a slow drain is reported, not cut short.
STOP_TIMEOUT_SECONDS = 30

T = TypeVar("T")

# Bounds waits on things that happen at once on a quiet machine; only turns a hang into a failure.
SETTLE_SECONDS = 20.0


def wait_until(condition: Callable[[], T], what: str, bound: float = SETTLE_SECONDS) -> T:
    """Polls `condition` every 10 ms until it returns something truthy; fails after `bound` seconds."""
    deadline = time.monotonic() + bound
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {bound} s waiting for {what}"
        time.sleep(0.01)


def new_worker(client: vow.Client, **options: Any) -> vow.Worker:
    """A worker with short waits, so a test's teardown is quick."""
    options.setdefault("poll_wait", 1.0)
    options.setdefault("drain_timeout", 5.0)
    return vow.Worker(client, **options)


def vowd_binary() -> Path:
    """VOWD if set, else the debug build of this repository (`cargo build --bin vowd`)."""
    if "VOWD" in os.environ:
        return Path(os.environ["VOWD"])
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    return target_dir / "debug" / "vowd"


@contextmanager
def running_vowd(*arguments: str) -> Iterator[str]:
    """A vowd (memory store, a free port, then `arguments`) for the block; yields its address.

    It is stopped with SIGTERM at the end, and must exit 0 (a clean drain).
    """
    binary = vowd_binary()
    if not binary.exists():
        pytest.fail(f"{binary} is missing: set VOWD to a vowd binary (cargo build --bin vowd)")
    command = [str(binary), "--store", "memory", "--listen", "127.0.0.1:0", *arguments]
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            yield _read_address(process, stderr)
        finally:
            _stop(process, stderr)


def _read_address(process: subprocess.Popen[str], stderr: IO[str]) -> str:
    # readline() cannot time out by itself, so a thread reads and the wait is bounded.
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=START_TIMEOUT_SECONDS)
    except queue.Empty:
        line = ""
    if not line.startswith(ANNOUNCEMENT):
        process.kill()
        process.wait()
        stderr.seek(0)
        pytest.fail(f"vowd did not announce its address; stdout {line!r}; stderr:\n{stderr.read()}")
    return line[len(ANNOUNCEMENT) :].strip()


def _stop(process: subprocess.Popen[str], stderr: IO[str]) -> None:
    """SIGTERM, as an orchestrator would; a clean drain exits 0."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = None
    if code != 0:
        stderr.seek(0)
        pytest.fail(f"vowd did not exit 0 after SIGTERM (exit {code}); stderr:\n{stderr.read()}")
