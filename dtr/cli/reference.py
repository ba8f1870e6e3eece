"""The configuration reference (``docs/configuration.md``), generated from the CLI itself.

Every ``dtr`` command declares its options once (``EnvOption``: flag,
``DTR_*`` variable, default, help); this walks the real parser and writes one
table per command, so the reference cannot drift from the code.
``tests/unit/test_configuration_reference.py`` fails while the committed file
differs from what this prints; ``make docs`` rewrites it.

The worker library reads a few variables of its own (it has no CLI); they
are listed from ``WORKER_VARIABLES`` below, next to where each is read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from . import build_parser
from .options import EnvOption

#: The variables ``dtr.worker`` reads, and where (keep in step with those modules).
WORKER_VARIABLES = (
    ("DTR_COORDINATORS", "`Worker(coordinators=)`", "the replicas, `HOST:PORT,...`"),
    ("DTR_JOB", "`Worker(job=)`", 'the job (default `"default"`)'),
    (
        "DTR_WORKER_ID",
        "`Worker(worker_id=)`",
        "the worker id; else `<host>-rank<RANK>` (stable across restarts), else `<host>-<pid>`",
    ),
    (
        "DTR_STATE_DIR",
        "`CheckpointManager(queue_path=)`",
        "where commit queues live (default `~/.local/state/dtr`)",
    ),
    ("DTR_TLS_CA", "`Worker(tls=TlsFiles(ca=))`", "PEM CA that signed the coordinators' cert"),
    (
        "DTR_TLS_CERT",
        "`Worker(tls=TlsFiles(cert=))`",
        "PEM client certificate, for coordinators that require one (mutual TLS)",
    ),
    ("DTR_TLS_KEY", "`Worker(tls=TlsFiles(key=))`", "its private key (mode 0600)"),
    (
        "DTR_TOKEN_FILE",
        "`Worker(token=)`",
        "a file (mode 0600) holding the worker's bearer token, one line",
    ),
    (
        "DTR_WORKER_METRICS_PORT",
        "`Worker(metrics_port=)`",
        "serve the worker's Prometheus metrics on this port (off unless given)",
    ),
    (
        "DTR_METRICS_HOST",
        "`Worker(metrics_port=)`",
        "the address the worker's metrics bind (default `127.0.0.1`)",
    ),
    (
        "DTR_LEADER_WATCH",
        "`CoordinatorClient(leader_watch=)`",
        "`0`: no pushed leader news (`WatchLeader`); retries sleep out their backoff",
    ),
    (
        "DTR_JOIN_ROUND",
        "`Worker()` under torchrun",
        "`0`: register on its own, not as rank R of the rendezvous round",
    ),
    (
        "DTR_ROUND_JOIN_TIMEOUT_S",
        "`Worker()` under torchrun",
        "how long a rank waits for its round's other ranks (`RoundIncomplete` after)",
    ),
    ("DTR_S3_ENDPOINT", "`open_storage(endpoint_url=)`", "the S3 endpoint for `s3://` URIs"),
    ("DTR_ETCD_BIN", "every command starting etcd", "the etcd binary to run"),
    ("DTR_DEBUG", "every command", "`1`: tracebacks for errors"),
)

HEADER = """# Configuration reference

Generated from the code by `python -m dtr.cli.reference` (`make docs`); a
unit test fails when this file is stale. Every option can be given as a
flag, as its `DTR_*` environment variable, or in a TOML file named by
`--config` / `DTR_CONFIG`: keys are option names without the dashes, at the
top level (for every command that has the option) or in a table named after
one command (`[coordinator]`, `[up]`, ...). An option resolves as: flag,
else variable, else the file, else its default.
"""


def commands(
    parser: argparse.ArgumentParser, prefix: str = "dtr"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)command with its parser, depth first, in declaration order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from commands(sub, f"{prefix} {name}")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def command_table(parser: argparse.ArgumentParser) -> list[str]:
    """One row per option the command takes: flag, variable, default, meaning."""
    declared: dict[str, EnvOption] = {o.flag: o for o in parser.get_default("env_options") or []}
    rows = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        flag = action.option_strings[-1]
        if flag in ("--help", "--debug"):
            continue
        option = declared.get(flag)
        default: object
        if option is not None:
            default = "required" if option.required else option.default
            env, meaning = f"`{option.env}`", option.help_text
        else:
            default = "off" if action.nargs == 0 else action.default
            env, meaning = "", action.help or ""
        shown = "" if default is None else f"`{default}`"
        rows.append(f"| `{flag}` | {env} | {shown} | {_cell(meaning)} |")
    if not rows:
        return []
    return ["| flag | variable | default | meaning |", "| --- | --- | --- | --- |", *rows]


def configuration_reference() -> str:
    """The whole reference, as Markdown."""
    lines = [HEADER]
    for name, parser in commands(build_parser()):
        table = command_table(parser)
        if not table:
            continue
        lines += [f"## `{name}`", "", _cell(parser.description or ""), "", *table, ""]
    lines += [
        "## The worker library (`dtr.worker`)",
        "",
        "A training script configures `Worker` and `CheckpointManager` in code; "
        "these variables fill in what the code leaves out.",
        "",
        "| variable | fills in | meaning |",
        "| --- | --- | --- |",
        *(f"| `{var}` | {where} | {meaning} |" for var, where, meaning in WORKER_VARIABLES),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(configuration_reference())
