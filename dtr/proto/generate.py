"""Regenerates the committed Python modules of ``coordinator.proto`` (``make proto``).

The generated modules are committed so that installing dtr needs no protoc, and
``tests/unit/test_proto.py`` regenerates them into a temporary directory and
compares bytes, so a ``.proto`` edit without ``make proto`` fails CI instead of
shipping stubs that disagree with the contract. That comparison only works if
generation is deterministic, hence the fixed inputs: the pinned grpcio-tools
(``[dev]`` in pyproject.toml), the repository root as the only source include,
and the proto named by its repository-relative path, which is what makes the
grpc module import ``from dtr.proto import coordinator_pb2`` and keeps absolute
paths of this checkout out of the output.

Run as ``python -m dtr.proto.generate`` (rewrites stale files) or with
``--check`` (exit status 1 when stale, nothing written). Needs grpcio-tools,
which only the ``dev`` extra installs; nothing at runtime imports this module.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: The repository root: the only ``-I`` for our own protos.
REPO_ROOT = Path(__file__).resolve().parents[2]

#: The proto, relative to the repository root (its import path).
PROTO_PATH = "dtr/proto/coordinator.proto"

#: What ``protoc`` produces from ``PROTO_PATH``, next to it.
GENERATED_FILES = (
    "coordinator_pb2.py",
    "coordinator_pb2.pyi",
    "coordinator_pb2_grpc.py",
    "coordinator_pb2_grpc.pyi",
)

#: mypy-protobuf's protoc plugin for the ``_pb2_grpc.pyi`` stubs. grpcio-tools
#: types only the messages (``--pyi_out``); without this, every call of the
#: untyped generated stub or servicer fails ``mypy --strict`` with
#: ``no-untyped-call``.
GRPC_STUB_PLUGIN = "protoc-gen-mypy_grpc"


class ProtocError(RuntimeError):
    """protoc refused the proto; its diagnostics went to stderr."""


def _well_known_include() -> Path:
    """The bundled google/protobuf/*.proto, so the proto may import them later."""
    import grpc_tools

    return Path(grpc_tools.__file__).resolve().parent / "_proto"


def _grpc_stub_plugin() -> Path:
    """The mypy-protobuf plugin installed next to this interpreter (the venv's bin).

    Looked up there first rather than only on PATH, so ``.venv/bin/python -m
    dtr.proto.generate`` works without an activated venv.
    """
    found = shutil.which(GRPC_STUB_PLUGIN, path=str(Path(sys.executable).parent))
    found = found or shutil.which(GRPC_STUB_PLUGIN)
    if found is None:
        raise ProtocError(
            f"{GRPC_STUB_PLUGIN} not found: install mypy-protobuf (the dev extra: "
            "pip install -e '.[dev]')"
        )
    return Path(found)


def run_protoc(out_root: Path, *, root: Path = REPO_ROOT) -> dict[str, Path]:
    """Generates into ``out_root`` (mirroring ``dtr/proto/``); returns name -> path.

    Runs protoc in-process (no executable to find). The proto is named by its
    path relative to the ``-I`` root, which protoc resolves against ``-I`` and
    not the working directory, so the output is the same from any directory.
    """
    from grpc_tools import protoc

    proto_dir = Path(PROTO_PATH).parent
    args = [
        "grpc_tools.protoc",
        f"--proto_path={root}",
        f"--proto_path={_well_known_include()}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin={GRPC_STUB_PLUGIN}={_grpc_stub_plugin()}",
        f"--mypy_grpc_out=quiet:{out_root}",
        PROTO_PATH,
    ]
    status = protoc.main(args)
    if status != 0:
        raise ProtocError(f"protoc failed with status {status} on {PROTO_PATH}")
    paths = {name: out_root / proto_dir / name for name in GENERATED_FILES}
    missing = sorted(name for name, path in paths.items() if not path.is_file())
    if missing:
        raise ProtocError(f"protoc did not produce {', '.join(missing)}")
    return paths


def generate_bytes(*, root: Path = REPO_ROOT) -> dict[str, bytes]:
    """Generates into a temporary directory; returns file name -> contents.

    Leaves the checkout untouched, so a test can compare the result with the
    committed files while other work goes on in the tree.
    """
    with tempfile.TemporaryDirectory(prefix="dtr-proto-") as tmp:
        paths = run_protoc(Path(tmp), root=root)
        return {name: path.read_bytes() for name, path in paths.items()}


def stale_files(*, root: Path = REPO_ROOT) -> list[str]:
    """Names of generated files that are missing or differ from what the proto produces."""
    target = root / Path(PROTO_PATH).parent
    fresh = generate_bytes(root=root)
    return [
        name
        for name, data in sorted(fresh.items())
        if not (target / name).is_file() or (target / name).read_bytes() != data
    ]


def write(*, root: Path = REPO_ROOT) -> list[str]:
    """Rewrites the stale generated files in the checkout; returns their names.

    Only changed files are written, so an up-to-date tree keeps its mtimes.
    """
    target = root / Path(PROTO_PATH).parent
    written = []
    for name, data in sorted(generate_bytes(root=root).items()):
        path = target / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
            written.append(name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m dtr.proto.generate",
        description=f"Regenerate the Python modules of {PROTO_PATH}.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the committed modules are stale",
    )
    options = parser.parse_args(argv)
    try:
        if options.check:
            stale = stale_files()
            for name in stale:
                print(f"stale: dtr/proto/{name} (run `make proto`)", file=sys.stderr)
            return 1 if stale else 0
        written = write()
    except ProtocError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name in written:
        print(f"wrote dtr/proto/{name}")
    if not written:
        print("dtr/proto is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
