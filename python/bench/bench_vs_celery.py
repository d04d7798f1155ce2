"""Submit-then-wait throughput of a Vow Python worker against Celery 5 on Redis.

The same loop runs against both, from this process: `--concurrency` threads
each submit a trivial echo task, wait for its result, and start over, for
`--duration` seconds after a warm-up. Vow: a release `vowd` (`--store memory`,
like Redis an in-memory store) and one `vow.Worker` process on its thread pool;
each submitter calls `Client.submit` then `Client.await_`. Celery: a prefork
worker of `--celery-processes` processes on a Redis broker and result backend;
each submitter calls `task.delay()` then `AsyncResult.get()`. The systems run
one after the other, `--rounds` times, alternating which goes first; each
round starts its servers afresh and stops them after.

It installs nothing and is not part of scripts/test. From the repository root,
in a venv of its own:

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install 'celery[redis]>=5,<6' ./python
    cargo build --release --bin vowd
    /tmp/benchvenv/bin/python python/bench/bench_vs_celery.py    # --vowd PATH for another build

Redis must be running (`--redis`, default redis://127.0.0.1:6379, databases 14
and 15). Prints one line per round, then the medians and the ratio, then one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KIND = "bench-echo"
CELERY_QUEUE = "vow-bench"
START_TIMEOUT_SECONDS = 30.0
RESULT_TIMEOUT_SECONDS = 30.0

# The Celery app lives at module level so that `celery -A bench_vs_celery worker` finds it;
# without Celery installed the Vow side still runs.
try:
    from celery import Celery
except ImportError:  # pragma: no cover - the Vow-only case
    Celery = None

app = None
if Celery is not None:
    _redis = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
    app = Celery("bench_vs_celery", broker=f"{_redis}/14", backend=f"{_redis}/15")
    app.conf.update(
        task_default_queue=CELERY_QUEUE,
        result_expires=300,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    if os.environ.get("BENCH_CELERY_CONF"):
        app.conf.update(json.loads(os.environ["BENCH_CELERY_CONF"]))

    @app.task(name="bench.echo")
    def echo(value: object) -> object:
        return value


@dataclass
class Round:
    """What one system did in one round."""

    system: str
    round: int
    tasks: int
    seconds: float
    tasks_per_second: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_task: dict[str, float]
    """CPU time per task of each side: this process, the server (vowd, Redis), the worker."""


def main(argv: list[str]) -> int:
    if argv[:1] == ["vow-worker"]:
        return vow_worker(argv[1:])
    args = parse(argv)
    results: list[Round] = []
    systems = args.systems.split(",")
    for number in range(1, args.rounds + 1):
        order = systems if number % 2 else list(reversed(systems))
        for system in order:
            run = run_vow_round if system == "vow" else run_celery_round
            result = run(args, number)
            results.append(result)
            print(
                f"round {number} {system:6} {result.tasks_per_second:8.0f} tasks/s"
                f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  ({result.tasks} tasks)"
                f"  cpu ms/task {result.cpu_ms_per_task}",
                flush=True,
            )
    summary = summarize(results, systems, args)
    print(json.dumps({"summary": summary, "rounds": [asdict(result) for result in results]}))
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vowd", default=str(REPO / "target" / "release" / "vowd"), help="a release build of vowd")
    parser.add_argument("--vow-store", default="memory", help="vowd --store (memory, like Redis; or embedded)")
    parser.add_argument("--vow-worker-threads", type=int, default=16, help="the vow.Worker's concurrency (its default)")
    parser.add_argument("--celery-processes", type=int, default=2, help="Celery prefork processes")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--concurrency", type=int, default=16, help="submitting threads, the same for both")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per round")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of the same load before measuring")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--systems", default="vow,celery", help="comma-separated: vow, celery")
    return parser.parse_args(argv)


def run_vow_round(args: argparse.Namespace, number: int) -> Round:
    import vow

    vowd = subprocess.Popen(
        [args.vowd, "--store", args.vow_store, "--listen", "127.0.0.1:0", "--remote-kind", KIND,
         "--data-dir", f"/tmp/vow-bench-data-{os.getpid()}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    address = read_line(vowd, "vowd listening on ").removeprefix("vowd listening on ").strip()
    worker = subprocess.Popen(
        [sys.executable, __file__, "vow-worker", address, "--threads", str(args.vow_worker_threads)],
        stdin=subprocess.DEVNULL,
    )
    try:
        with vow.Client(address) as client:
            client.wait_ready(START_TIMEOUT_SECONDS)

            def submit_then_wait(value: dict[str, int]) -> None:
                task = client.await_(client.submit(KIND, value).id, timeout=RESULT_TIMEOUT_SECONDS)
                if task.output != value:
                    raise RuntimeError(f"task {task.id} ended {task.state.name}: {task.error}")

            cpu_of = {"server": lambda: tree_cpu_seconds(vowd.pid), "worker": lambda: tree_cpu_seconds(worker.pid)}
            return measure("vow", number, submit_then_wait, args, cpu_of)
    finally:
        stop(worker)
        stop(vowd)


def vow_worker(argv: list[str]) -> int:
    """The Vow side's worker process: one vow.Worker, its handlers on the thread pool."""
    import vow

    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    worker = vow.Worker(args.address, concurrency=args.threads, drain_timeout=5.0, poll_wait=1.0)
    worker.register(KIND, lambda ctx: ctx.input)
    worker.run()
    return 0


