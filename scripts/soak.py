"""Soak: mixed load on one vowd for a long time (30 minutes by default), and
what it costs over time. Not in CI; `scripts/soak` runs it.

Load, all at once, through the `vow` Python package:
- submitters: Submit `echo` then Await it (the latency whose p99 is recorded);
- watchers: Submit a short `sleep` and Watch it to its end;
- cancellers: Submit a long `sleep`, then Cancel it;
- worker churn: a `vow.Worker` for the remote kind `soak` is started and
  stopped (gracefully) every 20 s, while submitters of that kind await
  their tasks.

Every minute it samples vowd's RSS and open file descriptors (from /proc),
the store's files on disk, the p99 of submit-to-result over that minute,
and the calls that failed; it writes them to a CSV and plots them (PNG).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import vow

REPOSITORY = Path(__file__).resolve().parents[1]


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.done = 0
        self.failures: dict[str, int] = {}

    def record(self, seconds: float) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.done += 1

    def fail(self, error: BaseException) -> None:
        name = getattr(error, "code", None)
        key = name.name if hasattr(name, "name") else type(error).__name__
        with self.lock:
            self.failures[key] = self.failures.get(key, 0) + 1

    def take(self) -> tuple[list[float], int, dict[str, int]]:
        with self.lock:
            taken = (self.latencies, self.done, self.failures)
            self.latencies, self.done, self.failures = [], 0, {}
        return taken


def submitter(client: vow.Client, kind: str, stats: Stats, stop: threading.Event) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            task = client.submit(kind, {"n": random.randrange(1_000_000)})
            result = client.await_(task.id, timeout=30)
            if result.state != vow.TaskState.SUCCEEDED:
                raise RuntimeError(f"ended {result.state.name}")
            stats.record(time.monotonic() - started)
        except Exception as error:  # noqa: BLE001 - counted, the soak goes on
            stats.fail(error)
            time.sleep(0.1)


def watcher(client: vow.Client, stats: Stats, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            task = client.submit("sleep", {"ms": 200, "steps": 4})
            for _event in client.watch(task.id, timeout=30):
                pass
        except Exception as error:  # noqa: BLE001
            stats.fail(error)
            time.sleep(0.1)


def canceller(client: vow.Client, stats: Stats, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            task = client.submit("sleep", {"ms": 60_000})
            time.sleep(0.05)
            client.cancel(task.id, "soak")
            client.await_(task.id, timeout=30)
        except Exception as error:  # noqa: BLE001
            stats.fail(error)
            time.sleep(0.1)


def churning_workers(server: str, stop: threading.Event) -> None:
    while not stop.is_set():
        worker = vow.Worker(server, concurrency=8)

        @worker.handler("soak")
        def soak(ctx: vow.Context) -> dict:
            return {"echo": ctx.input}

        thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
        thread.start()
        stop.wait(20)
        worker.stop()
        thread.join()


def sample(pid: int, data_dir: Path) -> tuple[int, int, int, int]:
    """RSS, and of it the anonymous part (the heap: the mapped store file is
    the rest, and grows with the file), open fds, store bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    rss_kib = int(fields["VmRSS"].split()[0])
    anon_kib = int(fields["RssAnon"].split()[0])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    store_bytes = sum(path.stat().st_size for path in data_dir.iterdir() if path.is_file())
    return rss_kib, anon_kib, fds, store_bytes


def p99(latencies: list[float]) -> float:
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [row["minute"] for row in rows]
    figure, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    series = [
        ("rss_mib", "RSS, heap part dashed (MiB)"),
        ("open_fds", "open file descriptors"),
        ("store_mib", "store on disk (MiB)"),
        ("p99_ms", "submit→result p99 (ms)"),
    ]
    for axis, (key, label) in zip(axes, series):
        axis.plot(minutes, [row[key] for row in rows], marker="o", markersize=3)
        if key == "rss_mib" and "heap_mib" in rows[0]:
            axis.plot(minutes, [row["heap_mib"] for row in rows], linestyle="--")
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("minute")
    figure.suptitle("vow soak: mixed load on one vowd (embedded store)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--vowd", default=str(REPOSITORY / "target/release/vowd"))
    parser.add_argument("--out", type=Path, default=REPOSITORY / "target/soak")
    parser.add_argument("--submitters", type=int, default=8)
    parser.add_argument("--interval", type=float, default=60, help="seconds between samples")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="vow-soak-"))
    port = 50_700 + random.randrange(200)
    server = f"127.0.0.1:{port}"
    vowd = subprocess.Popen(
        [args.vowd, "--listen", server, "--store", "embedded", "--data-dir", str(data_dir),
         "--remote-kind", "soak", "--default-retention", "5m"],
        stdout=subprocess.DEVNULL,
        stderr=open(args.out / "vowd.log", "w"),
    )
    client = vow.Client(server).wait_ready(30)
    stats = Stats()
    stop = threading.Event()
    threads = [threading.Thread(target=submitter, args=(client, "echo", stats, stop)) for _ in range(args.submitters)]
    threads += [threading.Thread(target=submitter, args=(client, "soak", stats, stop)) for _ in range(2)]
    threads += [threading.Thread(target=watcher, args=(client, stats, stop)) for _ in range(4)]
    threads += [threading.Thread(target=canceller, args=(client, stats, stop)) for _ in range(2)]
    threads += [threading.Thread(target=churning_workers, args=(server, stop))]
    for thread in threads:
        thread.start()

    rows: list[dict] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.interval)
            minute = round((time.monotonic() - started) / 60, 2)
            rss_kib, anon_kib, fds, store_bytes = sample(vowd.pid, data_dir)
            latencies, done, failures = stats.take()
            row = {
                "minute": minute,
                "rss_mib": round(rss_kib / 1024, 1),
                "heap_mib": round(anon_kib / 1024, 1),
                "open_fds": fds,
                "store_mib": round(store_bytes / 2**20, 2),
                "p99_ms": round(p99(latencies) * 1000, 2),
                "tasks": done,
                "failures": sum(failures.values()),
                "failure_codes": ";".join(f"{k}={v}" for k, v in sorted(failures.items())),
            }
            rows.append(row)
            print(row, flush=True)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        vowd.send_signal(signal.SIGTERM)
        vowd.wait(timeout=60)

    with open(args.out / "soak.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "soak.png")
    print(f"wrote {args.out / 'soak.csv'} and {args.out / 'soak.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
