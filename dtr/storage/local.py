"""Checkpoint objects as files under a local (or mounted) directory: ``file:///abs/dir``.

A write never exposes a partial file under its final name: the bytes go to
``.<name>.tmp-<uuid>`` in the target directory, are fsynced, renamed over the
final name, and the directory is fsynced (so is every directory the write
had to create), so a crash at any point leaves either the old state or the
whole new object. On any OS error the temporary file is removed and a
``CheckpointError`` names the URI and the errno.

The write is built for a training loop running beside it on few cores:
``os.writev`` (GIL released) sends the caller's memoryviews to the kernel
without joining them into one ``bytes``, up to ``IOV_MAX`` at a time, and the
checksum is computed chunk by chunk right after each chunk is written, on the
same thread, while the chunk is still in the CPU cache (hashing releases the
GIL too, see ``dtr.storage.base``). On two cores a second hashing thread made
three busy threads (training, writing, hashing) share two cores and cost the
training loop about twice the compute for no faster write, since the fsync
dominates (benchmarks/results/checkpoint.md); with more than two cores the
hash runs on its own thread, overlapped with the write.

What must not live here: the checkpoint byte format and what a checkpoint
is (``dtr.worker``); this module stores and verifies opaque bytes.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dtr.errors import CheckpointError, InvalidArgument, NotFound

from .base import (
    DEFAULT_ALGORITHM,
    Buffer,
    Hasher,
    Storage,
    StoredObject,
    byte_views,
    fill_buffer,
    is_valid_name,
    new_hasher,
    validate_name,
    validate_prefix,
)

_PARALLEL_HASH_MIN_BYTES = 8 << 20  # below this a second thread costs more than it saves


def _iov_max() -> int:
    try:
        return max(int(os.sysconf("SC_IOV_MAX")), 16)
    except (ValueError, OSError):
        return 1024


_IOV_MAX = _iov_max()


def describe_os_error(err: OSError) -> str:
    """``No space left on device (ENOSPC): /path``: the errno's text and name, and the path."""
    name = errno.errorcode.get(err.errno, str(err.errno)) if err.errno else "no errno"
    where = f": {err.filename}" if err.filename else ""
    return f"{err.strerror or err} ({name}){where}"


