"""dtr.storage on local disk: round trips, checksums, atomicity, names, URIs, verification.

One test runs a short child process: a file-size limit (RLIMIT_FSIZE) is
per process, and the way to make a real write fail midway with a real errno
without touching the test runner's own limits.
"""

from __future__ import annotations

import array
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import google_crc32c
import pytest

from dtr.errors import CheckpointError, InvalidArgument, NotFound
from dtr.storage import (
    Buffer,
    Checksum,
    FileStorage,
    S3Storage,
    StoredObject,
    checksum_of,
    new_hasher,
    open_storage,
)

MIB = 1 << 20
NAME = "step-00000000000000000100/w-3.dtr"


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    return FileStorage(tmp_path / "ckpt")


def leftovers(root: Path) -> list[str]:
    """Every hidden (temporary) file under ``root``."""
    return sorted(str(p) for p in root.rglob(".*"))


def test_written_bytes_read_back_with_their_size_and_checksum(storage: FileStorage) -> None:
    stored = storage.write(NAME, [b"1234", bytearray(b"5678"), memoryview(b"9")])

    assert stored == StoredObject(
        uri=(storage.root / NAME).as_uri(),
        size_bytes=9,
        checksum=Checksum("crc32c", "e3069283"),
    )
    assert storage.read(NAME) == b"123456789"
    assert storage.read_verified(NAME, stored) == b"123456789"
    assert storage.name_of(stored.uri) == NAME


