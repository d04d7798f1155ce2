"""Fixtures: a real vowd process on an ephemeral port, and a `vow.Client` of it."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

import vow

REPO_ROOT = Path(__file__).resolve().parents[3]
ANNOUNCEMENT = "vowd listening on "
START_TIMEOUT_SECONDS = 20
# Above vowd's default drain timeout (30 s), so a slow drain is reported, not cut short.
STOP_TIMEOUT_SECONDS = 45


def vowd_binary() -> Path:
    """VOWD if set, else the debug build that `cargo build --workspace --bins` leaves."""
    if "VOWD" in os.environ:
        return Path(os.environ["VOWD"])
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    return target_dir / "debug" / "vowd"


@pytest.fixture(scope="session")
def vowd_address():
    binary = vowd_binary()
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `cargo build --workspace --bins` (scripts/test does)")
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(
            [str(binary), "--store", "memory", "--listen", "127.0.0.1:0", "--remote-kind", "resize"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            yield _read_address(process, stderr)
        finally:
            _stop(process, stderr)


def _read_address(process: subprocess.Popen, stderr) -> str:
    # readline() cannot time out by itself, so a thread reads and the wait is bounded.
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
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


def _stop(process: subprocess.Popen, stderr) -> None:
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


@pytest.fixture(scope="session")
def client(vowd_address):
    with vow.Client(vowd_address) as client:
        client.wait_ready(timeout=START_TIMEOUT_SECONDS)
        yield client
