"""dtr.storage on S3, against a real ``moto_server`` on loopback (``s3_server``).

Every test gets a bucket of its own. Failures midway are injected through
botocore's public event hooks on the storage's own client (the request that
would carry part 2, or the completion, raises before it is sent), so the
server really holds an open upload with parts when the failure strikes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from dtr.errors import CheckpointError, InvalidArgument, NotFound
from dtr.storage import S3Storage, checksum_of, open_storage

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1 << 20
NAME = "step-00000000000000000100/w-3.dtr"
PREFIX = "run-7"


@pytest.fixture
def s3(s3_server: str) -> Iterator[S3Client]:
    """A plain boto3 client: what an operator (or another tool) sees in the bucket."""
    client = boto3.client("s3", endpoint_url=s3_server)
    yield client
    client.close()


@pytest.fixture
def bucket(s3: S3Client) -> str:
    name = f"dtr-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def storage(s3_server: str, bucket: str) -> Iterator[S3Storage]:
    """5 MiB parts (S3's minimum) from 5 MiB on, three at a time."""
    storage = open_storage(
        f"s3://{bucket}/{PREFIX}",
        endpoint_url=s3_server,
        part_size_bytes=5 * MIB,
        multipart_threshold_bytes=5 * MIB,
        max_concurrency=3,
    )
    assert isinstance(storage, S3Storage)
    yield storage
    storage.close()


def twelve_mib_in_uneven_buffers() -> list[bytes | bytearray | memoryview]:
    """~12 MiB whose buffer boundaries never line up with the 5 MiB parts."""
    pieces: list[bytes | bytearray | memoryview] = [bytearray(os.urandom(7 * MIB + 3))]
    pieces += [os.urandom(100_000) for _ in range(20)]
    pieces.append(memoryview(os.urandom(3 * MIB)))
    return pieces


def open_uploads(s3: S3Client, bucket: str) -> list[str]:
    return [upload["Key"] for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def test_a_small_object_round_trips_and_plain_boto3_reads_the_same(
    storage: S3Storage, s3: S3Client, bucket: str
) -> None:
    stored = storage.write(NAME, [b"1234", bytearray(b"56789")])

    assert stored.uri == f"s3://{bucket}/{PREFIX}/{NAME}"
    assert (stored.size_bytes, str(stored.checksum)) == (9, "crc32c:e3069283")
    reply = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{NAME}")
    assert reply["Body"].read() == b"123456789"
    assert reply["Metadata"] == {"dtr-crc32c": "e3069283"}
    assert storage.read_verified(NAME, stored) == b"123456789"
    assert isinstance(storage.read(NAME), bytearray)  # writable: decoders alias it


def test_a_multipart_object_round_trips_in_three_parts(
    storage: S3Storage, s3: S3Client, bucket: str
) -> None:
    buffers = twelve_mib_in_uneven_buffers()
    expected = b"".join(bytes(memoryview(b)) for b in buffers)

    stored = storage.write(NAME, buffers, algorithm="sha256")

    assert stored.size_bytes == len(expected)
    assert stored.checksum == checksum_of([expected], "sha256")
    head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/{NAME}", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")  # S3's mark of a 3-part upload
    assert head["Metadata"] == {"dtr-sha256": stored.checksum.hex_digest}
    assert head.get("ChecksumCRC32")  # the parts went up with CRC32 checksums
    assert s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{NAME}")["Body"].read() == expected
    assert storage.read_verified(NAME, stored) == expected
    assert open_uploads(s3, bucket) == []


def fail_on(storage: S3Storage, operation: str, error: Exception) -> None:
    """Make ``operation`` raise ``error`` (for UploadPart: only part 2) before it is sent."""

    def inject(params: dict[str, Any], **_: Any) -> None:
        if params.get("PartNumber", 2) == 2:
            raise error

    storage.client.meta.events.register(f"provide-client-params.s3.{operation}", inject)


@pytest.mark.parametrize(
    ("operation", "error"),
    [
        ("UploadPart", EndpointConnectionError(endpoint_url="http://127.0.0.1:1")),
        ("UploadPart", ValueError("the staging buffer went away")),
        ("CompleteMultipartUpload", EndpointConnectionError(endpoint_url="http://127.0.0.1:1")),
    ],
)
def test_an_upload_failing_midway_leaves_the_old_object_and_no_open_upload(
    storage: S3Storage, s3: S3Client, bucket: str, operation: str, error: Exception
) -> None:
    old = storage.write(NAME, [b"the previous version"])
    fail_on(storage, operation, error)

    with pytest.raises(CheckpointError) as caught:
        storage.write(NAME, twelve_mib_in_uneven_buffers())

    assert f"s3://{bucket}/{PREFIX}/{NAME}" in str(caught.value)
    assert open_uploads(s3, bucket) == []
    assert storage.read_verified(NAME, old) == b"the previous version"


def test_a_new_object_failing_midway_leaves_nothing(
    storage: S3Storage, s3: S3Client, bucket: str
) -> None:
    fail_on(storage, "UploadPart", EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))

    with pytest.raises(CheckpointError):
        storage.write(NAME, twelve_mib_in_uneven_buffers())

    assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert open_uploads(s3, bucket) == []


