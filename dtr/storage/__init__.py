"""Checkpoint storage: where a worker's checkpoint bytes go, chosen by URI.

Bytes go straight from a worker to storage, never through a coordinator or
etcd (DESIGN §1); the commit record that follows carries only the
``StoredObject`` (URI, size, checksum) a write returned, and a loader checks
the bytes against it with ``read_verified``.

- ``file:///abs/dir`` → ``FileStorage`` (``dtr.storage.local``)
- ``s3://bucket/prefix`` → ``S3Storage`` (``dtr.storage.s3``)

The interface and its values live in ``dtr.storage.base``. Nothing here knows
the checkpoint format or talks to a coordinator.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from dtr.errors import InvalidArgument

from .base import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    Algorithm,
    Buffer,
    Checksum,
    Hasher,
    Storage,
    StoredObject,
    checksum_of,
    new_hasher,
    validate_name,
)
from .local import FileStorage
from .s3 import S3Storage

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "SCHEMES",
    "Algorithm",
    "Buffer",
    "Checksum",
    "FileStorage",
    "Hasher",
    "S3Storage",
    "Storage",
    "StoredObject",
    "checksum_of",
    "new_hasher",
    "open_storage",
    "validate_name",
]

SCHEMES = ("file", "s3")
_FILE_OPTIONS = frozenset({"replicated"})
_S3_OPTIONS = frozenset(
    {
        "endpoint_url",
        "region",
        "part_size_bytes",
        "multipart_threshold_bytes",
        "max_concurrency",
    }
)
_SUPPORTED = "supported: file:///absolute/dir, s3://bucket[/prefix]"


def open_storage(uri: str, **options: Any) -> Storage:
    """The backend for ``uri``; ``options`` go to the backend (S3: endpoint, part sizes, …)."""
    if not isinstance(uri, str):
        raise InvalidArgument(f"storage URI must be a string, got {uri!r} ({_SUPPORTED})")
    try:
        parts = urlsplit(uri)
    except ValueError as err:
        raise InvalidArgument(f"malformed storage URI {uri!r}: {err} ({_SUPPORTED})") from err
    if parts.scheme not in SCHEMES:
        raise InvalidArgument(f"unsupported storage URI {uri!r} ({_SUPPORTED})")
    if parts.query or parts.fragment:
        raise InvalidArgument(f"storage URI {uri!r} must not have a query or fragment")
    if parts.scheme == "file":
        return _open_file(uri, parts.netloc, unquote(parts.path), options)
    return _open_s3(uri, parts.netloc, parts.path, options)


def _open_file(uri: str, host: str, path: str, options: dict[str, Any]) -> FileStorage:
    unknown = set(options) - _FILE_OPTIONS
    if unknown:
        raise InvalidArgument(
            f"unknown file storage option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_FILE_OPTIONS))}"
        )
    if host not in ("", "localhost") or not path.startswith("/"):
        raise InvalidArgument(
            f"file storage URI {uri!r} must name an absolute local directory: file:///abs/dir"
        )
    return FileStorage(path, **options)


def _open_s3(uri: str, bucket: str, path: str, options: dict[str, Any]) -> S3Storage:
    unknown = set(options) - _S3_OPTIONS
    if unknown:
        raise InvalidArgument(
            f"unknown S3 storage option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_S3_OPTIONS))}"
        )
    if not bucket:
        raise InvalidArgument(f"S3 storage URI {uri!r} names no bucket: s3://bucket[/prefix]")
    prefix = path.strip("/")
    if "//" in path.rstrip("/"):
        raise InvalidArgument(f"S3 storage URI {uri!r} has an empty path segment")
    return S3Storage(bucket, prefix, **options)
