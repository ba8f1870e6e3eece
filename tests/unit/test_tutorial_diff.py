"""docs/tutorial.md shows the real diff between the two tutorial scripts, kept in step."""

from __future__ import annotations

import difflib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "examples" / "tutorial"


def test_the_tutorial_shows_the_current_diff_of_its_scripts() -> None:
    plain = (SCRIPTS / "plain.py").read_text().splitlines()
    with_dtr = (SCRIPTS / "with_dtr.py").read_text().splitlines()
    diff = difflib.unified_diff(plain, with_dtr, "plain.py", "with_dtr.py", lineterm="", n=3)
    expected = "\n".join(diff)
    shown = (ROOT / "docs" / "tutorial.md").read_text()
    assert f"```diff\n{expected}\n```" in shown, (
        "docs/tutorial.md is stale: paste this test's `expected` (difflib's unified diff)"
    )
