"""``dtr coordinator`` as a user runs it: bad input costs one line, never a traceback.

Every test runs ``python -m dtr coordinator`` in a subprocess with the
caller's ``DTR_*`` settings removed, so the results do not depend on the
shell the tests run from. A coordinator that cannot reach etcd must give up
within its start-up timeout, again with one line.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import pytest

from dtr.cli import build_parser
from dtr.cli.coordinator_command import (
    COORDINATOR_OPTIONS,
    FIELD_FLAGS,
    HIDDEN_UNSAFE_FLAG,
    config_from_args,
    flag_message,
)
from dtr.cli.options import apply_environment
from dtr.coordinator.config import CoordinatorConfig
from dtr.etcd import pick_free_ports

pytestmark = pytest.mark.integration

DTR = [sys.executable, "-m", "dtr"]
NOWHERE = "127.0.0.1:1"  # nothing listens on port 1; only used where serve() is never reached


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without any DTR_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTR_")}
    return {**env, **extra}


def run_dtr(
    args: list[str], env: dict[str, str] | None = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DTR, *args],
        capture_output=True,
        text=True,
        env=clean_env() if env is None else env,
        timeout=timeout_s,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- bad flags: refused before anything starts -----------------------------------------


@pytest.mark.parametrize(
    ("args", "flags"),
    [
        (["--etcd", NOWHERE, "--lease-ttl-s", "1"], ["--lease-ttl-s"]),
        (
            ["--etcd", NOWHERE, "--renew-deadline-s", "5", "--lease-ttl-s", "3"],
            ["--renew-deadline-s", "--lease-ttl-s"],
        ),
        (["--etcd", NOWHERE, "--listen", "nonsense"], ["--listen", "nonsense"]),
        ([], ["--etcd", "DTR_ETCD"]),
        (["--etcd", "no-port-here"], ["--etcd", "no-port-here"]),
        (["--etcd", NOWHERE, "--job", "a/b"], ["--job", "a/b"]),
        (["--etcd", NOWHERE, "--heartbeat-timeout-s", "0.5"], ["--heartbeat-interval-s"]),
        (["--etcd", NOWHERE, "--metrics-port", "70000"], ["--metrics-port"]),
        (["--etcd", NOWHERE, "--lease-ttl-s", "three"], ["--lease-ttl-s", "three"]),
    ],
    ids=[
        "lease-ttl-too-short",
        "renew-deadline-not-below-ttl",
        "listen-not-host-port",
        "etcd-missing",
        "etcd-not-host-port",
        "job-with-slash",
        "heartbeat-timeout-below-interval",
        "metrics-port-out-of-range",
        "lease-ttl-not-a-number",
    ],
)
def test_dtr_coordinator_refuses_a_bad_flag_in_one_line(args: list[str], flags: list[str]) -> None:
    line = assert_one_line_error(run_dtr(["coordinator", *args]), *flags)
    assert line.startswith("dtr coordinator: error:")


def test_dtr_coordinator_names_the_variable_holding_a_bad_value() -> None:
    env = clean_env(DTR_ETCD=NOWHERE, DTR_LEASE_TTL_S="abc")
    assert_one_line_error(run_dtr(["coordinator"], env), "DTR_LEASE_TTL_S", "abc")


def test_dtr_coordinator_reads_a_bad_ttl_from_the_environment_and_names_the_flag() -> None:
    env = clean_env(DTR_ETCD=NOWHERE, DTR_LEASE_TTL_S="1")
    assert_one_line_error(run_dtr(["coordinator"], env), "--lease-ttl-s")


def test_dtr_coordinator_help_names_every_environment_variable() -> None:
    result = run_dtr(["coordinator", "--help"], clean_env(COLUMNS="200"))
    assert result.returncode == 0
    for variable in ("DTR_ETCD", "DTR_LISTEN", "DTR_ADVERTISE", "DTR_JOB", "DTR_REPLICA_ID"):
        assert f"env {variable}" in result.stdout
    for variable in ("DTR_LEASE_TTL_S", "DTR_HEARTBEAT_TIMEOUT_S", "DTR_METRICS_PORT"):
        assert f"env {variable}" in result.stdout


# --- etcd unreachable: bounded, one line --------------------------------------------------


def test_dtr_coordinator_gives_up_on_an_unreachable_etcd_in_one_line_within_its_timeout() -> None:
    (silent,) = pick_free_ports(1)
    args = ["coordinator", "--etcd", f"127.0.0.1:{silent}", "--listen", "127.0.0.1:0"]
    started = time.monotonic()
    result = run_dtr([*args, "--startup-timeout-s", "2"], timeout_s=30)
    elapsed_s = time.monotonic() - started
    assert_one_line_error(result, f"127.0.0.1:{silent}")
    assert elapsed_s < 15, f"took {elapsed_s:.1f} s with a 2 s start-up timeout"


def test_dtr_coordinator_debug_shows_the_traceback_of_an_unreachable_etcd() -> None:
    (silent,) = pick_free_ports(1)
    args = ["--debug", "coordinator", "--etcd", f"127.0.0.1:{silent}", "--listen", "127.0.0.1:0"]
    result = run_dtr([*args, "--startup-timeout-s", "1"], timeout_s=30)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "StoreUnavailable" in result.stderr


# --- the flags map onto CoordinatorConfig -------------------------------------------------


def test_the_cli_defaults_are_the_configs_defaults() -> None:
    args = build_parser().parse_args(["coordinator"])
    apply_environment(args, {"DTR_ETCD": NOWHERE})
    from_cli = config_from_args(args)
    assert from_cli == CoordinatorConfig(etcd_endpoints=(NOWHERE,))


def test_every_config_field_has_a_flag() -> None:
    fields = {f.name for f in dataclasses.fields(CoordinatorConfig)}
    assert set(FIELD_FLAGS) == fields
    listed = {option.flag for option in COORDINATOR_OPTIONS}
    assert listed | {HIDDEN_UNSAFE_FLAG} == set(FIELD_FLAGS.values())


def test_the_test_only_unsafe_flag_is_not_listed_and_is_off_by_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["coordinator", "--help"])
    listing = capsys.readouterr().out
    assert "--renew-deadline-s" in listing and HIDDEN_UNSAFE_FLAG not in listing
    args = parser.parse_args(["coordinator"])
    apply_environment(args, {"DTR_ETCD": NOWHERE})
    assert config_from_args(args).unsafe_disable_fencing is False
    unsafe = parser.parse_args(["coordinator", HIDDEN_UNSAFE_FLAG])
    apply_environment(unsafe, {"DTR_ETCD": NOWHERE})
    assert config_from_args(unsafe).unsafe_disable_fencing is True


def test_flag_message_rewrites_field_names_only_as_whole_words() -> None:
    message = "heartbeat_interval_s (1.0) must be shorter than heartbeat_timeout_s (0.5)"
    assert flag_message(message) == (
        "--heartbeat-interval-s (1.0) must be shorter than --heartbeat-timeout-s (0.5)"
    )
    assert flag_message("etcd endpoint must be HOST:PORT") == (
        "--etcd: etcd endpoint must be HOST:PORT"
    )
