"""A real S3-compatible server on loopback: ``moto_server`` (DESIGN §7).

The tests (``tests/s3_server.py``) and S3 chaos scenarios (``storage: s3``,
where ``slow-storage`` delays the link to it) start one the same way:
``moto_server -H 127.0.0.1 -p PORT`` as a child in its own session, waited
for until it answers HTTP (a condition with a deadline), stopped by its
``Popen`` handle only. ``moto_server`` comes with dtr's dev extra
(``moto[server]``); without it, a run that needs it is refused up front.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dtr.errors import DtrError
from dtr.etcd import pick_free_ports


class S3ServerError(DtrError):
    """``moto_server`` is missing or did not start."""


LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
#: Credentials for a server that checks none: boto3 must find some, and must never
#: find the developer's own (no profile, no config file, no instance metadata).
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "dtr-test",
    "AWS_SECRET_ACCESS_KEY": "dtr-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never probe an instance profile
    "AWS_CONFIG_FILE": os.devnull,  # ignore the developer's own AWS config
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def moto_server_binary() -> str:
    """``moto_server`` beside this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).with_name("moto_server")
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if found is None:
        raise S3ServerError(
            "moto_server is not installed: pip install 'moto[server]' (dtr's dev extra)"
        )
    return found


class MotoServer:
    """One ``moto_server`` process on a free loopback port; ``start`` it, ``stop`` it."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @classmethod
    def start(cls, log_dir: Path) -> MotoServer:
        """A running server, or S3ServerError carrying the server's log."""
        server = cls(pick_free_ports(1)[0], log_dir / "moto_server.log")
        with server.log_path.open("ab") as log:
            server.process = subprocess.Popen(
                [moto_server_binary(), "-H", LOOPBACK, "-p", str(server.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not server.wait_ready(time.monotonic() + START_TIMEOUT_S):
            server.stop()
            raise S3ServerError(
                f"moto_server did not answer on {server.endpoint_url}:\n{server.log()}"
            )
        return server

    def is_answering(self) -> bool:
        """Whether ``GET /`` (ListBuckets) gets any HTTP answer now."""
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=1.0):
                return True
        except urllib.error.HTTPError:
            return True  # an error page is still an answer
        except OSError:
            return False

    def wait_ready(self, deadline: float) -> bool:
        """Poll until the server answers (True) or exits or ``deadline`` passes (False)."""
        assert self.process is not None
        while self.process.poll() is None:
            if self.is_answering():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """SIGTERM our process, SIGKILL it if it lingers; only ever this PID."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError as err:
            return f"(no log: {err})"
