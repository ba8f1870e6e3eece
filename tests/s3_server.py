"""The ``s3_server`` fixture: a real ``moto_server`` on loopback for the tests (DESIGN §7).

The server itself is ``dtr.chaos.s3_server.MotoServer`` (the chaos harness
starts the same one). The session fixture yields its endpoint URL with dummy
AWS credentials and a region in the environment, so every boto3 client in
the run (dtr's and the tests' own) finds them the usual way; no client is
patched.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtr.chaos.s3_server import DUMMY_CREDENTIALS, MotoServer, S3ServerError

TEST_ENVIRONMENT = DUMMY_CREDENTIALS


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a ``moto_server`` shared by the session, with test credentials set."""
    with (
        tempfile.TemporaryDirectory(prefix="dtr-moto-") as log_dir,
        pytest.MonkeyPatch.context() as env,
    ):
        for name, value in TEST_ENVIRONMENT.items():
            env.setenv(name, value)
        env.delenv("AWS_PROFILE", raising=False)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        try:
            server = MotoServer.start(Path(log_dir))
        except S3ServerError as err:
            pytest.fail(str(err))
        try:
            yield server.endpoint_url
        finally:
            server.stop()
