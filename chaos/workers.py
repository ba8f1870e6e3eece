"""The chaos run's training workers: ``dtr.chaos.workload`` processes under stable ids.

A worker killed by the nemesis comes back the way a real one would after a
crash: the same worker id, the same commit queue file, the same checkpoint
location and history file (appended), only a new process. The pool tells the
nemesis which workers are running (only those can be killed or cut off) and
each one's PID (a partition picks a worker's connections by it), and at the
end waits for every worker to finish or stops the ones that did not.

Processes run in their own session, are signalled only through their
``Popen`` (never by PID or name), and are always reaped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dtr.errors import InvalidArgument
from dtr.keys import validate_name

_POLL_S = 0.1


@dataclass(frozen=True)
class WorkloadConfig:
    """What every worker process is given; ``start`` is the harness's monotonic zero."""

    coordinators: str
    job: str
    checkpoint_uri: str
    start: float
    steps: int
    step_time_s: float = 0.0
    save_every: int = 20
    barrier_timeout_s: float = 20.0
    heartbeat_interval_s: float = 0.3
    #: More environment for the processes (an S3 run's endpoint and dummy credentials).
    environment: tuple[tuple[str, str], ...] = ()


@dataclass
class WorkerOutcome:
    """What became of one worker id: restarts, its last exit code, stopped at the deadline.

    ``killed``: the nemesis killed it for good (a ``rack-failure``'s simulated
    process, never restarted); its -9 is the fault, not a failure.
    """

    restarts: int = 0
    exit_code: int | None = None
    stopped: bool = False
    exit_codes: list[int] = field(default_factory=list)
    killed: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "restarts": self.restarts,
            "exit_code": self.exit_code,
            "stopped_at_deadline": self.stopped,
            "killed_by_nemesis": self.killed,
            "exit_codes": list(self.exit_codes),
        }


