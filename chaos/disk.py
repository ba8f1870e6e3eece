"""Checkpoint storage that can fill up: a small tmpfs, and the ballast that fills it.

The ``disk-full`` fault needs a file system whose free space the harness
controls without touching the machine's own disks, so the run's checkpoint
directory becomes a tmpfs of ``size_mib`` (``TmpfsMount``), and the fault
writes a ballast file until the kernel answers ENOSPC (``fill``); healing
deletes the ballast. The workers see the real error from a real ``write``,
exactly what a full volume gives them.

Mounting needs root (or CAP_SYS_ADMIN); where it is refused the run is
refused before anything starts, naming what to change, rather than running
a ``disk-full`` scenario that injects nothing.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from types import TracebackType

from dtr.errors import DtrError

#: The ballast's name inside the mount; nothing else there starts with a dot and "ballast".
BALLAST_NAME = ".dtr-chaos-ballast"
_CHUNK = 1 << 20


class MountError(DtrError):
    """The tmpfs could not be mounted or unmounted."""


class TmpfsMount:
    """``path`` as a tmpfs of ``size_mib`` MiB while entered; unmounted on exit."""

    def __init__(self, path: Path, size_mib: int) -> None:
        self.path, self.size_mib = Path(path), size_mib
        self.mounted = False

    def mount(self) -> TmpfsMount:
        self.path.mkdir(parents=True, exist_ok=True)
        options = f"size={self.size_mib}m,mode=0755"
        done = _run(["mount", "-t", "tmpfs", "-o", options, "dtr-chaos", str(self.path)])
        if done.returncode != 0:
            raise MountError(
                f"disk-full needs a tmpfs at {self.path}, and mount said: "
                f"{done.stderr.strip() or done.returncode}; run as root (or with CAP_SYS_ADMIN), "
                "or use a scenario without disk-full"
            )
        self.mounted = True
        return self

    def unmount(self) -> None:
        if not self.mounted:
            return
        done = _run(["umount", str(self.path)])
        if done.returncode != 0:  # busy: a process still holds a file; detach it lazily
            done = _run(["umount", "-l", str(self.path)])
        if done.returncode != 0:
            raise MountError(f"could not unmount {self.path}: {done.stderr.strip()}")
        self.mounted = False

    def __enter__(self) -> TmpfsMount:
        return self.mount()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unmount()


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return subprocess.CompletedProcess(argv, 1, "", str(err))


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(path: Path) -> tuple[Path, int]:
    """Write a ballast under ``path`` until ENOSPC; returns it and the bytes it took.

    Written (not fallocated) in 1 MiB chunks, then byte-sized tails, so the
    file system is full to the last block whatever its block accounting.
    """
    ballast = Path(path) / BALLAST_NAME
    written = 0
    chunk = b"\0" * _CHUNK
    with open(ballast, "wb", buffering=0) as out:
        for size in (_CHUNK, 4096, 1):
            try:
                while True:
                    written += out.write(chunk[:size])
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
    return ballast, written


def drain(ballast: Path) -> None:
    """Heal ``fill``: the ballast goes, its space is free again."""
    ballast.unlink(missing_ok=True)
