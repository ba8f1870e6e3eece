"""Option plumbing shared by every ``dtr`` command: flags that also read ``DTR_*``.

An option resolves as: command-line flag, else the ``DTR_*`` environment
variable named in its help, else its default. argparse sees a default of
None, so after parsing we can tell "not given" from "given the default" and
fill in the environment and then the config file (``apply_environment``,
``config_file.py``).

Nothing here imports more than the standard library: ``dtr --help`` must stay
instant, and the converters below run before any command does real work.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from dtr.errors import InvalidArgument
from dtr.logs import LOG_FORMATS

ENV_NOTE = (
    "Every option can also be set in the environment (its help names the "
    "variable, DTR_...) or in a TOML config file given by --config or DTR_CONFIG "
    "(keys are option names without dashes, at the top level or in a table named "
    "after the command). A flag wins over the environment, which wins over the file."
)
TRUTHY = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class EnvOption:
    """One option: its flag, its ``DTR_*`` variable, default and converter.

    ``required`` options have no default: missing both the flag and the
    variable is an error that names both, not a traceback deep in a command.
    """

    flag: str
    env: str
    default: object
    convert: Callable[[str], object]
    metavar: str
    help_text: str
    required: bool = False

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (DESIGN §8), not usage plus message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# argparse's type for the object ``add_subparsers`` returns.
Commands = argparse._SubParsersAction


def add_options(parser: argparse.ArgumentParser, options: Sequence[EnvOption]) -> None:
    """Declare ``options``; each help line shows its variable and its default."""
    for option in options:
        if option.required:
            shown = "; required"
        elif option.default is None:
            shown = ""  # unset means off, or derived: the help text says which
        else:
            shown = f"; default: {option.default}"
        parser.add_argument(
            option.flag,
            dest=option.dest,
            type=option.convert,
            default=None,
            metavar=option.metavar,
            help=f"{option.help_text} [env {option.env}{shown}]",
        )
    parser.set_defaults(env_options=list(options))


def apply_environment(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    config: Mapping[str, str] | None = None,
    config_path: str = "",
) -> None:
    """Fill options not given as flags from the environment, the config file, the defaults."""
    config = config or {}
    for option in getattr(args, "env_options", []):
        if getattr(args, option.dest) is not None:
            continue
        name = option.flag.lstrip("-")
        raw, source = environ.get(option.env, ""), option.env
        if not raw and name in config:
            raw, source = config[name], f"{name} in --config {config_path}"
        if not raw:
            if option.required:
                raise InvalidArgument(f"{option.flag} is required (or set {option.env})")
            setattr(args, option.dest, option.default)
            continue
        try:
            setattr(args, option.dest, option.convert(raw))
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise InvalidArgument(f"{source}={raw!r}: {err}") from err


def add_debug(parser: argparse.ArgumentParser, default: object) -> None:
    """``--debug`` on the top parser (default False) and on each command (SUPPRESS)."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show tracebacks for errors [env DTR_DEBUG=1]",
    )


# --- converters: a bad value is one usage line naming the flag ---------------------


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {text!r}")
    return value


def log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_FORMATS:
        raise argparse.ArgumentTypeError(f"not a log format ({', '.join(LOG_FORMATS)}): {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


def host(text: str) -> str:
    if not text or any(c.isspace() for c in text) or "/" in text:
        raise argparse.ArgumentTypeError(f"not a host name or IP address: {text!r}")
    return text


def host_port_list(text: str) -> list[str]:
    """``"a:1, b:2"`` → ``["a:1", "b:2"]``; each item must be HOST:PORT."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT[,HOST:PORT...]: {text!r}")
    for item in items:
        name, sep, number = item.rpartition(":")
        if not sep or not name or not number.isdigit() or not 1 <= int(number) <= 65535:
            raise argparse.ArgumentTypeError(f"not HOST:PORT: {item!r}")
    return items