class FileStorage(Storage):
    """Objects as files under ``root``, an absolute directory created on first write.

    ``replicated=True`` declares that ``root`` is on storage that outlives
    this machine (a replicated network volume); a local disk is not.
    """

    def __init__(self, root: str | os.PathLike[str], *, replicated: bool = False) -> None:
        path = Path(root)
        if not path.is_absolute():
            raise InvalidArgument(f"file storage root must be an absolute path, got {str(root)!r}")
        self.root = Path(os.path.normpath(path))
        self.is_replicated = replicated

    def __repr__(self) -> str:
        return f"FileStorage({str(self.root)!r}, replicated={self.is_replicated})"

    @property
    def root_uri(self) -> str:
        return self.root.as_uri()

    def path_of(self, name: str) -> Path:
        """The file that holds object ``name``."""
        return self.root / validate_name(name)

    def uri_of(self, name: str) -> str:
        return self.path_of(name).as_uri()

    def write(
        self, name: str, buffers: Sequence[Buffer], *, algorithm: str = DEFAULT_ALGORITHM
    ) -> StoredObject:
        target = self.path_of(name)
        hasher = new_hasher(algorithm)
        views = byte_views(buffers)
        try:
            _write_durably(target, views, hasher)
        except OSError as err:
            raise CheckpointError(
                f"cannot write {target.as_uri()}: {describe_os_error(err)}"
            ) from err
        size = sum(view.nbytes for view in views)
        return StoredObject(target.as_uri(), size, hasher.checksum())

    def read(self, name: str) -> bytearray:
        """The file's bytes, read straight into one preallocated ``bytearray``.

        One copy out of the page cache, with the GIL released (``readinto``).
        """
        path = self.path_of(name)
        try:
            with path.open("rb", buffering=0) as file:
                data = bytearray(os.fstat(file.fileno()).st_size)
                got = fill_buffer(file.readinto, data)
        except (FileNotFoundError, NotADirectoryError) as err:
            raise NotFound(f"{path.as_uri()} does not exist") from err
        except OSError as err:
            raise CheckpointError(f"cannot read {path.as_uri()}: {describe_os_error(err)}") from err
        del data[got:]  # the file shrank while read: verification reports it
        return data

    def delete(self, name: str) -> None:
        path = self.path_of(name)
        try:
            path.unlink()
            _fsync_dir(path.parent)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as err:
            raise CheckpointError(
                f"cannot delete {path.as_uri()}: {describe_os_error(err)}"
            ) from err

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Names starting with ``prefix``; temporary and invalid names are skipped."""
        validate_prefix(prefix)
        head = prefix.rpartition("/")[0]
        start = self.root / head if head else self.root
        try:
            return sorted(_walk_names(self.root, start, prefix))
        except OSError as err:
            raise CheckpointError(
                f"cannot list {start.as_uri()}: {describe_os_error(err)}"
            ) from err


def _write_durably(target: Path, views: Sequence[memoryview], hasher: Hasher) -> None:
    """Temporary file, write + hash, fsync, rename, fsync the directory."""
    _make_dirs(target.parent)
    temporary = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            _write_and_hash(fd, views, hasher)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, target)
    except BaseException:
        _unlink_quietly(temporary)
        raise
    _fsync_dir(target.parent)


def _write_and_hash(fd: int, views: Sequence[memoryview], hasher: Hasher) -> None:
    """Write every view to ``fd`` and hash it; see the module docstring for where the hash runs."""
    total = sum(view.nbytes for view in views)
    if total < _PARALLEL_HASH_MIN_BYTES or _usable_cores() <= 2:
        for batch in _batches(views):
            _write_all(fd, batch)
            _hash_all(hasher, batch, _NEVER)
        return
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="dtr-storage-hash") as pool:
        hashed = pool.submit(_hash_all, hasher, views, stop)
        try:
            _write_all(fd, views)
        except BaseException:
            stop.set()  # the hasher quits at its next buffer; the pool waits for it
            raise
        hashed.result()


_NEVER = threading.Event()
_BATCH_BYTES = 16 << 20


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _batches(views: Sequence[memoryview]) -> Iterator[builtins.list[memoryview]]:
    """The views in groups of about ``_BATCH_BYTES``, big views cut to that size."""
    batch: builtins.list[memoryview] = []
    size = 0
    for view in views:
        for start in range(0, max(view.nbytes, 1), _BATCH_BYTES):
            piece = view[start : start + _BATCH_BYTES]
            batch.append(piece)
            size += piece.nbytes
            if size >= _BATCH_BYTES:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _hash_all(hasher: Hasher, views: Sequence[memoryview], stop: threading.Event) -> None:
    for view in views:
        if stop.is_set():
            return
        hasher.update(view)


def _write_all(fd: int, views: Sequence[memoryview]) -> None:
    """``os.writev`` in batches of at most ``IOV_MAX`` views, resuming after partial writes.

    Linux writes at most ~2 GiB per call and stops short at a resource
    limit or a signal; the next call then reports the error, if any.
    """
    pending = builtins.list(views)
    first = 0
    while first < len(pending):
        written = os.writev(fd, pending[first : first + _IOV_MAX])
        if written <= 0:
            raise OSError(errno.EIO, "writev made no progress")
        while first < len(pending) and written >= pending[first].nbytes:
            written -= pending[first].nbytes
            first += 1
        if written:
            pending[first] = pending[first][written:]


def _walk_names(root: Path, start: Path, prefix: str) -> builtins.list[str]:
    """Valid object names under ``start`` that begin with ``prefix``, pruning other directories."""

    def on_error(err: OSError) -> None:
        if not (err.errno in (errno.ENOENT, errno.ENOTDIR) and Path(str(err.filename)) == start):
            raise err

    names: builtins.list[str] = []
    for directory, subdirectories, files in os.walk(start, onerror=on_error):
        relative = Path(directory).relative_to(root).as_posix()
        base = "" if relative == "." else relative + "/"
        subdirectories[:] = [
            d for d in subdirectories if _may_hold(base + d + "/", prefix) and is_valid_name(d)
        ]
        names.extend(base + f for f in files if (base + f).startswith(prefix))
    return [name for name in names if is_valid_name(name)]


def _may_hold(directory: str, prefix: str) -> bool:
    """Whether names under ``directory`` (ending in "/") can start with ``prefix``."""
    return directory.startswith(prefix) or prefix.startswith(directory)


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents, fsyncing each new entry's parent."""
    missing: builtins.list[Path] = []
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            if not new.is_dir():
                raise
            continue  # a concurrent writer made it
        _fsync_dir(new.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):  # never there, or the original error says more
        path.unlink()
