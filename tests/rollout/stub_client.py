"""A plain generated-stub client: Submit (with an idempotency key) then Await,
in a loop, through a channel that loads the shipped gRPC service config and
nothing else of Vow's. Prints one JSON line: how many iterations succeeded and
failed, and the first failure.

Used by tests/rollout.rs during rolling restarts; also a model of how a
grpcio user loads deploy/grpc-service-config.json.
"""

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path


def generate_stubs(proto_root: Path, out: Path) -> None:
    from grpc_tools import protoc
    import grpc_tools

    out.mkdir(parents=True, exist_ok=True)
    includes = Path(grpc_tools.__file__).parent / "_proto"
    protos = [str(path) for path in (proto_root / "vow" / "v1").glob("*.proto")]
    status = protoc.main(
        ["protoc", f"-I{proto_root}", f"-I{includes}", f"--python_out={out}", f"--grpc_python_out={out}", *protos]
    )
    if status != 0:
        sys.exit(f"protoc failed with {status}")
    # Regular packages, found before the Vow SDK's own `vow` package.
    for package in (out / "vow", out / "vow" / "v1"):
        (package / "__init__.py").touch()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--service-config", type=Path, required=True)
    parser.add_argument("--stubs", type=Path, required=True)
    parser.add_argument("--callers", type=int, default=4)
    args = parser.parse_args()

    repository = Path(__file__).resolve().parents[2]
    generate_stubs(repository / "proto", args.stubs)
    sys.path.insert(0, str(args.stubs))
    import grpc
    from vow.v1 import task_pb2
    from vow.v1 import task_service_pb2 as pb
    from vow.v1 import task_service_pb2_grpc as pb_grpc

    service_config = json.loads(args.service_config.read_text())
    # As deploy/README.md advises a client that always sets idempotency keys.
    for method_config in service_config["methodConfig"]:
        if "retryPolicy" in method_config:
            method_config["name"].append({"service": "vow.v1.TaskService", "method": "Submit"})
    service_config = json.dumps(service_config)
    channel = grpc.insecure_channel(
        args.server,
        options=[("grpc.service_config", service_config), ("grpc.enable_retries", 1)],
    )
    stub = pb_grpc.TaskServiceStub(channel)
    lock = threading.Lock()
    counts = {"succeeded": 0, "failed": 0, "first_failure": None, "failures": {}}
    stop_at = time.monotonic() + args.seconds

    def caller() -> None:
        while time.monotonic() < stop_at:
            step = "Submit"
            task_id = None
            try:
                request = pb.SubmitRequest(kind="echo", idempotency_key=f"stub-{uuid.uuid4().hex}")
                try:
                    submitted = stub.Submit(request, timeout=30)
                except grpc.RpcError as error:
                    # gRPC retries only calls not yet committed: a reply cut after its
                    # headers (haproxy: UNKNOWN "Stream removed") is the application's to
                    # repeat, which the idempotency key makes safe.
                    if error.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
                        raise
                    with lock:
                        counts["resubmitted"] = counts.get("resubmitted", 0) + 1
                    submitted = stub.Submit(request, timeout=30)
                step = "Await"
                task_id = submitted.task.id
                awaited = stub.Await(pb.AwaitRequest(id=submitted.task.id), timeout=30)
                ok = awaited.done and awaited.task.state == task_pb2.TASK_STATE_SUCCEEDED
                failure = None if ok else f"not done: {awaited.task.state}"
            except grpc.RpcError as error:
                failure = f"{step}: {error.code().name}: {error.details()}"
            with lock:
                if failure is None:
                    counts["succeeded"] += 1
                else:
                    counts["failed"] += 1
                    counts["first_failure"] = counts["first_failure"] or failure
                    counts["failures"][failure[:80]] = counts["failures"].get(failure[:80], 0) + 1
                    if task_id:
                        counts.setdefault("failed_tasks", []).append(task_id)

    threads = [threading.Thread(target=caller) for _ in range(args.callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
