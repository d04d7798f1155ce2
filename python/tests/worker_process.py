"""A worker in a process of its own, for the tests that send it SIGTERM.

    python worker_process.py ADDRESS KIND --drain-timeout S --until {stdin,cancelled} [--without-opentelemetry]

Its handler prints `started <task id>` and then, with `--until stdin`,
returns once a line arrives on stdin (the test decides when the work ends);
with `--until cancelled`, waits for its cancellation and prints
`stopped <reason>`. `--without-opentelemetry` makes opentelemetry impossible
to import, as on a machine that does not have it.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("kind")
    parser.add_argument("--drain-timeout", type=float, required=True)
    parser.add_argument("--until", choices=("stdin", "cancelled"), required=True)
    parser.add_argument("--without-opentelemetry", action="store_true")
    args = parser.parse_args()
    if args.without_opentelemetry:
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]  # import now raises ImportError

    import vow
    from vow import _tracing

    print(f"opentelemetry {'available' if _tracing.available() else 'missing'}", flush=True)
    # A long lease: a task that comes back soon came back by a Release, not by a lapsed lease.
    worker = vow.Worker(args.address, lease_duration=60, drain_timeout=args.drain_timeout, poll_wait=1.0)

    @worker.handler(args.kind)
    def handle(ctx: vow.Context) -> str:
        print(f"started {ctx.id}", flush=True)
        if args.until == "stdin":
            return sys.stdin.readline().strip()
        ctx.cancelled.wait(60)
        print(f"stopped {ctx.cancel_reason.value if ctx.cancel_reason else 'never'}", flush=True)
        return "ignored"

    worker.run()
    print("worker exited", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
