"""Where plain (not `async def`) handlers run: a pool of daemon threads.

The threads are daemons on purpose: a handler that ignores its cancellation
must not keep the process alive after the worker drained and released its
lease (concurrent.futures joins its threads at exit, which would).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

LOG = logging.getLogger("vow.worker")


class ThreadPool:
    """`size` daemon threads running submitted callables in order."""

    def __init__(self, size: int, name: str = "vow-handler"):
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{index}", daemon=True) for index in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def shutdown(self) -> None:
        """Lets each thread end after the jobs queued before; does not wait for them."""
        for _ in self._threads:
            self._jobs.put(None)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except BaseException:  # noqa: BLE001 - a job must never take its thread down
                LOG.exception("a worker job failed")
