"""Retries of calls that are safe to repeat, when the failure says the call may
simply not have got through.

Retried codes: UNAVAILABLE (vowd draining or restarting, a connection that
broke), and what proxies and load balancers make of a stream reset under a
call: CANCELLED (when this client did not cancel it), INTERNAL and UNKNOWN.
The client retries only calls whose repetition changes nothing: Get, Await,
AwaitMany, List and Watch (reads), Cancel and Delete (idempotent), and Submit
with an idempotency key. Run is never retried: its task is bound to the call,
so a broken Run has already cancelled it.

Retries are bounded three ways: at most `retries` more attempts, jittered
exponential pauses, and the call's own timeout, which covers every attempt and
pause together (a retry that cannot start before it is not made). A
`RetryInfo` in the error sets the least pause.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from vow.errors import VowError

T = TypeVar("T")

INITIAL_BACKOFF_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 2.0
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


class Backoff:
    """The pauses between the attempts of one call (or one watch), within its deadline.

    `deadline` is a time.monotonic() instant, or None for a call nothing bounds.
    """

    def __init__(self, retries: int, deadline: float | None):
        self.retries = retries
        self.deadline = deadline
        self._retries_left = retries
        self._backoff = INITIAL_BACKOFF_SECONDS

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def pause_before_retry(self, error: VowError) -> float | None:
        """How long to wait before retrying after `error`; None when it must not be retried."""
        if error.code not in RETRYABLE_CODES or self._retries_left <= 0:
            return None
        pause = self._backoff * random.uniform(0.5, 1.5)
        if error.retry_after is not None:
            pause = max(pause, error.retry_after)
        if self.deadline is not None and time.monotonic() + pause >= self.deadline:
            return None
        self._retries_left -= 1
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)
        return pause

    def reset(self) -> None:
        """Starts afresh after a success (a watch that received a message again)."""
        self._retries_left = self.retries
        self._backoff = INITIAL_BACKOFF_SECONDS


def call_with_retries(call: Callable[[float | None], T], retries: int, timeout: float | None) -> T:
    """Runs `call(time_left)` until it succeeds, retrying as the module says within `timeout` seconds.

    `call` gets the seconds left for its attempt (its gRPC deadline; None when
    unbounded). Every failure surfaces as a `VowError`, never as a bare grpc.RpcError.
    """
    backoff = Backoff(retries, None if timeout is None else time.monotonic() + timeout)
    while True:
        try:
            return call(backoff.remaining())
        except grpc.RpcError as rpc_error:
            error = VowError.from_rpc_error(rpc_error)
        pause = backoff.pause_before_retry(error)
        if pause is None:
            raise error from None
        time.sleep(pause)
