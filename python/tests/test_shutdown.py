"""Graceful shutdown of a worker process on SIGTERM: running work may finish within the
drain timeout; what is left is released at once, its attempt not counted."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support import SETTLE_SECONDS, new_worker, wait_until

import vow
from vow import TaskState

WORKER_SCRIPT = Path(__file__).with_name("worker_process.py")


class WorkerProcess:
    """worker_process.py running, its stdout read line by line with bounded waits."""

    def __init__(self, address: str, kind: str, *arguments: str):
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT), address, kind, *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())

    def expect(self, prefix: str) -> str:
        """The next line, which must start with `prefix`."""
        try:
            line = self._lines.get(timeout=SETTLE_SECONDS)
        except queue.Empty:
            raise AssertionError(f"no line {prefix!r} from the worker within {SETTLE_SECONDS} s") from None
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
        return line

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=SETTLE_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError("the worker did not exit after SIGTERM") from None

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()


@contextmanager
def worker_process(address: str, kind: str, *arguments: str) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(address, kind, *arguments)
    try:
        yield worker
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def test_sigterm_lets_a_running_handler_finish_within_the_drain(client: vow.Client, vowd_address: str) -> None:
    # Also the worker without opentelemetry installed: it serves all the same.
    arguments = ("--drain-timeout", "30", "--until", "stdin", "--without-opentelemetry")
    with worker_process(vowd_address, "py-drain", *arguments) as worker:
        worker.expect("opentelemetry missing")
        task = client.submit("py-drain", None)
        worker.expect(f"started {task.id}")

        worker.process.send_signal(signal.SIGTERM)
        # Stopped polling, still draining: the handler ends when the test says so.
        assert worker.process.stdin is not None
        worker.process.stdin.write("finished after SIGTERM\n")
        worker.process.stdin.flush()
        worker.expect("worker exited")
        code = worker.wait()

    assert code == 0, worker.stderr()
    finished = client.await_(task.id, timeout=SETTLE_SECONDS)
    assert finished.state is TaskState.SUCCEEDED
    assert finished.output == "finished after SIGTERM"
    assert finished.attempt == 1


def test_sigterm_releases_what_the_drain_left_without_counting_the_attempt(
    client: vow.Client, vowd_address: str, run_worker: Any
) -> None:
    with worker_process(vowd_address, "py-release", "--drain-timeout", "0.2", "--until", "cancelled") as worker:
        worker.expect("opentelemetry")
        task = client.submit("py-release", None, max_attempts=1)
        worker.expect(f"started {task.id}")

        worker.process.send_signal(signal.SIGTERM)
        worker.expect("stopped shutdown")
        worker.expect("worker exited")
        code = worker.wait()

    assert code == 0, worker.stderr()
    # Released, not lapsed: its lease had a minute left.
    wait_until(lambda: client.get(task.id).state is TaskState.QUEUED, "the released task to be queued again")
    second = new_worker(client)
    second.register("py-release", lambda ctx: f"attempt {ctx.attempt}")
    with run_worker(second):
        finished = client.await_(task.id, timeout=SETTLE_SECONDS)

    # max_attempts=1: had the released attempt counted, no attempt would be left to run.
    assert finished.state is TaskState.SUCCEEDED
    assert finished.output == "attempt 1"
