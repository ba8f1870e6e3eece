"""A local cluster of real coordinator processes: the launcher, ``dtr status`` and ``dtr up``.

Replicas are real ``python -m dtr coordinator`` processes on the session etcd,
each test on a job of its own so tests never see each other's leaders.
Leadership is read from the gRPC health service the way a load balancer
would; every wait is for a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtr.chaos.cluster import ClusterError, LocalCluster
from dtr.etcd import RunningEtcd, pick_free_ports
from helpers import is_process_alive, wait_until

pytestmark = pytest.mark.integration

DTR = [sys.executable, "-m", "dtr"]
REPLICA_IDS = {"replica-0", "replica-1", "replica-2"}


def unique_job() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def clean_env() -> dict[str, str]:
    """Our environment without any DTR_* setting, so the shell cannot steer the CLI."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DTR_")}


def run_dtr(args: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DTR, *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout_s,
        check=False,
    )


def status_json(args: list[str]) -> dict[str, object]:
    result = run_dtr(["status", "--json", *args])
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert isinstance(status, dict)
    return status


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    """Three replicas of a fresh job on the session etcd; afterwards none is left running."""
    with LocalCluster.start(replicas=3, etcd=etcd, job=unique_job()) as started:
        pids = [r.pid for r in started.replicas]
        yield started
    assert not [pid for pid in pids if pid is not None and is_process_alive(pid)]


# --- the launcher ---------------------------------------------------------------------


def test_a_local_cluster_serves_on_loopback_with_exactly_one_leader(cluster: LocalCluster) -> None:
    assert len(set(cluster.endpoints)) == 3
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", e) for e in cluster.endpoints)
    assert all(r.is_serving() for r in cluster.replicas)
    leader = cluster.leader(timeout_s=30)
    assert [r for r in cluster.replicas if r.is_leader()] == [leader]


def test_killing_the_leader_elects_another_and_the_old_one_rejoins_as_follower(
    cluster: LocalCluster,
) -> None:
    old = cluster.leader(timeout_s=30)
    old_pid = old.pid
    old.kill()
    assert old_pid is not None and not is_process_alive(old_pid)
    new = cluster.wait_new_leader(old, timeout_s=30)
    old.restart()
    assert old.pid != old_pid
    cluster.wait_ready(timeout_s=30)
    assert old.is_serving()
    assert cluster.leader(timeout_s=30) is new


def test_a_paused_leader_is_replaced_and_stands_down_once_resumed(cluster: LocalCluster) -> None:
    old = cluster.leader(timeout_s=30)
    old.pause()
    try:
        new = cluster.wait_new_leader(old, timeout_s=30)
    finally:
        old.resume()
    wait_until(lambda: cluster.leaders() == [new], 30, "the resumed replica to stand down")
    assert old.is_serving() and not old.is_leader()


def test_a_terminated_leader_hands_over_well_before_its_lease_expires(etcd: RunningEtcd) -> None:
    ttl_s = 10
    with LocalCluster.start(
        replicas=2, etcd=etcd, job=unique_job(), lease_ttl_s=ttl_s, renew_deadline_s=5.0
    ) as slow:
        old = slow.leader(timeout_s=30)
        started = time.monotonic()
        old.terminate(timeout_s=10)
        slow.wait_new_leader(old, timeout_s=30)
        assert time.monotonic() - started < ttl_s / 2, "SIGTERM should revoke the lease"


def test_a_cluster_that_starts_its_own_etcd_stops_it_and_removes_its_files() -> None:
    with LocalCluster.start(replicas=1, job=unique_job()) as own:
        assert own.owned_etcd is not None
        etcd_pids = [m.pid for m in own.owned_etcd.members]
        replica_pid = own.replicas[0].pid
        work_dir = own.work_dir
        assert own.leader(timeout_s=30) is own.replicas[0]
        assert (work_dir / "replica-0.log").is_file()
    gone = [replica_pid, *etcd_pids]
    assert not [pid for pid in gone if pid is not None and is_process_alive(pid)]
    assert not work_dir.exists()


