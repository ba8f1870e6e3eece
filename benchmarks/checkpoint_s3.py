"""The S3 figure of ``benchmarks/checkpoint.py``: ``S3Storage.write`` against ``upload_file``.

Both upload the same bytes to the same bucket of one ``moto_server`` on
127.0.0.1 (started here as ``tests/s3_server.py`` does: a child in its own
session, stopped by its ``Popen`` handle). dtr's side is
``open_storage("s3://…")`` with its defaults (8 MiB parts, 10 at a time,
CRC-32C over the whole object first, CRC32 per part, a ``head_object``
check), given 64 MiB memoryviews of a staging buffer as a ``Snapshot``
would; the reference is boto3's ``upload_file`` of a file holding the same
bytes (in the page cache) with its default ``TransferConfig``. Runs
alternate which goes first. The CPU seconds the server process used during
each upload are read from ``/proc``, to show where the time goes: the
emulator, not the loopback network, is the bottleneck. A third upload, dtr
with 8 MiB parts 10 at a time set explicitly through ``open_storage`` options
(the defaults since this benchmark showed 64 MiB x 4 reaching 0.74 of
``upload_file``), is for orientation only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

from dtr.etcd import pick_free_ports
from dtr.storage import open_storage

LOOPBACK = "127.0.0.1"
BUCKET = "dtr-bench"
CHUNK_BYTES = 64 << 20
SMALL_PART_BYTES = 8 << 20
SMALL_PARTS = "dtr, 8 MiB parts x10"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "dtr-bench",
    "AWS_SECRET_ACCESS_KEY": "dtr-bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
Result = dict[str, Any]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@contextmanager
def moto_server(log_path: Path) -> Iterator[tuple[str, int]]:
    """``(endpoint URL, pid)`` of a running ``moto_server``; stopped (by handle) on exit."""
    binary = Path(sys.executable).with_name("moto_server")
    port = pick_free_ports(1)[0]
    url = f"http://{LOOPBACK}:{port}"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(binary), "-H", LOOPBACK, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not answer on {url}; see {log_path}")
            time.sleep(0.05)
        yield url, process.pid
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(upload: Callable[[], object], server_pid: int) -> Result:
    server_cpu, client_cpu = cpu_seconds_of(server_pid), time.process_time()
    started = time.perf_counter()
    upload()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "server_cpu_s": cpu_seconds_of(server_pid) - server_cpu,
        "client_cpu_s": time.process_time() - client_cpu,
    }


def compare_uploads(data: memoryview, work_dir: Path, repetitions: int, budget_s: float) -> Result:
    """Rotated ``S3Storage.write`` / ``upload_file`` runs of ``data``; every run's numbers."""
    os.environ.update(ENVIRONMENT)  # boto3's usual source, for both sides
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    path = work_dir / "s3-object.bin"
    with path.open("wb") as file:
        file.write(data)
    views = [data[i : i + CHUNK_BYTES] for i in range(0, data.nbytes, CHUNK_BYTES)]
    runs: list[Result] = []
    with moto_server(work_dir / "moto_server.log") as (url, pid):
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket=BUCKET)
        storage = open_storage(f"s3://{BUCKET}/dtr", endpoint_url=url)
        small_parts = open_storage(
            f"s3://{BUCKET}/dtr-8mib",
            endpoint_url=url,
            part_size_bytes=SMALL_PART_BYTES,
            multipart_threshold_bytes=SMALL_PART_BYTES,
            max_concurrency=10,
        )
        uploads: dict[str, Callable[[], object]] = {
            "dtr": lambda: storage.write("part.dtr", views),
            "upload_file": lambda: client.upload_file(str(path), BUCKET, "plain/part.bin"),
            SMALL_PARTS: lambda: small_parts.write("part.dtr", views),
        }
        # One small untimed round trip each: connections and lazy imports are not the figure.
        storage.write("warm.dtr", [b"x"])
        client.upload_file(os.devnull, BUCKET, "plain/warm.bin")
        deadline = time.monotonic() + budget_s
        order = list(uploads)
        for rep in range(repetitions):
            if rep and time.monotonic() > deadline:
                break
            for name in order[rep % 3 :] + order[: rep % 3]:
                run = {"rep": rep, "who": name, **_timed(uploads[name], pid)}
                run["bytes_per_s"] = data.nbytes / run["seconds"]
                runs.append(run)
                print(f"s3 rep {rep} {name}: {run['seconds']:.2f} s", flush=True)
            for key in ("dtr/part.dtr", "dtr-8mib/part.dtr", "plain/part.bin"):
                client.delete_object(Bucket=BUCKET, Key=key)
        storage.close()
        small_parts.close()
        client.close()
    path.unlink()
    return {"endpoint": "moto_server on 127.0.0.1", "size_bytes": data.nbytes, "runs": runs}
