"""The wheel installs one namespace, dtr, and nothing named worker/coordinator/chaos."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("dtr", "coordinator", "worker", "chaos", "examples", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Build from a copy so setuptools' build/ and egg-info never touch the checkout.
    source = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
    )
    (built,) = out.glob("dtr-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_wheel_has_only_dtr_at_the_top_level(wheel_names: list[str]) -> None:
    top = {name.split("/", 1)[0] for name in wheel_names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"dtr"}
    assert not top & {"worker", "coordinator", "chaos"}


def test_wheel_maps_the_four_folders_under_dtr(wheel_names: list[str]) -> None:
    for module in (
        "dtr/worker/__init__.py",
        "dtr/coordinator/__init__.py",
        "dtr/chaos/__init__.py",
        "dtr/py.typed",
        "dtr/proto/coordinator.proto",
        "dtr/proto/coordinator_pb2.py",
        "dtr/proto/coordinator_pb2_grpc.py",
    ):
        assert module in wheel_names, module


def test_wheel_carries_the_built_in_chaos_scenarios(wheel_names: list[str]) -> None:
    """``dtr chaos list`` and ``dtr demo`` read them from the installed package."""
    files = sorted((ROOT / "chaos" / "scenarios").glob("*.yaml"))
    assert files
    for path in files:
        assert f"dtr/chaos/scenarios/{path.name}" in wheel_names, path.name


def test_wheel_holds_every_source_package(wheel_names: list[str]) -> None:
    installed_as = {"coordinator": "dtr/coordinator", "worker": "dtr/worker", "chaos": "dtr/chaos"}
    for folder in ("dtr", "coordinator", "worker", "chaos"):
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.relative_to(ROOT).as_posix()
            head, _, rest = relative.partition("/")
            expected = f"{installed_as.get(head, head)}/{rest}"
            assert expected in wheel_names, f"{relative} is not in the wheel as {expected}"


def test_wheel_declares_the_dtr_console_script(wheel: Path, wheel_names: list[str]) -> None:
    (entry_points,) = [n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(entry_points).decode()
    assert "dtr = dtr.cli:main" in text


def test_wheel_registers_the_torchrun_rendezvous_backend(
    wheel: Path, wheel_names: list[str]
) -> None:
    """``torchrun --rdzv-backend=dtr`` needs this group; torch reads it at import."""
    (entry_points,) = [n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        sections = archive.read(entry_points).decode().split("\n\n")
    (handlers,) = [s for s in sections if s.startswith("[torchrun.handlers]")]
    assert "dtr = dtr.worker.rendezvous:handler_creator" in handlers
