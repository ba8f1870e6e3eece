"""docs/configuration.md is generated from the CLI's own options and must not go stale."""

from __future__ import annotations

from pathlib import Path

from dtr.cli import build_parser
from dtr.cli.reference import command_table, commands, configuration_reference

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_reference_is_what_the_code_generates() -> None:
    assert REFERENCE.read_text() == configuration_reference(), (
        "docs/configuration.md is stale: run `make docs`"
    )


def test_every_command_with_options_has_a_table_naming_each_flag_and_variable() -> None:
    text = configuration_reference()
    for name, parser in commands(build_parser()):
        rows = command_table(parser)
        if rows:
            assert f"## `{name}`" in text
    assert "| `--lease-ttl-s` | `DTR_LEASE_TTL_S` | `3` |" in text
    assert "| `--no-faults` |  | `off` |" in text
    assert "--unsafe-disable-fencing" not in text  # test-only flags stay unlisted
