"""Submits a task and follows it to its end, with the `vow` package (python/ in this repository).

    python vow_client.py 127.0.0.1:50051 sleep '{"ms": 1500}'
    python vow_client.py 127.0.0.1:50051 echo '{"hello": "world"}' --wait-only

Prints each change as it happens (state, progress), then the output or the
error; exits 0 when the task succeeded, 1 when it did not, 2 when the server
refused the call.
"""

from __future__ import annotations

import argparse
import json
import sys

import vow


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="host:port of vowd, or an http(s):// URL")
    parser.add_argument("kind")
    parser.add_argument("input", help="the input as JSON")
    parser.add_argument("--token", help="sent as `authorization: Bearer TOKEN`")
    parser.add_argument("--wait-only", action="store_true", help="await the result without watching the changes")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for the task")
    args = parser.parse_args(argv)

    with vow.Client(args.target, token=args.token) as client:
        try:
            task = client.submit(args.kind, json.loads(args.input))
            print(f"submitted {task.id}", flush=True)
            if args.wait_only:
                task = client.await_(task.id, timeout=args.timeout)
            else:
                for event in client.watch(task.id, timeout=args.timeout):
                    if event.task is None:
                        continue
                    task = event.task
                    progress = f" {task.progress.percent:.0f}% {task.progress.message}" if task.progress else ""
                    print(f"revision {task.revision}: {task.state.name}{progress}", flush=True)
        except vow.VowError as error:
            print(f"refused: {error} (reason {error.reason or '-'}, fields {dict(error.field_violations)})")
            return 2
    if not task.done:
        print(f"still {task.state.name} after {args.timeout} s")
        return 1
    if task.state is vow.TaskState.SUCCEEDED:
        print(json.dumps(task.output) if not isinstance(task.output, bytes) else task.output)
        return 0
    error = task.error
    print(f"{task.state.name}: {error.code.name if error else ''} {error.message if error else ''}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
