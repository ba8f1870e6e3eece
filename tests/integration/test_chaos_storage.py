"""A chaos run's checkpoint storage (``dtr.chaos.run_storage``), against real servers and mounts.

``dtr demo --s3 URL`` and S3 chaos scenarios depend on it: the user's S3
server gets the bucket it needs, an unreachable one is one clear error, and a
``disk-full`` run's tmpfs is mounted for the run and gone after it.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import boto3
import pytest

from dtr.chaos.disk import MountError, TmpfsMount, fill
from dtr.chaos.run_storage import BUCKET, start_storage
from dtr.chaos.scenario import FaultKind, Scenario
from dtr.errors import CheckpointError
from dtr.etcd import pick_free_ports
from dtr.storage.s3 import ENV_ENDPOINT

pytestmark = pytest.mark.integration


def scenario(storage: str, fault: FaultKind) -> Scenario:
    return Scenario("probe", "a storage probe", faults=((fault, 1.0),), storage=storage)


def test_a_users_s3_server_gets_the_bucket_and_the_workers_its_endpoint(
    s3_server: str, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        storage = start_storage(
            stack, scenario("s3", FaultKind.LEADER_KILL), tmp_path, "job-1", s3_server
        )
    assert storage.uri == f"s3://{BUCKET}/job-1"
    assert dict(storage.environment)[ENV_ENDPOINT] == s3_server
    assert storage.proxy is None  # the user's server is not ours to slow down
    names = {
        b["Name"] for b in boto3.client("s3", endpoint_url=s3_server).list_buckets()["Buckets"]
    }
    assert BUCKET in names
    with ExitStack() as stack:  # a second run finds the bucket there and is fine with it
        start_storage(stack, scenario("s3", FaultKind.LEADER_KILL), tmp_path, "job-2", s3_server)


def test_an_unreachable_s3_server_is_one_clear_error(s3_server: str, tmp_path: Path) -> None:
    del s3_server  # for the dummy credentials in the environment
    nowhere = f"http://127.0.0.1:{pick_free_ports(1)[0]}"
    with (
        ExitStack() as stack,
        pytest.raises(CheckpointError, match=f"cannot use the S3 server at {nowhere}"),
    ):
        start_storage(stack, scenario("s3", FaultKind.LEADER_KILL), tmp_path, "job", nowhere)


def test_a_disk_full_run_gets_a_tmpfs_that_fills_and_is_gone_afterwards(tmp_path: Path) -> None:
    try:
        TmpfsMount(tmp_path / "probe", 1).mount().unmount()
    except MountError as err:
        pytest.skip(str(err))
    with ExitStack() as stack:
        storage = start_storage(stack, scenario("file", FaultKind.DISK_FULL), tmp_path, "job")
        assert storage.mount is not None and storage.mount.is_mount()
        ballast, written = fill(storage.mount)
        assert written > 0
        with pytest.raises(OSError, match="No space left"):
            (storage.mount / "part").write_bytes(b"x" * 8192)
        ballast.unlink()
        (storage.mount / "part").write_bytes(b"x" * 8192)  # room again once freed
    assert not (tmp_path / "checkpoints").is_mount()
