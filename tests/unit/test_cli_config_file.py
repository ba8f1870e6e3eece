"""The config-file layer of `dtr` options: flag > environment > file > default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtr.cli import build_parser
from dtr.cli.config_file import config_values, load_config
from dtr.cli.options import apply_environment
from dtr.errors import InvalidArgument

CONFIG = """
job = "from-file"
etcd = ["127.0.0.1:2379", "127.0.0.1:22379"]
not-an-option-here = 1

[coordinator]
lease-ttl-s = 5
renew-deadline-s = 3.5
"""


def resolve(tmp_path: Path, argv: list[str], environ: dict[str, str]) -> object:
    path = tmp_path / "dtr.toml"
    path.write_text(CONFIG)
    args = build_parser().parse_args(argv)
    known = [o.flag.lstrip("-") for o in args.env_options]
    config = config_values(load_config(str(path)), args.command, known, str(path))
    apply_environment(args, environ, config, str(path))
    return args


def test_the_file_fills_what_flags_and_environment_leave_open(tmp_path: Path) -> None:
    args = resolve(tmp_path, ["coordinator", "--lease-ttl-s", "7"], {"DTR_JOB": "from-env"})
    assert args.lease_ttl_s == 7  # type: ignore[attr-defined]  # the flag wins
    assert args.job == "from-env"  # type: ignore[attr-defined]  # the environment wins
    assert args.renew_deadline_s == 3.5  # type: ignore[attr-defined]  # [coordinator] table
    assert args.etcd == "127.0.0.1:2379,127.0.0.1:22379"  # type: ignore[attr-defined]
    assert args.heartbeat_timeout_s == 30.0  # type: ignore[attr-defined]  # the default


def test_top_level_keys_serve_every_command_that_has_the_option(tmp_path: Path) -> None:
    args = resolve(tmp_path, ["status"], {})
    assert args.job == "from-file"  # type: ignore[attr-defined]


def test_an_unknown_key_in_a_command_table_is_an_error_naming_it() -> None:
    with pytest.raises(InvalidArgument, match="lease-ttl"):
        config_values({"coordinator": {"lease-ttl": 3}}, "coordinator", ["lease-ttl-s"], "f")


def test_a_bad_value_in_the_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[coordinator]\nlease-ttl-s = "soon"\n')
    args = build_parser().parse_args(["coordinator", "--etcd", "127.0.0.1:2379"])
    known = [o.flag.lstrip("-") for o in args.env_options]
    config = config_values(load_config(str(path)), "coordinator", known, str(path))
    with pytest.raises(InvalidArgument, match=r"lease-ttl-s in --config .*bad\.toml"):
        apply_environment(args, {}, config, str(path))


def test_dtr_reports_an_unreadable_or_invalid_file_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("job = \n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTR_")}
    for path, needle in ((tmp_path / "missing.toml", "cannot read"), (broken, "not valid TOML")):
        result = subprocess.run(
            [sys.executable, "-m", "dtr", "--config", str(path), "status"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and needle in result.stderr
        assert "Traceback" not in result.stderr
