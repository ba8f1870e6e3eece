"""The config file layer of every ``dtr`` option (DESIGN §3).

A TOML file named by ``--config`` or ``DTR_CONFIG``. Keys are option names
without the dashes (``etcd``, ``lease-ttl-s``, ``heartbeat-timeout-s``) and
stand either at the top level, where every command that has the option
reads them, or in a table named after one command (``[coordinator]``,
``[up]``…), which wins for that command::

    job = "run-7"
    etcd = "10.0.0.5:2379,10.0.0.6:2379"

    [coordinator]
    lease-ttl-s = 3
    metrics-port = 9400

An option resolves as: flag, else ``DTR_*`` variable, else this file, else
its default. A key in a command's table that the command does not know is an
error naming it (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from dtr.errors import InvalidArgument

CONFIG_ENV = "DTR_CONFIG"


def load_config(path: str | None) -> dict[str, object]:
    """The parsed file, or {} when no file is named."""
    if not path:
        return {}
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except OSError as err:
        raise InvalidArgument(f"--config {path}: cannot read it: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise InvalidArgument(f"--config {path}: not valid TOML: {err}") from None


def config_values(
    config: Mapping[str, object], command: str, known: Sequence[str], path: str
) -> dict[str, str]:
    """Option name → raw text for ``command``: its table over the top-level keys."""
    values = {k: v for k, v in config.items() if k in known and not isinstance(v, dict)}
    table = config.get(command, {})
    if not isinstance(table, dict):
        raise InvalidArgument(f"--config {path}: [{command}] must be a table")
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InvalidArgument(
            f"--config {path}: [{command}] has no option {unknown[0]!r} "
            f"(known: {', '.join(sorted(known))})"
        )
    values.update(table)
    return {key: _as_text(value) for key, value in values.items()}


def _as_text(value: object) -> str:
    """TOML value → the text the option's converter parses (lists join with commas)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)