def test_a_replica_that_cannot_start_fails_start_with_its_reason(
    etcd: RunningEtcd, tmp_path: Path
) -> None:
    with pytest.raises(ClusterError) as caught:
        LocalCluster.start(
            replicas=2,
            etcd=etcd,
            job=unique_job(),
            extra_args=["--lease-ttl-s", "1"],
            work_dir=tmp_path,
        )
    first_line = str(caught.value).splitlines()[0]
    assert "exited with code 1" in first_line and "--lease-ttl-s" in first_line
    # Both replicas refuse the flag; the error names whichever exit was seen first,
    # and that replica's own log must hold the reason.
    named = re.search(r"\(log: (\S+)\)$", first_line)
    assert named is not None, first_line
    log = Path(named.group(1))
    assert log.parent == tmp_path
    assert "--lease-ttl-s" in log.read_text()


# --- dtr status -------------------------------------------------------------------------


def assert_shows_cluster(status: dict[str, object], cluster: LocalCluster, leader_id: str) -> None:
    leader = cluster.replica(leader_id)
    assert status["job"] == cluster.job
    assert status["leader"] is not None
    assert status["leader"] == {
        "id": leader_id,
        "address": leader.address,
        "term": reported_term(status),
    }
    replicas = status["replicas"]
    assert isinstance(replicas, list)
    assert {r["id"] for r in replicas} == REPLICA_IDS
    assert {r["address"] for r in replicas} == set(cluster.endpoints)
    assert [r["id"] for r in replicas if r["is_leader"]] == [leader_id]
    for key in ("workers", "generation", "datasets", "latest_checkpoint"):
        assert key in status


def reported_term(status: dict[str, object]) -> int:
    """The term the status reports, after checking it is a fencing token (positive)."""
    leader = status["leader"]
    assert isinstance(leader, dict)
    term = leader["term"]
    assert isinstance(term, int) and term > 0
    return term


def test_dtr_status_json_asked_of_a_follower_shows_the_leader_and_three_replicas(
    cluster: LocalCluster,
) -> None:
    leader = cluster.leader(timeout_s=30)
    follower = next(r for r in cluster.replicas if r is not leader)
    status = status_json(["--coordinator", follower.address])
    assert_shows_cluster(status, cluster, leader.replica_id)


def test_dtr_status_finds_the_replicas_through_etcd(cluster: LocalCluster) -> None:
    leader = cluster.leader(timeout_s=30)
    status = status_json(["--etcd", cluster.etcd_urls[0], "--job", cluster.job])
    assert_shows_cluster(status, cluster, leader.replica_id)


def test_dtr_status_tries_the_next_coordinator_when_one_is_down(cluster: LocalCluster) -> None:
    leader = cluster.leader(timeout_s=30)
    (dead,) = pick_free_ports(1)
    status = status_json(["--coordinator", f"127.0.0.1:{dead},{cluster.coordinators}"])
    assert_shows_cluster(status, cluster, leader.replica_id)


def test_dtr_status_prints_a_readable_table(cluster: LocalCluster) -> None:
    leader = cluster.leader(timeout_s=30)
    result = run_dtr(["status", "--coordinator", cluster.coordinators])
    assert result.returncode == 0, result.stderr
    assert f"leader: {leader.replica_id} at {leader.address} (term " in result.stdout
    assert "REPLICAS (3)" in result.stdout
    assert all(address in result.stdout for address in cluster.endpoints)


def test_dtr_status_with_no_coordinator_listening_is_one_line() -> None:
    (nobody,) = pick_free_ports(1)
    result = run_dtr(["status", "--coordinator", f"127.0.0.1:{nobody}"])
    assert_one_line_error(result, f"127.0.0.1:{nobody}", "UNAVAILABLE")


def test_dtr_status_with_etcd_unreachable_is_one_line() -> None:
    (nobody,) = pick_free_ports(1)
    result = run_dtr(["status", "--etcd", f"127.0.0.1:{nobody}", "--timeout-s", "2"])
    assert_one_line_error(result, f"127.0.0.1:{nobody}")


