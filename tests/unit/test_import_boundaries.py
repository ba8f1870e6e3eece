"""DESIGN §2 / STYLE 11: who may import whom, checked on the source.

dtr/ is the shared core and imports none of the others and no torch (the CLI
is the composition root: it may import them inside its command functions).
coordinator/ never imports the worker, the chaos harness or torch. worker/
reaches state through gRPC only: never the coordinator, the chaos harness or
an etcd client. Nothing imports the folders by their bare names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ETCD_ACCESS = ("etcd3", "aetcd", "dtr.store", "dtr.store_types", "dtr.watch", "dtr.etcd")
BARE_FOLDERS = ("worker", "coordinator", "chaos")

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "dtr": ("dtr.coordinator", "dtr.worker", "dtr.chaos", "torch", *BARE_FOLDERS),
    "coordinator": ("dtr.worker", "dtr.chaos", "torch", *BARE_FOLDERS),
    "worker": ("dtr.coordinator", "dtr.chaos", *ETCD_ACCESS, *BARE_FOLDERS),
    "chaos": BARE_FOLDERS,
}
# The composition root (every module of the dtr/cli/ package) may reach
# everything, but only from inside functions.
COMPOSITION_ROOT = ROOT / "dtr" / "cli"


def is_composition_root(path: Path) -> bool:
    """Whether ``path`` is a module of the CLI package, whose top level alone is checked."""
    return COMPOSITION_ROOT in path.parents


def _package_of(path: Path) -> str:
    """The dotted package a source file belongs to, for resolving relative imports."""
    folder = path.relative_to(ROOT).parent.parts
    mapped = {"coordinator": "dtr.coordinator", "worker": "dtr.worker", "chaos": "dtr.chaos"}
    head = mapped.get(folder[0], folder[0])
    return ".".join([head, *folder[1:]])


def imports_of(path: Path, *, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, module) for every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: list[tuple[int, str]] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(path).split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def _violations(folder: str) -> list[str]:
    bad: list[str] = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if "proto" in path.parts and path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        top_only = is_composition_root(path)
        for line, module in imports_of(path, top_level_only=top_only):
            for banned in FORBIDDEN[folder]:
                if module == banned or module.startswith(banned + "."):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_folder_respects_its_import_boundary(folder: str) -> None:
    assert (ROOT / folder / "__init__.py").exists()
    assert _violations(folder) == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = ROOT / "worker" / "_boundary_probe.py"
    bad.write_text("import etcd3\nfrom ..coordinator import x\n")
    try:
        found = _violations("worker")
    finally:
        bad.unlink()
    assert any("imports etcd3" in v for v in found)
    assert any("imports dtr.coordinator" in v for v in found)


def test_every_cli_module_is_a_composition_root() -> None:
    modules = sorted(COMPOSITION_ROOT.rglob("*.py"))
    assert ROOT / "dtr" / "cli" / "__init__.py" in modules
    assert all(is_composition_root(path) for path in modules)
    assert not is_composition_root(ROOT / "dtr" / "store.py")


def test_the_cli_may_import_anything_inside_functions_but_not_at_its_top() -> None:
    probe = COMPOSITION_ROOT / "_boundary_probe.py"
    probe.write_text(
        "import dtr.coordinator.config\n"
        "def run() -> None:\n"
        "    from dtr.chaos import cluster\n"
        "    import dtr.worker\n"
    )
    try:
        found = _violations("dtr")
    finally:
        probe.unlink()
    from_probe = [v for v in found if v.startswith(str(probe.relative_to(ROOT)))]
    assert from_probe == [f"{probe.relative_to(ROOT)}:1 imports dtr.coordinator.config"]


def test_importing_dtr_and_its_cli_stays_light() -> None:
    code = (
        "import sys, pkgutil, importlib, dtr, dtr.errors, dtr.cli\n"
        "for info in pkgutil.iter_modules(dtr.cli.__path__, 'dtr.cli.'):\n"
        "    if info.name != 'dtr.cli.__main__':\n"
        "        importlib.import_module(info.name)\n"
        "heavy = [m for m in ('grpc', 'torch', 'numpy', 'etcd3', 'boto3') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert result.stdout.strip() == ""
