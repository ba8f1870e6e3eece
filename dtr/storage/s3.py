"""Checkpoint objects in an S3 (or S3-compatible) bucket: ``s3://bucket/prefix``.

S3 makes an object visible only when a PUT or a CompleteMultipartUpload
succeeds, so atomicity comes free; this module adds the rest of the write
contract:

- The whole-object checksum (our algorithm, over all bytes) is computed
  first and stored as metadata ``x-amz-meta-dtr-<algorithm>``, because a
  multipart upload fixes its metadata when it is created.
- Below ``multipart_threshold_bytes`` one ``put_object``; above, parts of
  ``part_size_bytes`` uploaded by at most ``max_concurrency`` threads. Each
  part is built when its thread takes it, by joining memoryview slices of the
  caller's buffers: one part-sized copy per thread, never the whole object.
- Every PUT and part carries ``ChecksumAlgorithm="CRC32"``: botocore hashes
  the body and S3 rejects a part whose bytes do not match. (moto, the server
  the tests use, accepts and echoes these checksums without checking them.)
- After completion ``head_object`` must report the size written.
- On any failure the multipart upload is aborted after every part in flight
  has finished, so no open upload (and no billed orphan part) is left, and a
  ``CheckpointError`` names the bucket and key. A missing bucket says so.

Credentials and region come from boto3's usual sources (environment, config
files, instance profile); the endpoint from ``endpoint_url`` or
``$DTR_S3_ENDPOINT``. botocore retries throttling and transient errors itself
("standard" mode); nothing here retries on top of it.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
from bisect import bisect_right
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dtr.errors import CheckpointError, DtrError, InvalidArgument, NotFound

from .base import (
    DEFAULT_ALGORITHM,
    MAX_NAME_BYTES,
    Buffer,
    Storage,
    StoredObject,
    byte_views,
    checksum_of,
    fill_buffer,
    is_valid_name,
    validate_name,
    validate_prefix,
    whole_bytes,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

_log = logging.getLogger(__name__)

ENV_ENDPOINT = "DTR_S3_ENDPOINT"
MIB = 1 << 20
MIN_PART_BYTES = 5 * MIB  # S3's minimum for every part but the last
MAX_PART_BYTES = 5 << 30
MAX_PUT_BYTES = 5 << 30
MAX_PARTS = 10_000
METADATA_PREFIX = "dtr-"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3Storage(Storage):
    """Objects under ``prefix`` in ``bucket``; the bucket must exist."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size_bytes: int = 8 * MIB,
        multipart_threshold_bytes: int = 8 * MIB,
        max_concurrency: int = 10,
    ) -> None:
        self.bucket = validate_bucket(bucket)
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_name(self.prefix)
        _validate_sizes(part_size_bytes, multipart_threshold_bytes, max_concurrency)
        self.part_size_bytes = part_size_bytes
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.max_concurrency = max_concurrency
        config = Config(
            max_pool_connections=max(10, max_concurrency + 2),
            retries={"mode": "standard", "max_attempts": 3},
        )
        self.client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or os.environ.get(ENV_ENDPOINT) or None,
            region_name=region,
            config=config,
        )

    is_replicated = True

    def __repr__(self) -> str:
        return f"S3Storage({self.root_uri!r}, endpoint={self.client.meta.endpoint_url!r})"

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key_of(self, name: str) -> str:
        """The S3 key of object ``name``."""
        key = f"{self.prefix}/{validate_name(name)}" if self.prefix else validate_name(name)
        if len(key.encode()) > MAX_NAME_BYTES:
            raise InvalidArgument(f"S3 key {key[:80]!r}… is longer than {MAX_NAME_BYTES} bytes")
        return key

    def uri_of(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key_of(name)}"

    def write(
        self, name: str, buffers: Sequence[Buffer], *, algorithm: str = DEFAULT_ALGORITHM
    ) -> StoredObject:
        key = self.key_of(name)
        views = byte_views(buffers)
        size = sum(view.nbytes for view in views)
        checksum = checksum_of(views, algorithm)
        metadata = {METADATA_PREFIX + checksum.algorithm: checksum.hex_digest}
        try:
            if size < self.multipart_threshold_bytes:
                self._put(key, views, metadata)
            else:
                self._put_multipart(key, views, size, metadata)
            self._check_size(key, size)
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, "write", key) from err
        return StoredObject(self.uri_of(name), size, checksum)

    def read(self, name: str) -> bytearray:
        """The object's bytes, streamed into one preallocated ``bytearray``."""
        key = self.key_of(name)
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=key)
            data = bytearray(reply["ContentLength"])
            with reply["Body"] as body:
                # botocore-stubs type readinto's argument as IO[bytes]; it takes any buffer.
                got = fill_buffer(body.readinto, data)  # type: ignore[arg-type]
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, "read", key) from err
        del data[got:]  # a short body raised above; this is only belt and braces
        return data

    def delete(self, name: str) -> None:
        key = self.key_of(name)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, "delete", key) from err

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Names under the storage's prefix that start with ``prefix`` (all pages)."""
        validate_prefix(prefix)
        skip = len(self.prefix) + 1 if self.prefix else 0
        names: builtins.list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=(self.prefix + "/" if self.prefix else "") + prefix
            )
            for page in pages:
                names.extend(item["Key"][skip:] for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, "list", prefix or "") from err
        return sorted(name for name in names if is_valid_name(name))

    def close(self) -> None:
        self.client.close()

    def _put(self, key: str, views: Sequence[memoryview], metadata: dict[str, str]) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=_join(views),
            Metadata=metadata,
            ChecksumAlgorithm="CRC32",
        )

    def _put_multipart(
        self, key: str, views: Sequence[memoryview], size: int, metadata: dict[str, str]
    ) -> None:
        """Create, upload parts, complete; abort on any failure, whatever it was."""
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata=metadata, ChecksumAlgorithm="CRC32"
        )["UploadId"]
        try:
            parts = self._upload_parts(key, upload_id, views, size)
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException as err:
            self._abort(key, upload_id)
            if isinstance(err, ClientError | BotoCoreError | DtrError) or not isinstance(
                err, Exception
            ):
                raise
            raise CheckpointError(
                f"cannot write s3://{self.bucket}/{key}: multipart upload failed "
                f"and was aborted: {err!r}"
            ) from err

    def _upload_parts(
        self, key: str, upload_id: str, views: Sequence[memoryview], size: int
    ) -> builtins.list[CompletedPartTypeDef]:
        """Every part, ``max_concurrency`` at a time; at the first failure the rest are cancelled.

        Leaving the ``with`` waits for the parts already in flight, so an
        abort that follows cannot race a part still arriving.
        """
        part_size = max(self.part_size_bytes, -(-size // MAX_PARTS))
        starts = _starts(views)
        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="dtr-s3-part") as pool:
            futures = [
                pool.submit(
                    self._upload_part,
                    key,
                    upload_id,
                    number,
                    _slices(views, starts, begin, min(begin + part_size, size)),
                )
                for number, begin in enumerate(range(0, size, part_size), start=1)
            ]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in done:
                    if (error := future.exception()) is not None:
                        raise error
            except BaseException:  # a failed part, or Ctrl-C while waiting
                for future in futures:
                    future.cancel()
                raise
            return [future.result() for future in futures]

    def _upload_part(
        self, key: str, upload_id: str, number: int, slices: Sequence[memoryview]
    ) -> CompletedPartTypeDef:
        reply = self.client.upload_part(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=_join(slices),
            ChecksumAlgorithm="CRC32",
        )
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": reply["ETag"]}
        if reply.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = reply["ChecksumCRC32"]
        return part

    def _abort(self, key: str, upload_id: str) -> None:
        """Abort the upload; a failure to abort is logged, the original error is what counts."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as err:
            _log.warning(
                "could not abort multipart upload %s of s3://%s/%s (a bucket lifecycle rule "
                "AbortIncompleteMultipartUpload removes it): %s",
                upload_id,
                self.bucket,
                key,
                err,
            )

    def _check_size(self, key: str, size: int) -> None:
        """The stored object must have the size written; a wrong one is removed, then reported."""
        stored = self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        if stored != size:
            self.client.delete_object(Bucket=self.bucket, Key=key)
            raise CheckpointError(
                f"s3://{self.bucket}/{key} has {stored} bytes after the upload, expected "
                f"{size}; the object was deleted"
            )

    def _error(self, err: ClientError | BotoCoreError, action: str, key: str) -> DtrError:
        """Translate a botocore error for ``action`` on ``key`` into a dtr error."""
        uri = f"s3://{self.bucket}/{key}"
        code = err.response.get("Error", {}).get("Code", "") if isinstance(err, ClientError) else ""
        if code == "NoSuchBucket":
            return CheckpointError(
                f"cannot {action} {uri}: bucket {self.bucket!r} does not exist at "
                f"{self.client.meta.endpoint_url}; create it first "
                f"(for example: aws s3 mb s3://{self.bucket})"
            )
        if code in _MISSING_KEY_CODES and action == "read":
            return NotFound(f"{uri} does not exist")
        return CheckpointError(f"cannot {action} {uri}: {err}")


def validate_bucket(bucket: str) -> str:
    """``bucket`` if it is a valid S3 bucket name, else ``InvalidArgument``."""
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidArgument(
            f"S3 bucket name {bucket!r} is invalid: 3-63 lowercase letters, digits, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    return bucket


def _validate_sizes(part_size_bytes: int, threshold_bytes: int, max_concurrency: int) -> None:
    if not MIN_PART_BYTES <= part_size_bytes <= MAX_PART_BYTES:
        raise InvalidArgument(
            f"part_size_bytes must be between {MIN_PART_BYTES} (5 MiB, S3's minimum) and "
            f"{MAX_PART_BYTES} (5 GiB), got {part_size_bytes}"
        )
    if not 0 <= threshold_bytes <= MAX_PUT_BYTES:
        raise InvalidArgument(
            f"multipart_threshold_bytes must be between 0 and {MAX_PUT_BYTES} "
            f"(5 GiB, S3's largest single PUT), got {threshold_bytes}"
        )
    if max_concurrency < 1:
        raise InvalidArgument(f"max_concurrency must be at least 1, got {max_concurrency}")


def _starts(views: Sequence[memoryview]) -> builtins.list[int]:
    """The offset of each view in the concatenation."""
    starts, offset = [], 0
    for view in views:
        starts.append(offset)
        offset += view.nbytes
    return starts


def _slices(
    views: Sequence[memoryview], starts: Sequence[int], begin: int, end: int
) -> builtins.list[memoryview]:
    """Views of bytes ``[begin, end)`` of the concatenation of ``views`` (no copy)."""
    index = bisect_right(starts, begin) - 1
    slices: builtins.list[memoryview] = []
    while begin < end:
        view, base = views[index], starts[index]
        stop = min(view.nbytes, end - base)
        slices.append(view[begin - base : stop])
        begin = base + stop
        index += 1
    return slices


def _join(views: Sequence[memoryview]) -> bytes:
    """One ``bytes`` body: the caller's own when a single view spans one, else one copy."""
    if len(views) == 1:
        whole = whole_bytes(views[0])
        if whole is not None:
            return whole
    return b"".join(views)