def test_dtr_status_of_a_job_without_replicas_says_so_in_one_line(etcd: RunningEtcd) -> None:
    job = unique_job()
    result = run_dtr(["status", "--etcd", etcd.endpoints[0], "--job", job])
    assert_one_line_error(result, job, "no coordinator")


def test_dtr_status_watch_redraws_survives_a_failed_ask_and_stops_on_sigterm(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    (nobody,) = pick_free_ports(1)
    out = tmp_path / "watch.txt"
    # A dead address first, then the replicas: every ask fails over, none ends the watch.
    target = f"127.0.0.1:{nobody}"
    with out.open("w") as sink:
        watch = subprocess.Popen(
            [*DTR, "status", "--coordinator", target, "--watch", "0.2", "--timeout-s", "1"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
    try:
        wait_until(
            lambda: out.read_text().count("no coordinator answered") >= 2,
            30,
            "two failed asks shown",
        )
        assert watch.poll() is None, out.read_text()  # a failed ask is not the end
        watch.send_signal(signal.SIGTERM)
        assert watch.wait(timeout=30) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert re.search(r"^\[\d\d:\d\d:\d\d\] dtr status: ", out.read_text(), re.M)
    good = run_dtr_watch_once(cluster)
    assert "REPLICAS (3)" in good


def run_dtr_watch_once(cluster: LocalCluster) -> str:
    """A watch of the real replicas, stopped after its first redraw."""
    watch = subprocess.Popen(
        [*DTR, "status", "--coordinator", cluster.coordinators, "--watch", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=clean_env(),
        text=True,
    )
    try:
        lines = read_until_text(watch, "REPLICAS (3)")
        watch.send_signal(signal.SIGTERM)
        assert watch.wait(timeout=30) == 0
        return lines
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()


def read_until_text(proc: subprocess.Popen[str], text: str, timeout_s: float = 30.0) -> str:
    """Lines of ``proc``'s stdout up to the first that contains ``text`` (or the deadline)."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} not printed within {timeout_s} s:\n{''.join(seen)}")


def test_dtr_status_without_a_target_is_one_line() -> None:
    assert_one_line_error(run_dtr(["status"]), "--coordinator", "--etcd")


# --- dtr up -----------------------------------------------------------------------------


def read_until(proc: subprocess.Popen[bytes], pattern: str, timeout_s: float = 60.0) -> str:
    """Stdout up to the first match of ``pattern``; fails on exit or deadline."""
    assert proc.stdout is not None
    deadline, seen = time.monotonic() + timeout_s, b""
    while not re.search(pattern.encode(), seen):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0.0))
        chunk = os.read(proc.stdout.fileno(), 4096) if ready else b""
        if not chunk:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"no {pattern!r} from dtr up; stdout={seen!r} stderr={err!r}")
        seen += chunk
    return seen.decode()


def test_dtr_up_prints_a_working_cluster_and_stops_it_all_on_ctrl_c() -> None:
    job = unique_job()
    proc = subprocess.Popen(
        [*DTR, "up", "--replicas", "3", "--job", job],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    try:
        out = read_until(proc, r"is running")
        pids = [int(p) for p in re.findall(r"\(pid (\d+)", out)]
        assert len(pids) == 4, out  # one etcd member, three replicas
        coordinators = re.search(r"export DTR_COORDINATORS=(\S+)", out)
        leader = re.search(r"leader: (\S+) at (\S+)", out)
        assert coordinators is not None and leader is not None, out
        assert re.search(r"export DTR_ETCD=http://127\.0\.0\.1:\d+", out), out
        status = status_json(["--coordinator", coordinators.group(1)])
        assert status["job"] == job
        assert status["leader"] is not None
        assert status["leader"]["id"] == leader.group(1)  # type: ignore[index]
        assert len(status["replicas"]) == 3  # type: ignore[arg-type]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stdout is not None and "dtr up: stopped" in proc.stdout.read().decode()
    assert not [pid for pid in pids if is_process_alive(pid)], "dtr up left children behind"


def test_dtr_up_refuses_ports_past_65535_in_one_line() -> None:
    result = run_dtr(["up", "--replicas", "3", "--base-port", "65534"])
    assert_one_line_error(result, "--base-port", "65535")
