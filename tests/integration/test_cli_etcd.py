"""``dtr etcd`` as a user runs it: a real console script starting a real etcd.

Each test runs the installed ``dtr`` script in a subprocess, reads what it
prints, signals it as a terminal would, and checks that the etcd it started
is gone afterwards. Bad input must cost one line on stderr, never a traceback.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dtr.etcd import pick_free_ports, probe_health
from helpers import is_process_alive

pytestmark = pytest.mark.integration

_SCRIPT = Path(sys.executable).parent / "dtr"
DTR = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dtr.cli"]
_OWN_ENV = ("DTR_ETCD_", "DTR_DEBUG")


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without the caller's DTR_ETCD_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_ENV)}
    return {**env, **extra}


def start_dtr_etcd(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*DTR, "etcd", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def read_until(proc: subprocess.Popen[bytes], pattern: str, timeout_s: float = 30.0) -> str:
    """Stdout up to the first line matching ``pattern``; fails on exit or deadline."""
    assert proc.stdout is not None
    deadline, seen = time.monotonic() + timeout_s, b""
    while not re.search(pattern.encode(), seen):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0.0))
        chunk = os.read(proc.stdout.fileno(), 4096) if ready else b""
        if not chunk:
            stderr = proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
            pytest.fail(f"no {pattern!r} from dtr etcd; stdout={seen!r} stderr={stderr!r}")
        seen += chunk
    return seen.decode()


def stop_dtr(proc: subprocess.Popen[bytes]) -> None:
    """After a failed check: SIGTERM (dtr then stops its etcd), SIGKILL only as a last resort."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_dtr(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DTR, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- running and stopping --------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_dtr_etcd_serves_until_signalled_then_stops_its_etcd(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    client, peer = pick_free_ports(2)
    data = tmp_path / "etcd-data"
    args = ["--client-port", str(client), "--peer-port", str(peer), "--data-dir", str(data)]
    proc = start_dtr_etcd(args, clean_env())
    try:
        out = read_until(proc, r"export DTR_ETCD=\S+\n")
        url = f"http://127.0.0.1:{client}"
        assert f"export DTR_ETCD={url}" in out
        match = re.search(r"pid (\d+)", out)
        assert match is not None, out
        etcd_pid = int(match.group(1))
        assert probe_health(url)
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=30) == 0
    finally:
        stop_dtr(proc)
    assert not is_process_alive(etcd_pid)
    assert proc.stdout is not None and "etcd stopped" in proc.stdout.read().decode()
    assert (data / "data" / "member").is_dir() and (data / "etcd.log").is_file()


def test_dtr_etcd_takes_its_options_from_the_environment(tmp_path: Path) -> None:
    client, peer = pick_free_ports(2)
    env = clean_env(
        DTR_ETCD_CLIENT_PORT=str(client),
        DTR_ETCD_PEER_PORT=str(peer),
        DTR_ETCD_DATA_DIR=str(tmp_path / "from-env"),
    )
    proc = start_dtr_etcd([], env)
    try:
        out = read_until(proc, r"export DTR_ETCD=\S+\n")
        assert f"export DTR_ETCD=http://127.0.0.1:{client}" in out
        assert (tmp_path / "from-env" / "etcd.log").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        stop_dtr(proc)


# --- bad input -------------------------------------------------------------------------


def test_dtr_etcd_refuses_a_taken_client_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        (peer,) = pick_free_ports(1)
        args = ["etcd", "--client-port", str(taken), "--peer-port", str(peer)]
        result = run_dtr([*args, "--data-dir", str(tmp_path / "d")], clean_env())
    assert_one_line_error(result, "--client-port", str(taken), "in use")
    assert not (tmp_path / "d" / "data").exists(), "etcd must not have been started"


def test_dtr_etcd_refuses_a_data_dir_under_a_regular_file(tmp_path: Path) -> None:
    # Tests run as root, for whom permission bits do not stop writes; a path
    # below a regular file cannot be created by anyone.
    (tmp_path / "a-file").write_text("")
    client, peer = pick_free_ports(2)
    data = tmp_path / "a-file" / "etcd-data"
    args = ["etcd", "--client-port", str(client), "--peer-port", str(peer)]
    result = run_dtr([*args, "--data-dir", str(data)], clean_env())
    assert_one_line_error(result, "--data-dir", str(data), "Not a directory")


def test_dtr_etcd_names_the_variable_holding_a_bad_value(tmp_path: Path) -> None:
    result = run_dtr(["etcd"], clean_env(DTR_ETCD_CLIENT_PORT="twenty"))
    assert_one_line_error(result, "DTR_ETCD_CLIENT_PORT", "twenty")


def test_dtr_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    data = str(tmp_path / "a-file" / "d")
    result = run_dtr(["--debug", "etcd", "--data-dir", data], clean_env())
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "InvalidArgument" in result.stderr


def test_dtr_etcd_help_names_every_environment_variable() -> None:
    result = run_dtr(["etcd", "--help"], clean_env(COLUMNS="200"))
    assert result.returncode == 0
    for variable in (
        "DTR_ETCD_DATA_DIR",
        "DTR_ETCD_CLIENT_PORT",
        "DTR_ETCD_PEER_PORT",
        "DTR_ETCD_LISTEN_HOST",
        "DTR_ETCD_BIN",
    ):
        assert variable in result.stdout
