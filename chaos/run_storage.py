"""Where a chaos run's checkpoints go, set up so the nemesis can hurt it.

``storage: file`` (the default) keeps checkpoints under ``work_dir/checkpoints``;
with a ``disk-full`` fault that directory is a small tmpfs (``disk.py``) the
nemesis can fill. ``storage: s3`` starts the run's own ``moto_server`` on
loopback behind a ``TcpProxy`` the ``slow-storage`` fault delays, creates the
bucket, and gives the workers the proxy as ``DTR_S3_ENDPOINT`` with dummy
credentials; the harness reads the parts back directly from the server, so
verifying them at the end is never slowed by the fault.

Everything started here is registered on the run's ``ExitStack``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from dtr.errors import CheckpointError
from dtr.storage.s3 import ENV_ENDPOINT

from .disk import TmpfsMount
from .proxy import TcpProxy
from .s3_server import DUMMY_CREDENTIALS, MotoServer
from .scenario import FaultKind, Scenario

#: The checkpoint tmpfs of a disk-full scenario: room for many small chaos checkpoints.
STORAGE_TMPFS_MIB = 64
#: AWS settings of the developer's that must not mix with the run's dummy credentials.
NOT_INHERITED = ("AWS_PROFILE", "AWS_SESSION_TOKEN")
#: The bucket of an S3 run; the job name is the prefix.
BUCKET = "dtr-chaos"


@dataclass(frozen=True)
class RunStorage:
    """The checkpoint URI, and the handles the nemesis needs to hurt the storage."""

    uri: str
    mount: Path | None = None
    proxy: TcpProxy | None = None
    environment: tuple[tuple[str, str], ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)


def start_storage(
    stack: ExitStack, scenario: Scenario, work_dir: Path, job: str, s3_endpoint: str | None = None
) -> RunStorage:
    """The run's checkpoint storage, ready; stopped (or unmounted) when ``stack`` closes.

    ``s3_endpoint``: an S3 server of the user's (credentials from their
    environment, the bucket created if missing) instead of the run's own.
    """
    if scenario.storage == "s3" and s3_endpoint is not None:
        return _use_s3(s3_endpoint, job)
    if scenario.storage == "s3":
        return _start_s3(stack, work_dir, job)
    checkpoints = work_dir / "checkpoints"
    if FaultKind.DISK_FULL not in scenario.kinds:
        return RunStorage(checkpoints.as_uri())
    mount = TmpfsMount(checkpoints, STORAGE_TMPFS_MIB).mount()
    stack.callback(mount.unmount)
    return RunStorage(checkpoints.as_uri(), mount=mount.path)


def _start_s3(stack: ExitStack, work_dir: Path, job: str) -> RunStorage:
    (work_dir / "logs").mkdir(parents=True, exist_ok=True)
    server = MotoServer.start(work_dir / "logs")
    stack.callback(server.stop)
    proxy = TcpProxy(f"127.0.0.1:{server.port}").start()
    stack.callback(proxy.close)
    # The harness's own boto3 clients use the dummy credentials, never a profile.
    stack.enter_context(_environment({**DUMMY_CREDENTIALS, **dict.fromkeys(NOT_INHERITED)}))
    boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=BUCKET)
    environment = {**DUMMY_CREDENTIALS, ENV_ENDPOINT: f"http://{proxy.address}"}
    return RunStorage(
        f"s3://{BUCKET}/{job}",
        proxy=proxy,
        environment=tuple(sorted(environment.items())),
        options={"endpoint_url": server.endpoint_url},
    )


def _use_s3(endpoint: str, job: str) -> RunStorage:
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=BUCKET)
    except (BotoCoreError, ClientError, ValueError) as err:
        raise CheckpointError(
            f"cannot use the S3 server at {endpoint}: {err}; check the URL and that "
            "AWS credentials are set (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        ) from None
    return RunStorage(
        f"s3://{BUCKET}/{job}",
        environment=((ENV_ENDPOINT, endpoint),),
        options={"endpoint_url": endpoint},
    )


@contextmanager
def _environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block (None: unset), then as it was."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