@pytest.mark.parametrize("size_bytes", [10, 6 * MIB], ids=["single-put", "multipart"])
def test_a_missing_bucket_is_a_clear_error(s3_server: str, size_bytes: int) -> None:
    storage = open_storage(
        "s3://no-such-bucket-dtr/run-7", endpoint_url=s3_server, part_size_bytes=5 * MIB
    )

    with pytest.raises(
        CheckpointError, match="bucket 'no-such-bucket-dtr' does not exist"
    ) as caught:
        storage.write(NAME, [bytes(size_bytes)])
    assert "create it" in str(caught.value)


def test_read_verified_catches_an_object_overwritten_behind_its_back(
    storage: S3Storage, s3: S3Client, bucket: str
) -> None:
    data = bytearray(os.urandom(4096))
    stored = storage.write(NAME, [data])
    data[100] ^= 0x80
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{NAME}", Body=bytes(data))

    with pytest.raises(CheckpointError, match="corrupt") as caught:
        storage.read_verified(NAME, stored)
    assert stored.uri in str(caught.value)

    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{NAME}", Body=bytes(data[:4000]))
    with pytest.raises(CheckpointError, match="4000 bytes, expected 4096"):
        storage.read_verified(NAME, stored)


def test_a_missing_object_is_not_found_and_fails_verification(storage: S3Storage) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        storage.read(NAME)
    with pytest.raises(CheckpointError, match="missing"):
        storage.read_verified(NAME, checksum_of([b"x"]), 1)


def test_list_sees_only_its_prefix_and_delete_is_idempotent(
    storage: S3Storage, s3: S3Client, bucket: str
) -> None:
    names = ["step-0001/w-1.dtr", "step-0001/w-2.dtr", "step-0002/w-1.dtr"]
    for name in names:
        storage.write(name, [b"x"])
    s3.put_object(Bucket=bucket, Key="run-8/step-0001/w-1.dtr", Body=b"another run")
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/step-0001/not valid", Body=b"foreign")

    assert storage.list() == names
    assert storage.list("step-0001/") == names[:2]
    storage.delete(names[0])
    storage.delete(names[0])
    assert storage.list("step-") == names[1:]
    with pytest.raises(InvalidArgument):
        storage.list("../run-8/")


def test_the_endpoint_comes_from_dtr_s3_endpoint(
    s3_server: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DTR_S3_ENDPOINT", s3_server)
    storage = open_storage(f"s3://{bucket}")

    stored = storage.write(NAME, [b"via the environment"])

    assert stored.uri == f"s3://{bucket}/{NAME}"
    assert storage.read(NAME) == b"via the environment"


def test_an_unreachable_endpoint_is_a_checkpoint_error(bucket: str) -> None:
    storage = open_storage(f"s3://{bucket}", endpoint_url="http://127.0.0.1:1")

    with pytest.raises(CheckpointError, match=bucket):
        storage.write(NAME, [b"x"])
