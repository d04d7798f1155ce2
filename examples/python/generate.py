"""Generates the Python stubs of vow.v1 from proto/ into this folder (vow/v1/*_pb2*.py).

google/rpc/status.proto is deliberately not generated: googleapis-common-protos
already provides google.rpc.status_pb2 (with error_details_pb2 beside it), and
registering the same .proto file twice in the protobuf descriptor pool fails.
"""

import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"


def main() -> int:
    sources = sorted(str(path.relative_to(PROTO_ROOT)) for path in (PROTO_ROOT / "vow" / "v1").glob("*.proto"))
    # Stale stubs of a removed .proto would otherwise linger.
    shutil.rmtree(HERE / "vow", ignore_errors=True)
    well_known_types = resources.files("grpc_tools") / "_proto"
    return protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={well_known_types}",
            f"--python_out={HERE}",
            f"--pyi_out={HERE}",
            f"--grpc_python_out={HERE}",
            *sources,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
