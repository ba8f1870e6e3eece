"""``dtr coordinator``: one coordinator replica in the foreground (DESIGN §3, §4).

The command only turns flags into a ``CoordinatorConfig`` and hands it to
``dtr.coordinator.main.serve``, which owns signals, election and shutdown.
The config validates every field; its messages name fields
(``lease_ttl_s``), which we rewrite to the flags a user typed
(``--lease-ttl-s``), so a bad value is one line that says what to change.
The coordinator is imported inside the command: ``dtr --help`` stays light.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

from dtr.errors import InvalidArgument

from .options import (
    ENV_NOTE,
    Commands,
    EnvOption,
    Parser,
    add_debug,
    add_options,
    log_format,
    port,
)

if TYPE_CHECKING:
    from dtr.coordinator.config import CoordinatorConfig

# Defaults mirror CoordinatorConfig's (tests/integration/test_cli_coordinator.py
# checks they agree); they are spelled out here so --help can show them
# without importing the coordinator.
COORDINATOR_OPTIONS = (
    EnvOption(
        "--etcd",
        "DTR_ETCD",
        None,
        str,
        "URL[,URL...]",
        "etcd endpoints, comma-separated, as HOST:PORT, http://HOST:PORT or https://HOST:PORT "
        "(TLS)",
        required=True,
    ),
    EnvOption(
        "--listen",
        "DTR_LISTEN",
        "127.0.0.1:50051",
        str,
        "HOST:PORT",
        "address the gRPC server binds (port 0 picks a free port)",
    ),
    EnvOption(
        "--advertise",
        "DTR_ADVERTISE",
        None,
        str,
        "HOST:PORT",
        "address workers and replicas dial (default: the listen host and the bound port)",
    ),
    EnvOption("--job", "DTR_JOB", "default", str, "NAME", "the training job to coordinate"),
    EnvOption(
        "--replica-id",
        "DTR_REPLICA_ID",
        None,
        str,
        "ID",
        "this replica's id, stable across restarts (default: <short hostname>-<port>)",
    ),
    EnvOption(
        "--lease-ttl-s",
        "DTR_LEASE_TTL_S",
        3,
        int,
        "S",
        "election lease TTL in whole seconds (>= 2): a dead leader is replaced about "
        "this long after its last renewal",
    ),
    EnvOption(
        "--renew-deadline-s",
        "DTR_RENEW_DEADLINE_S",
        2.0,
        float,
        "S",
        "a leader that has not renewed its lease for this long stops writing at once; "
        "must be shorter than --lease-ttl-s",
    ),
    EnvOption(
        "--heartbeat-timeout-s",
        "DTR_HEARTBEAT_TIMEOUT_S",
        30.0,
        float,
        "S",
        "a worker silent this long is declared dead",
    ),
    EnvOption(
        "--heartbeat-interval-s",
        "DTR_HEARTBEAT_INTERVAL_S",
        1.0,
        float,
        "S",
        "beat interval told to workers; shorter than --heartbeat-timeout-s",
    ),
    EnvOption(
        "--etcd-read-timeout-s",
        "DTR_ETCD_READ_TIMEOUT_S",
        None,
        float,
        "S",
        "deadline of one etcd read (default: --etcd-timeout-s if given, else 1.5); "
        "a failed one moves to the next endpoint",
    ),
    EnvOption(
        "--etcd-write-timeout-s",
        "DTR_ETCD_WRITE_TIMEOUT_S",
        None,
        float,
        "S",
        "deadline of one etcd write (default: --etcd-timeout-s if given, else 1.5); "
        "the leader re-reads and re-plans a write that timed out",
    ),
    EnvOption(
        "--etcd-keepalive-timeout-s",
        "DTR_ETCD_KEEPALIVE_TIMEOUT_S",
        None,
        float,
        "S",
        "deadline of one lease keep-alive, at most --renew-deadline-s (default: the "
        "renew deadline minus the keep-alive interval, min(TTL, deadline) / 3)",
    ),
    EnvOption(
        "--etcd-timeout-s",
        "DTR_ETCD_TIMEOUT_S",
        None,
        float,
        "S",
        "deprecated: the default of --etcd-read-timeout-s and --etcd-write-timeout-s",
    ),
    EnvOption(
        "--startup-timeout-s",
        "DTR_STARTUP_TIMEOUT_S",
        30.0,
        float,
        "S",
        "exit with an error when etcd cannot be reached within this long at start-up",
    ),
    EnvOption(
        "--shutdown-grace-s",
        "DTR_SHUTDOWN_GRACE_S",
        2.0,
        float,
        "S",
        "on SIGTERM, how long in-flight calls may finish",
    ),
    EnvOption(
        "--keep-checkpoints",
        "DTR_KEEP_CHECKPOINTS",
        3,
        int,
        "K",
        "keep the records of the newest K complete checkpoint steps (older ones are deleted)",
    ),
    EnvOption(
        "--keep-barriers",
        "DTR_KEEP_BARRIERS",
        256,
        int,
        "B",
        "keep the newest B released barriers for late retries (older and failed ones are deleted)",
    ),
    EnvOption(
        "--commit-batch-max",
        "DTR_COMMIT_BATCH_MAX",
        40,
        int,
        "N",
        "write at most N checkpoint commits per etcd transaction (1: one each, as before "
        "group commit; for comparisons)",
    ),
    EnvOption(
        "--register-batch-max",
        "DTR_REGISTER_BATCH_MAX",
        100,
        int,
        "N",
        "write at most N worker registrations per etcd transaction (1: one each, as before "
        "batching; for comparisons)",
    ),
    EnvOption(
        "--rendezvous-idle-ttl-s",
        "DTR_RENDEZVOUS_IDLE_TTL_S",
        60,
        int,
        "S",
        "delete a torchrun rendezvous's keys S s after its last call (a reused id starts fresh)",
    ),
    EnvOption(
        "--metrics-port",
        "DTR_METRICS_PORT",
        None,
        port,
        "PORT",
        "serve Prometheus metrics on this port (off unless given)",
    ),
    EnvOption(
        "--log-format",
        "DTR_LOG_FORMAT",
        "text",
        log_format,
        "text|json",
        "log lines as text, or as one JSON object per line (time, level, logger, message, term)",
    ),
    EnvOption(
        "--tls-cert",
        "DTR_TLS_CERT",
        None,
        str,
        "PATH",
        "serve TLS with this PEM certificate (chain); needs --tls-key (off unless given; "
        "docs/security.md)",
    ),
    EnvOption(
        "--tls-key",
        "DTR_TLS_KEY",
        None,
        str,
        "PATH",
        "the PEM private key of --tls-cert; must be private (mode 0600)",
    ),
    EnvOption(
        "--tls-client-ca",
        "DTR_TLS_CLIENT_CA",
        None,
        str,
        "PATH",
        "require client certificates signed by this PEM CA (mutual TLS, also for health probes)",
    ),
    EnvOption(
        "--token-file",
        # Not DTR_TOKEN_FILE: that is a worker's own single token, another format.
        "DTR_COORDINATOR_TOKEN_FILE",
        None,
        str,
        "PATH",
        "require bearer tokens: lines 'ROLE TOKEN', ROLE worker or admin (ClusterStatus); "
        "mode 0600; health stays open",
    ),
    EnvOption(
        "--etcd-ca",
        "DTR_ETCD_CA",
        None,
        str,
        "PATH",
        "reach etcd over TLS, trusting this PEM CA (https:// endpoints alone use the "
        "system's CAs; docs/security.md)",
    ),
    EnvOption(
        "--etcd-cert",
        "DTR_ETCD_CERT",
        None,
        str,
        "PATH",
        "PEM client certificate for etcd's --client-cert-auth (with --etcd-key; turns TLS on)",
    ),
    EnvOption(
        "--etcd-key",
        "DTR_ETCD_KEY",
        None,
        str,
        "PATH",
        "the PEM private key of --etcd-cert; must be private (mode 0600)",
    ),
    EnvOption(
        "--etcd-user",
        "DTR_ETCD_USER",
        None,
        str,
        "NAME",
        "authenticate to etcd as this user (with --etcd-password-file)",
    ),
    EnvOption(
        "--etcd-password-file",
        "DTR_ETCD_PASSWORD_FILE",
        None,
        str,
        "PATH",
        "file holding the etcd user's password alone on one line; mode 0600",
    ),
)

#: Test-only, unlisted: a deliberately broken replica the chaos checkers must catch.
HIDDEN_UNSAFE_FLAG = "--unsafe-disable-fencing"

# CoordinatorConfig field -> the flag that sets it.
FIELD_FLAGS = {
    "etcd_endpoints": "--etcd",
    "listen": "--listen",
    "advertise": "--advertise",
    "job": "--job",
    "replica_id": "--replica-id",
    "lease_ttl_s": "--lease-ttl-s",
    "renew_deadline_s": "--renew-deadline-s",
    "heartbeat_timeout_s": "--heartbeat-timeout-s",
    "heartbeat_interval_s": "--heartbeat-interval-s",
    "etcd_timeout_s": "--etcd-timeout-s",
    "etcd_read_timeout_s": "--etcd-read-timeout-s",
    "etcd_write_timeout_s": "--etcd-write-timeout-s",
    "etcd_keepalive_timeout_s": "--etcd-keepalive-timeout-s",
    "startup_timeout_s": "--startup-timeout-s",
    "shutdown_grace_s": "--shutdown-grace-s",
    "keep_checkpoints": "--keep-checkpoints",
    "keep_barriers": "--keep-barriers",
    "commit_batch_max": "--commit-batch-max",
    "register_batch_max": "--register-batch-max",
    "rendezvous_idle_ttl_s": "--rendezvous-idle-ttl-s",
    "metrics_port": "--metrics-port",
    "log_format": "--log-format",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "tls_client_ca": "--tls-client-ca",
    "token_file": "--token-file",
    "etcd_ca": "--etcd-ca",
    "etcd_cert": "--etcd-cert",
    "etcd_key": "--etcd-key",
    "etcd_user": "--etcd-user",
    "etcd_password_file": "--etcd-password-file",
    "unsafe_disable_fencing": HIDDEN_UNSAFE_FLAG,
}
# Not inside a path or a longer name ("/etc/dtr/token_file" stays as it is).
_FIELD_WORD = re.compile(
    r"(?<![\w/.-])(" + "|".join(sorted(FIELD_FLAGS, key=len, reverse=True)) + r")\b"
)


def add_coordinator_command(commands: Commands[Parser]) -> None:
    parser = commands.add_parser(
        "coordinator",
        help="run one coordinator replica",
        description="Run one coordinator replica of a job in the foreground: it campaigns "
        "for leadership in etcd, serves dtr.v1.Coordinator and gRPC health, and stops "
        "on Ctrl-C or SIGTERM (a leader hands over at once by revoking its lease).",
        epilog=ENV_NOTE,
    )
    add_debug(parser, default=argparse.SUPPRESS)
    add_options(parser, COORDINATOR_OPTIONS)
    # Test-only and unlisted: the chaos harness's proof that it can fail (tests/chaos/).
    parser.add_argument(HIDDEN_UNSAFE_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(run=run_coordinator)


def run_coordinator(args: argparse.Namespace) -> int:
    """Validate the whole config first, then serve until a signal; serve's code is ours."""
    from dtr.coordinator.main import serve

    return int(serve(config_from_args(args)))