def run_celery_round(args: argparse.Namespace, number: int) -> Round:
    if app is None:
        raise SystemExit("Celery is not installed: pip install 'celery[redis]>=5,<6'")
    environment = {**os.environ, "BENCH_REDIS": args.redis}
    app.control.purge()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench_vs_celery", "worker", "--pool", "prefork",
         "--concurrency", str(args.celery_processes), "--queues", CELERY_QUEUE, "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=HERE, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )
    try:
        def submit_then_wait(value: dict[str, int]) -> None:
            output = echo.delay(value).get(timeout=RESULT_TIMEOUT_SECONDS)
            if output != value:
                raise RuntimeError(f"celery answered {output!r} for {value!r}")

        # The first task proves the worker is up (it waits in the queue until then).
        submit_then_wait({"n": -1})
        cpu_of = {"worker": lambda: tree_cpu_seconds(worker.pid)}
        redis_pid = pid_of("redis-server")
        if redis_pid is not None:
            cpu_of["server"] = lambda: tree_cpu_seconds(redis_pid)
        return measure("celery", number, submit_then_wait, args, cpu_of)
    finally:
        stop(worker)


def measure(
    system: str,
    number: int,
    submit_then_wait: Callable[[dict[str, int]], None],
    args: argparse.Namespace,
    cpu_of: dict[str, Callable[[], float]],
) -> Round:
    """Runs the loop on `concurrency` threads: warm-up, then `duration` seconds counted."""
    submit_then_wait({"n": -1})
    started = time.monotonic()
    measure_from = started + args.warmup
    measure_until = measure_from + args.duration
    latencies: list[list[float]] = [[] for _ in range(args.concurrency)]
    failures: queue.Queue[BaseException] = queue.Queue()

    def submitter(index: int) -> None:
        n = 0
        try:
            while (now := time.monotonic()) < measure_until:
                begun = time.perf_counter()
                submit_then_wait({"n": n, "thread": index})
                if now >= measure_from:
                    latencies[index].append(time.perf_counter() - begun)
                n += 1
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.put(error)

    cpu_of = {"driver": time.process_time, **cpu_of}
    cpu_at: list[dict[str, float]] = []

    def sample_cpu() -> None:
        for moment in (measure_from, measure_until):
            time.sleep(max(0.0, moment - time.monotonic()))
            cpu_at.append({name: probe() for name, probe in cpu_of.items()})

    threads = [threading.Thread(target=submitter, args=(index,), daemon=True) for index in range(args.concurrency)]
    threads.append(threading.Thread(target=sample_cpu, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.warmup + args.duration + RESULT_TIMEOUT_SECONDS + 10)
    if not failures.empty():
        raise failures.get()
    counted = sorted(latency for per_thread in latencies for latency in per_thread)
    elapsed = args.duration
    return Round(
        system=system,
        round=number,
        tasks=len(counted),
        seconds=elapsed,
        tasks_per_second=len(counted) / elapsed,
        p50_ms=percentile(counted, 0.50) * 1000,
        p99_ms=percentile(counted, 0.99) * 1000,
        cpu_ms_per_task={
            name: round((cpu_at[1][name] - cpu_at[0][name]) * 1000 / max(1, len(counted)), 3) for name in cpu_of
        },
    )


def summarize(results: list[Round], systems: list[str], args: argparse.Namespace) -> dict[str, object]:
    summary: dict[str, object] = {
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "vow_store": args.vow_store,
        "vow_worker_threads": args.vow_worker_threads,
        "celery_processes": args.celery_processes,
    }
    for system in systems:
        rounds = [result for result in results if result.system == system]
        summary[system] = {
            "tasks_per_second_median": statistics.median(result.tasks_per_second for result in rounds),
            "p50_ms_median": statistics.median(result.p50_ms for result in rounds),
            "p99_ms_median": statistics.median(result.p99_ms for result in rounds),
        }
    if set(systems) == {"vow", "celery"}:
        vow_rate = summary["vow"]["tasks_per_second_median"]  # type: ignore[index]
        celery_rate = summary["celery"]["tasks_per_second_median"]  # type: ignore[index]
        summary["ratio"] = vow_rate / celery_rate
        print(f"median: vow {vow_rate:.0f} tasks/s, celery {celery_rate:.0f} tasks/s, ratio {summary['ratio']:.2f}x")
    return summary


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and all its descendants so far (Linux /proc)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, of in parents.items() if of == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(cpu.get(member, 0.0) for member in tree)


def pid_of(command: str) -> int | None:
    """The first process whose command name is `command` (Redis, which this script did not start)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == command:
                return int(entry.name)
        except OSError:
            continue
    return None


def percentile(sorted_values: list[float], share: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


def read_line(process: subprocess.Popen[str], prefix: str) -> str:
    """The process's first stdout line, which must start with `prefix`; bounded."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=START_TIMEOUT_SECONDS)
    except queue.Empty:
        line = ""
    if not line.startswith(prefix):
        process.kill()
        raise SystemExit(f"expected {prefix!r} from {process.args[0]}, got {line!r}")
    return line


def stop(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 20 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
