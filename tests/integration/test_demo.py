"""``dtr demo`` end to end, as a newcomer runs it, and its refusals of bad input.

The short demo (2 workers, 200 steps) must finish training through the
leader crash and the worker crash, with the restarted worker resuming from
a complete checkpoint, every invariant holding, the loss picture drawn and
exit status 0. Bad input must cost one line on stderr, exit status 1 and
nothing started: no process, no temporary directory.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DTR = [sys.executable, "-m", "dtr", "demo"]


def demo(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DTR, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def test_a_short_demo_trains_through_both_crashes_and_passes(tmp_path: Path) -> None:
    done = demo("--steps", "200", "--workers", "2", "--work-dir", "run", cwd=tmp_path)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-2000:]

    assert "== dtr demo: PASSED" in out
    assert re.search(r"^w0 +200/200 ", out, re.M) and re.search(r"^w1 +200/200 ", out, re.M)
    failover = re.search(
        r"failover: leader-kill replica-\d at t=[\d.]+s, writes accepted again "
        r"after ([\d.]+) s",
        out,
    )
    assert failover and 0 < float(failover.group(1)) < 30, out[-2000:]
    resumed = re.findall(r"^w\d +200/200 +1  step (\d+)", out, re.M)
    assert resumed and int(resumed[0]) > 0, "the killed worker did not resume from a checkpoint"
    assert "every one of DESIGN §5 held" in out
    assert re.search(r"checkpoints: \d+ complete steps, latest 200", out)

    picture = tmp_path / "dtr-demo-loss.svg"
    assert len(ET.parse(picture).getroot().findall("{http://www.w3.org/2000/svg}polyline")) == 2
    assert (tmp_path / "run" / "report.html").exists()
    assert f"work dir kept: {tmp_path / 'run'}" in out


def _demo_temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("dtr-demo-*")}


def _refused(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_bad_counts_no_etcd_and_a_port_in_use_are_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    before = _demo_temp_dirs()
    _refused(demo("--steps", "10", cwd=tmp_path), "--steps must be a whole number >= 40")
    _refused(
        demo(cwd=tmp_path, env={"DTR_ETCD_BIN": str(tmp_path / "no-etcd")}),
        "no-etcd",
    )
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        _refused(demo("--base-port", str(taken), cwd=tmp_path), f"port {taken} is unavailable")
    assert _demo_temp_dirs() - before == set()
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_working_directory_is_refused_with_what_to_do(tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    mounted = os.geteuid() == 0
    if mounted:  # root writes through file modes: a read-only mount is the real thing
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "dtr-test", str(read_only)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr!r}")
    else:
        read_only.chmod(0o555)
    try:
        _refused(demo(cwd=read_only), "cannot write the loss picture into")
    finally:
        if mounted:
            subprocess.run(["umount", str(read_only)], check=False)
        else:
            read_only.chmod(0o755)
