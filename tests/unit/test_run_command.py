"""``dtr run``: which arguments are dtr's, what torchrun is given, and what is refused.

Pure parts only (no process is started): ``separate`` splits dtr's options
from torchrun's, ``torchrun_command`` builds torchrun's command line and
environment. tests/integration/test_dtr_run.py runs the real thing.
"""

from __future__ import annotations

import argparse
import sys

import pytest

from dtr.cli import build_parser, main
from dtr.cli.run_command import separate, torchrun_command
from dtr.errors import InvalidArgument

COORDINATORS = "127.0.0.1:50051,127.0.0.1:50052"


def parsed(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(separate(["run", *argv]))
    args.coordinators = args.coordinators or COORDINATORS
    args.job = args.job or "default"
    return args


def test_dtrs_options_end_where_torchruns_begin_and_script_flags_are_never_taken() -> None:
    argv = ["run", "--job", "j", "--nnodes", "2", "train.py", "--job", "mine", "--debug"]
    assert separate(argv) == ["run", "--job", "j", "--", *argv[3:]]
    assert separate(["--debug", "--config", "c.toml", "run", "--coordinators=a:1", "t.py"]) == [
        "--debug",
        "--config",
        "c.toml",
        "run",
        "--coordinators=a:1",
        "--",
        "t.py",
    ]
    assert separate(["run", "--", "t.py"]) == ["run", "--", "t.py"]
    assert separate(["status", "--job", "j"]) == ["status", "--job", "j"]
    args = parsed("--job", "j", "--nnodes", "2", "train.py", "--job", "mine")
    assert args.job == "j"
    assert args.torchrun_args == ["--", "--nnodes", "2", "train.py", "--job", "mine"]


def test_torchrun_gets_dtrs_backend_endpoint_run_id_and_settings_before_the_users_args() -> None:
    args = parsed("--job", "llama", "--tls-ca", "/ca.pem", "--nnodes", "2", "t.py", "--lr", "3")
    command, env = torchrun_command(args, {"PATH": "/bin"})
    assert command == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--rdzv-backend=dtr",
        f"--rdzv-endpoint={COORDINATORS}",
        "--rdzv-id=llama",
        "--nnodes",
        "2",
        "t.py",
        "--lr",
        "3",
    ]
    assert env == {
        "PATH": "/bin",
        "DTR_JOB": "llama",
        "DTR_TLS_CA": "/ca.pem",
        "DTR_COORDINATORS": COORDINATORS,  # the ranks' Worker() finds them however given
    }


def test_a_run_id_given_is_kept_and_the_same_backend_or_endpoint_again_is_accepted() -> None:
    args = parsed(
        "--rdzv-id", "r7", "--rdzv-backend", "dtr", f"--rdzv-endpoint={COORDINATORS}", "t.py"
    )
    command, _ = torchrun_command(args, {})
    assert not any(arg.startswith("--rdzv-id=") for arg in command)
    assert command[-6:] == [
        "--rdzv-id",
        "r7",
        "--rdzv-backend",
        "dtr",
        f"--rdzv-endpoint={COORDINATORS}",
        "t.py",
    ]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--rdzv-backend=c10d", "t.py"], "--rdzv-backend=c10d"),
        (["--rdzv-endpoint", "10.0.0.1:29400", "t.py"], "--rdzv-endpoint=10.0.0.1:29400"),
        (["--standalone", "t.py"], "--standalone"),
        (["--nnodes", "2"], "no training script"),
        (["--no-such-torchrun-flag", "t.py"], "no training script, or an option"),
    ],
)
def test_what_cannot_work_is_refused_naming_it(argv: list[str], named: str) -> None:
    with pytest.raises(InvalidArgument, match=named.replace(".", r"\.")):
        torchrun_command(parsed(*argv), {})


def test_bad_coordinators_and_a_missing_script_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DTR_COORDINATORS", raising=False)
    assert main(["run", "--nnodes", "1", "t.py"]) == 1
    assert "DTR_COORDINATORS" in capsys.readouterr().err
    assert main(["run", "--coordinators", "nonsense", "t.py"]) == 1
    assert "dtr run: error:" in capsys.readouterr().err
    assert main(["run", "--coordinators", COORDINATORS]) == 1
    assert "training script" in capsys.readouterr().err
