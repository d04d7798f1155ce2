"""Generates the gRPC stubs of vow.v1 from the proto sources while the package builds.

The stubs are never checked in: `build_py` compiles `proto/vow/v1/*.proto`
with grpc_tools.protoc into the package (`vow/v1/*_pb2*.py`, typed `.pyi`
beside them), so every install matches the protos it was built from.

The protos are looked for in two places, so that each way of building works:

- `python/proto/` : what an sdist carries (the `sdist` command below copies
  them in), so a wheel built from the sdist needs nothing outside it;
- `python/../proto/` : the repository's own tree, which `pip install ./python`
  and `pip install -e ./python` see (pip builds a local directory in place).

google/rpc/status.proto is on the include path but is not generated:
googleapis-common-protos already provides google.rpc.status_pb2, and the same
file registered twice in the protobuf descriptor pool fails at import.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
CANDIDATE_PROTO_ROOTS = (HERE / "proto", HERE.parent / "proto")
GENERATED_PACKAGE = ("vow", "v1")
# Imported by the generated stubs but provided by googleapis-common-protos.
INCLUDE_ONLY = ("google/rpc/status.proto",)


def proto_root() -> Path:
    """The first directory holding vow/v1/*.proto; a clear error when none does."""
    for root in CANDIDATE_PROTO_ROOTS:
        if any((root / "vow" / "v1").glob("*.proto")):
            return root
    searched = ", ".join(str(root) for root in CANDIDATE_PROTO_ROOTS)
    raise SystemExit(
        f"vow: no vow/v1/*.proto found in {searched}; build from the repository "
        "(pip install ./python) or from an sdist made by `python -m build python`"
    )


def proto_sources(root: Path) -> list[str]:
    """The .proto files to compile, relative to `root`, in a stable order."""
    return sorted(path.relative_to(root).as_posix() for path in (root / "vow" / "v1").glob("*.proto"))


def generate_stubs(out_dir: Path) -> None:
    """Runs protoc (from grpc_tools, so no system protoc is needed) into `out_dir`."""
    from importlib import resources

    from grpc_tools import protoc

    root = proto_root()
    package_dir = out_dir.joinpath(*GENERATED_PACKAGE)
    # Stale stubs of a removed .proto would otherwise linger.
    shutil.rmtree(package_dir, ignore_errors=True)
    package_dir.mkdir(parents=True)
    well_known_types = resources.files("grpc_tools") / "_proto"
    arguments = [
        "grpc_tools.protoc",
        f"--proto_path={root}",
        f"--proto_path={well_known_types}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *proto_sources(root),
    ]
    if protoc.main(arguments) != 0:
        raise SystemExit(f"vow: protoc failed on the protos of {root}")
    (package_dir / "__init__.py").write_text('"""Generated stubs of vow.v1 (see setup.py)."""\n')


class BuildPyWithStubs(build_py):
    """build_py that first writes the generated stubs.

    A regular build writes them into the build directory; an editable install
    (`pip install -e`) writes them into src/, where the editable import finds them.
    """

    def run(self) -> None:
        target = HERE / "src" if self.editable_mode else Path(self.build_lib)
        generate_stubs(target)
        super().run()


class SdistWithProtos(sdist):
    """sdist that carries the proto sources, so a wheel built from it finds them, and no stubs.

    Stubs an editable install left in src/ would otherwise go in too: stale ones, since the
    wheel built from the sdist writes its own.
    """

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        shutil.rmtree(Path(base_dir, "src", *GENERATED_PACKAGE), ignore_errors=True)
        root = proto_root()
        for relative in [*proto_sources(root), *INCLUDE_ONLY]:
            destination = Path(base_dir, "proto", relative)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / relative, destination)


setup(cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProtos})