class WorkerPool:
    """Worker processes by id: start, kill -9 and restart, wait, stop."""

    def __init__(self, worker_ids: list[str], config: WorkloadConfig, work_dir: Path) -> None:
        if not worker_ids or len(set(worker_ids)) != len(worker_ids):
            raise InvalidArgument(f"worker ids must be distinct and not empty; got {worker_ids}")
        self.worker_ids = [validate_name("worker_id", w) for w in worker_ids]
        self.config = config
        self.history_dir = work_dir / "history"
        self.queue_dir = work_dir / "queues"
        self.log_dir = work_dir / "logs"
        for folder in (self.history_dir, self.queue_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._recorded: set[str] = set()  # ids whose latest process's exit is in outcomes
        self.outcomes = {w: WorkerOutcome() for w in self.worker_ids}

    def queue_path(self, worker_id: str) -> Path:
        return self.queue_dir / f"{worker_id}.sqlite"

    def history_path(self, worker_id: str) -> Path:
        return self.history_dir / f"{worker_id}.jsonl"

    def deadline_path(self, worker_id: str) -> Path:
        """Where ``set_deadline`` leaves the per-attempt deadline the worker reads on SIGUSR1."""
        return self.queue_dir / f"{worker_id}.deadline"

    def argv(self, worker_id: str) -> list[str]:
        return [
            *(sys.executable, "-m", "dtr.chaos.workload", "--worker-id", worker_id),
            *("--queue", str(self.queue_path(worker_id))),
            *("--deadline-file", str(self.deadline_path(worker_id))),
            *workload_args(self.config, self.history_path(worker_id)),
        ]

    # --- lifecycle --------------------------------------------------------------

    def start_all(self) -> None:
        for worker_id in self.worker_ids:
            self.start(worker_id)

    def start(self, worker_id: str) -> None:
        """Start ``worker_id`` (again): same id, queue, checkpoints and history file."""
        if self.is_running(worker_id):
            raise InvalidArgument(f"worker {worker_id} is already running")
        if worker_id in self._processes:
            self.outcomes[worker_id].restarts += 1
            drop_torn_line(self.history_path(worker_id))
        log_path = self.log_dir / f"{worker_id}.log"
        self._processes[worker_id] = spawn(self.argv(worker_id), log_path, self.config.environment)
        self._recorded.discard(worker_id)

    def kill(self, worker_id: str) -> None:
        """SIGKILL and reap: a crash, with no deregistration and no queue flushed."""
        process = self._processes.get(worker_id)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        self.is_running(worker_id)  # records the exit

    def pause(self, worker_id: str) -> None:
        """SIGSTOP: the process stays, frozen; its beats and calls stop mid-flight."""
        self._signal(worker_id, signal.SIGSTOP)

    def resume(self, worker_id: str) -> None:
        """SIGCONT (a worker that exited meanwhile is left alone)."""
        self._signal(worker_id, signal.SIGCONT)

    def set_deadline(self, worker_id: str, seconds: float | None) -> bool:
        """Give the worker's calls a per-attempt deadline of ``seconds``; None: its default.

        The value travels in ``deadline_path`` (a signal carries none):
        SIGUSR1 tells the workload to read it, SIGUSR2 to go back to normal.
        Only a process that said it handles them is signalled (their default
        action kills, and a process just restarted is still importing torch);
        False when this one has not yet.
        """
        if not self._handles_deadlines(worker_id):
            return False
        if seconds is None:
            self._signal(worker_id, signal.SIGUSR2)
            return True
        path = self.deadline_path(worker_id)
        path.with_suffix(".tmp").write_text(f"{seconds!r}\n")
        path.with_suffix(".tmp").replace(path)
        self._signal(worker_id, signal.SIGUSR1)
        return True

    def _handles_deadlines(self, worker_id: str) -> bool:
        """Whether the running process wrote its PID to ``deadline_path``'s ``.ready`` file."""
        pid = self.pid(worker_id)
        try:
            ready = self.deadline_path(worker_id).with_suffix(".ready").read_text().strip()
        except OSError:
            return False
        return pid is not None and ready == str(pid)

    def _signal(self, worker_id: str, signum: signal.Signals) -> None:
        process = self._processes.get(worker_id)
        if process is not None and self.is_running(worker_id):
            process.send_signal(signum)

    def finish_all(self, grace_s: float) -> list[str]:
        """SIGTERM every worker still running (it drains its queue and leaves), SIGKILL
        the ones still there after ``grace_s``; all counted as stopped, their ids returned.
        """
        stopped = self.running_ids()
        for worker_id in stopped:
            self._processes[worker_id].terminate()
        wait_for(self.all_exited, time.monotonic() + grace_s)
        for worker_id in stopped:
            self.kill(worker_id)  # a no-op for those that exited
            self.outcomes[worker_id].stopped = True
        return stopped

    def stop_all(self) -> list[str]:
        """Kill every worker still running (counted as stopped); returns their ids."""
        stopped = self.running_ids()
        for worker_id in stopped:
            self.kill(worker_id)
            self.outcomes[worker_id].stopped = True
        return stopped

    # --- state ------------------------------------------------------------------

    def is_running(self, worker_id: str) -> bool:
        process = self._processes.get(worker_id)
        if process is None:
            return False
        code = process.poll()
        if code is not None and worker_id not in self._recorded:
            self._recorded.add(worker_id)
            outcome = self.outcomes[worker_id]
            outcome.exit_code = code
            outcome.exit_codes.append(code)
        return code is None

    def running_ids(self) -> list[str]:
        return [w for w in self.worker_ids if self.is_running(w)]

    def pid(self, worker_id: str) -> int | None:
        process = self._processes.get(worker_id)
        return process.pid if process is not None and self.is_running(worker_id) else None

    def all_exited(self) -> bool:
        return not self.running_ids()

    def wait_all(self, deadline: float) -> bool:
        """Wait until every worker exited or ``deadline`` (monotonic); True when all did."""
        return wait_for(self.all_exited, deadline)

    def log_tail(self, worker_id: str, lines: int = 5) -> str:
        return tail(self.log_dir / f"{worker_id}.log", lines)


def workload_args(config: WorkloadConfig, history: Path) -> list[str]:
    """The flags a workload process of either kind (real or simulated) takes from ``config``."""
    c = config
    return [
        *("--coordinators", c.coordinators, "--job", c.job),
        *("--start", repr(c.start), "--history", str(history)),
        *("--checkpoint", c.checkpoint_uri),
        *("--steps", str(c.steps), "--save-every", str(c.save_every)),
        *("--heartbeat-interval-s", str(c.heartbeat_interval_s)),
        *("--step-time-s", str(c.step_time_s), "--barrier-timeout-s", str(c.barrier_timeout_s)),
    ]


def spawn(
    argv: list[str], log_path: Path, environment: tuple[tuple[str, str], ...] = ()
) -> subprocess.Popen[bytes]:
    """A workload process in its own session, logging to ``log_path`` (appended).

    ``environment`` adds to ``workload_environment()``; when it brings AWS
    credentials, the developer's profile and session token are left out.
    """
    env = workload_environment()
    if any(name == "AWS_ACCESS_KEY_ID" for name, _ in environment):
        env.pop("AWS_PROFILE", None)
        env.pop("AWS_SESSION_TOKEN", None)
    env.update(environment)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def wait_for(done: Callable[[], bool], deadline: float) -> bool:
    """Poll ``done`` until it holds or ``deadline`` (monotonic) passes; whether it held."""
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log ("" when there is none yet)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def drop_torn_line(path: Path) -> None:
    """Cut a last line the killed process left half written, before the restart appends.

    A torn line is tolerated only at the end of a history; followed by the
    new process's events it would make the whole file unreadable.
    """
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as history:
            history.truncate(data.rfind(b"\n") + 1)


def workload_environment() -> dict[str, str]:
    """Our environment without ``DTR_*`` settings (``DTR_DEBUG`` aside), unbuffered.

    A ``DTR_JOB`` or ``DTR_COORDINATORS`` of the shell that ran ``dtr chaos``
    must not reach a worker the harness configured with flags.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTR_") or k == "DTR_DEBUG"}
    env["PYTHONUNBUFFERED"] = "1"
    return env
