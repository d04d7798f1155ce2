"""The example scripts as a user runs them: worker.py serving `resize`, vow_client.py following a task."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import vow
from vow import TaskState

EXAMPLES = Path(__file__).resolve().parents[1]
SETTLE_SECONDS = 20


def test_worker_py_serves_resize_and_drains_on_sigterm(client, vowd_address):
    worker = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "worker.py"), vowd_address],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        task = client.submit("resize", {"image": "cat.png", "width": 64})
        finished = client.await_(task.id, timeout=SETTLE_SECONDS)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=SETTLE_SECONDS)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    assert finished.state is TaskState.SUCCEEDED, finished.error
    assert finished.output == {"image": "cat.png", "width": 64}
    assert code == 0, worker.stderr.read()


def test_vow_client_py_follows_a_task_to_its_output(vowd_address):
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "vow_client.py"), vowd_address, "sleep", '{"ms": 300}'],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("submitted ")
    assert any("RUNNING" in line and "%" in line for line in lines), "progress is shown"
    assert "SUCCEEDED" in lines[-2]
    assert json.loads(lines[-1]) == {"slept_ms": 300}


def test_vow_client_py_reports_a_refused_submit(vowd_address):
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "vow_client.py"), vowd_address, "no-such-kind", "{}"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == 2, run.stderr
    assert "INVALID_ARGUMENT" in run.stdout and "kind" in run.stdout


def test_the_package_is_what_the_examples_import():
    assert Path(vow.__file__).resolve().parent.name == "vow"
    assert not (EXAMPLES / "vow").exists(), "no locally generated stubs shadow the package"