def config_from_args(args: argparse.Namespace) -> CoordinatorConfig:
    """The replica's config; a value it refuses is re-raised naming the flag."""
    from dtr.coordinator.config import CoordinatorConfig

    try:
        return CoordinatorConfig(
            etcd_endpoints=tuple(args.etcd.split(",")),
            listen=args.listen,
            advertise=args.advertise,
            job=args.job,
            replica_id=args.replica_id,
            lease_ttl_s=args.lease_ttl_s,
            renew_deadline_s=args.renew_deadline_s,
            heartbeat_timeout_s=args.heartbeat_timeout_s,
            heartbeat_interval_s=args.heartbeat_interval_s,
            etcd_timeout_s=args.etcd_timeout_s,
            etcd_read_timeout_s=args.etcd_read_timeout_s,
            etcd_write_timeout_s=args.etcd_write_timeout_s,
            etcd_keepalive_timeout_s=args.etcd_keepalive_timeout_s,
            startup_timeout_s=args.startup_timeout_s,
            shutdown_grace_s=args.shutdown_grace_s,
            keep_checkpoints=args.keep_checkpoints,
            keep_barriers=args.keep_barriers,
            commit_batch_max=args.commit_batch_max,
            register_batch_max=args.register_batch_max,
            rendezvous_idle_ttl_s=args.rendezvous_idle_ttl_s,
            metrics_port=args.metrics_port,
            log_format=args.log_format,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            token_file=args.token_file,
            etcd_ca=args.etcd_ca,
            etcd_cert=args.etcd_cert,
            etcd_key=args.etcd_key,
            etcd_user=args.etcd_user,
            etcd_password_file=args.etcd_password_file,
            unsafe_disable_fencing=args.unsafe_disable_fencing,
        )
    except InvalidArgument as err:
        raise InvalidArgument(flag_message(str(err))) from err


def flag_message(message: str) -> str:
    """``"lease_ttl_s must be ..."`` → ``"--lease-ttl-s must be ..."``.

    Endpoint errors come from the etcd client's parser, which knows no field
    name; they get ``--etcd`` in front so every message names its flag.
    """
    text = _FIELD_WORD.sub(lambda match: FIELD_FLAGS[match.group(1)], message)
    if "--" not in text and "etcd endpoint" in text:
        text = f"--etcd: {text}"
    return text