@pytest.mark.parametrize(
    ("algorithm", "data", "hex_digest"),
    [
        ("crc32c", b"123456789", "e3069283"),
        ("crc32c", b"", "00000000"),
        ("sha256", b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    ],
)
def test_checksums_match_known_vectors(algorithm: str, data: bytes, hex_digest: str) -> None:
    assert checksum_of([data], algorithm) == Checksum.of(algorithm, hex_digest)


@pytest.mark.parametrize("algorithm", ["crc32c", "sha256"])
def test_streaming_a_checksum_over_any_buffers_equals_hashing_the_whole(algorithm: str) -> None:
    whole = os.urandom(3 * MIB + 12345)
    hasher = new_hasher(algorithm)
    for piece in (whole[:7], bytearray(whole[7 : 2 * MIB]), memoryview(whole)[2 * MIB :]):
        hasher.update(piece)

    expected = (
        f"{google_crc32c.value(whole):08x}"
        if algorithm == "crc32c"
        else hashlib.sha256(whole).hexdigest()
    )
    assert hasher.checksum().hex_digest == expected


def test_many_small_and_some_big_buffers_are_written_in_order(storage: FileStorage) -> None:
    small = [os.urandom(17) for _ in range(3000)]  # more than IOV_MAX (1024) at once
    big: list[Buffer] = [bytearray(os.urandom(MIB)) * 9, os.urandom(5 * MIB)]
    floats = memoryview(array.array("d", range(1000)))  # a non-byte format: written as bytes
    buffers: list[Buffer] = [*small[:1500], big[0], floats, *small[1500:], big[1], b""]
    expected = b"".join(bytes(memoryview(b)) for b in buffers)

    stored = storage.write(NAME, buffers, algorithm="sha256")

    assert stored.size_bytes == len(expected)
    assert stored.checksum == Checksum("sha256", hashlib.sha256(expected).hexdigest())
    assert storage.read(NAME) == expected
    assert leftovers(storage.root) == []


def test_a_write_replaces_an_existing_object_whole(storage: FileStorage) -> None:
    storage.write(NAME, [b"old" * 1000])
    stored = storage.write(NAME, [b"new"])

    assert storage.read_verified(NAME, stored) == b"new"
    assert leftovers(storage.root) == []


def test_a_write_failing_midway_leaves_the_old_object_and_no_temporary_file(
    storage: FileStorage,
) -> None:
    old = storage.write(NAME, [b"the previous version"])
    child = textwrap.dedent(
        """
        import resource, signal, sys
        from dtr.errors import CheckpointError
        from dtr.storage import FileStorage

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a core dump
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, hard))
        storage = FileStorage(sys.argv[1])
        buffers = [bytearray(3 << 20) for _ in range(4)]  # 12 MiB: hashed on a second thread
        for name in (sys.argv[2], "step-00000000000000000200/w-3.dtr"):
            try:
                storage.write(name, buffers)
            except CheckpointError as err:
                print(str(err))
            else:
                print("written")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child, str(storage.root), NAME],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    errors = result.stdout.splitlines()
    assert len(errors) == 2, result.stdout + result.stderr
    for error in errors:
        assert "File too large (EFBIG)" in error
        assert storage.root.as_uri() in error
    assert storage.read_verified(NAME, old) == b"the previous version"
    assert storage.list() == [NAME]
    assert leftovers(storage.root) == []


def test_a_root_under_a_regular_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_bytes(b"not a directory")
    storage = open_storage(f"file://{tmp_path}/afile/sub")

    with pytest.raises(CheckpointError, match=r"Not a directory \(ENOTDIR\)") as caught:
        storage.write(NAME, [b"x"])
    assert f"{tmp_path}/afile/sub" in str(caught.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/abs/w.dtr",
        "../w.dtr",
        "step/../w.dtr",
        "step//w.dtr",
        "step/",
        ".hidden",
        "step/.w.dtr.tmp-1234",
        "-flag",
        "with space",
        "back\\slash",
        "ünïcode",
        "a" * 256,
        "/".join(["a" * 200] * 6),
    ],
)
def test_unsafe_names_are_refused(storage: FileStorage, name: str) -> None:
    with pytest.raises(InvalidArgument, match="name"):
        storage.write(name, [b"x"])
    with pytest.raises(InvalidArgument, match="name"):
        storage.read(name)


def test_read_verified_detects_a_flipped_byte(storage: FileStorage) -> None:
    stored = storage.write(NAME, [os.urandom(4096)])
    path = storage.path_of(NAME)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01
    path.write_bytes(data)

    with pytest.raises(CheckpointError, match="corrupt") as caught:
        storage.read_verified(NAME, stored)
    assert stored.uri in str(caught.value)


def test_read_verified_detects_a_truncated_file(storage: FileStorage) -> None:
    stored = storage.write(NAME, [os.urandom(4096)])
    with storage.path_of(NAME).open("r+b") as file:
        file.truncate(4000)

    with pytest.raises(CheckpointError, match="4000 bytes, expected 4096"):
        storage.read_verified(NAME, stored.checksum, stored.size_bytes)


def test_a_missing_object_is_not_found_and_fails_verification(storage: FileStorage) -> None:
    checksum = checksum_of([b"x"])

    with pytest.raises(NotFound, match="does not exist"):
        storage.read(NAME)
    with pytest.raises(CheckpointError, match="missing"):
        storage.read_verified(NAME, checksum, 1)


def test_verification_needs_a_size_that_agrees(storage: FileStorage) -> None:
    stored = storage.write(NAME, [b"x"])

    with pytest.raises(InvalidArgument, match="size_bytes"):
        storage.read_verified(NAME, stored.checksum)
    with pytest.raises(InvalidArgument, match="contradicts"):
        storage.read_verified(NAME, stored, 2)


def test_delete_is_idempotent(storage: FileStorage) -> None:
    storage.write(NAME, [b"x"])

    storage.delete(NAME)
    storage.delete(NAME)
    storage.delete("never/written")

    assert storage.list() == []


def test_list_filters_by_prefix_and_skips_temporary_and_foreign_files(
    storage: FileStorage,
) -> None:
    names = ["step-0001/w-1.dtr", "step-0001/w-2.dtr", "step-0002/w-1.dtr", "top.json"]
    for name in names:
        storage.write(name, [b"x"])
    (storage.root / "step-0001" / ".w-3.dtr.tmp-abc").write_bytes(b"partial")
    (storage.root / "step-0002" / "not valid").write_bytes(b"foreign")

    assert storage.list() == names
    assert storage.list("step-") == names[:3]
    assert storage.list("step-0001/") == names[:2]
    assert storage.list("step-0002/w") == names[2:3]
    assert storage.list("nothing/") == []
    assert FileStorage(storage.root / "absent").list() == []
    with pytest.raises(InvalidArgument, match="prefix"):
        storage.list("../")


def test_non_contiguous_buffers_are_refused(storage: FileStorage) -> None:
    strided = memoryview(bytearray(100))[::2]

    with pytest.raises(InvalidArgument, match="contiguous"):
        storage.write(NAME, [strided])


@pytest.mark.parametrize(
    ("algorithm", "hex_digest"),
    [("md5", "00"), ("crc32c", "E3069283"), ("crc32c", "e306928"), ("sha256", "e3069283")],
)
def test_malformed_checksums_are_refused(algorithm: str, hex_digest: str) -> None:
    with pytest.raises(InvalidArgument):
        Checksum.of(algorithm, hex_digest)


def test_open_storage_picks_the_backend_by_scheme(tmp_path: Path) -> None:
    local = open_storage(f"file://{tmp_path}/run-7")
    remote = open_storage("s3://ckpt-bucket/jobs/run-7", endpoint_url="http://127.0.0.1:9")

    assert isinstance(local, FileStorage)
    assert local.root == tmp_path / "run-7"
    assert not local.is_replicated
    assert isinstance(remote, S3Storage)
    assert (remote.bucket, remote.prefix, remote.is_replicated) == (
        "ckpt-bucket",
        "jobs/run-7",
        True,
    )
    assert remote.uri_of("step-1/w.dtr") == "s3://ckpt-bucket/jobs/run-7/step-1/w.dtr"
    assert remote.name_of("s3://ckpt-bucket/jobs/run-7/step-1/w.dtr") == "step-1/w.dtr"
    remote.close()


@pytest.mark.parametrize("uri", ["ftp://host/dir", "relative/dir", "/absolute/without/scheme"])
def test_unknown_schemes_are_refused_naming_the_supported_ones(uri: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        open_storage(uri)
    assert uri in str(caught.value)
    assert "file:///" in str(caught.value) and "s3://" in str(caught.value)


@pytest.mark.parametrize(
    "uri",
    [
        "file://host/dir",
        "file:relative/dir",
        "file:///dir?x=1",
        "s3://",
        "s3:///prefix",
        "s3://Not_A_Bucket/prefix",
        "s3://bucket/a//b",
        "s3://ckpt-bucket/../up",
    ],
)
def test_malformed_uris_are_refused(uri: str) -> None:
    with pytest.raises(InvalidArgument):
        open_storage(uri)


def test_unknown_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="part_size"):
        open_storage(f"file://{tmp_path}", part_size_bytes=5 * MIB)
    with pytest.raises(InvalidArgument, match="colour"):
        open_storage("s3://ckpt-bucket", colour="blue")
    with pytest.raises(InvalidArgument, match="5 MiB"):
        open_storage("s3://ckpt-bucket", part_size_bytes=MIB)


def test_name_of_refuses_uris_of_other_storages(storage: FileStorage) -> None:
    with pytest.raises(InvalidArgument, match="not an object"):
        storage.name_of("s3://ckpt-bucket/step-1/w.dtr")
    with pytest.raises(InvalidArgument, match="name"):
        storage.name_of(storage.root_uri + "/../escape")
