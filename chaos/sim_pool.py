"""Processes of simulated workers for scale scenarios: ``dtr.chaos.sim_workload`` under a pool.

``SimWorkerPool(process_count, workers_per_process, config, work_dir)``
starts ``process_count`` processes ``sim-<i>``, each running
``workers_per_process`` simulated workers ``s<i>-0 ... s<i>-<n-1>`` and
recording into ``work_dir/history/sim-<i>.jsonl``, logging to
``work_dir/logs/sim-<i>.log``. It is ``WorkerPool`` (``workers.py``) for
processes that hold many workers each: processes run in their own session,
are signalled only through their ``Popen`` (never by PID or name), and are
always reaped. A simulated process is not restarted: its workers keep their
commit records in memory, so a fresh one would not be the same worker.

``stop_all`` asks first (SIGTERM: every simulated worker is cancelled, the
channels closed) and kills only a process that did not exit in time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from dtr.errors import InvalidArgument

from .workers import WorkerOutcome, WorkloadConfig, spawn, tail, wait_for, workload_args

#: How long a process gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 5.0


class SimWorkerPool:
    """``process_count`` processes of ``workers_per_process`` simulated workers each.

    Processes are named ``sim-<i>`` (``names``); ``outcomes`` holds a
    ``WorkerOutcome`` per process name, as ``WorkerPool.outcomes`` does per
    worker (``restarts`` stays 0), so a run's result reads both alike.
    """

    def __init__(
        self,
        process_count: int,
        workers_per_process: int,
        config: WorkloadConfig,
        work_dir: Path,
    ) -> None:
        for name, value in (
            ("process_count", process_count),
            ("workers_per_process", workers_per_process),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{name} must be an integer >= 1; got {value!r}")
        self.process_count = process_count
        self.workers_per_process = workers_per_process
        self.config = config
        self.names = [f"sim-{i}" for i in range(process_count)]
        self.history_dir = work_dir / "history"
        self.log_dir = work_dir / "logs"
        for folder in (self.history_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self.outcomes = {name: WorkerOutcome() for name in self.names}

    @property
    def worker_ids(self) -> list[str]:
        """Every simulated worker id, process by process."""
        return [w for i in range(self.process_count) for w in self.worker_ids_of(i)]

    def worker_ids_of(self, index: int) -> list[str]:
        return [f"s{index}-{j}" for j in range(self.workers_per_process)]

    def history_path(self, index: int) -> Path:
        return self.history_dir / f"{self.names[index]}.jsonl"

    def history_paths(self) -> list[Path]:
        return [self.history_path(i) for i in range(self.process_count)]

    def log_path(self, index: int) -> Path:
        return self.log_dir / f"{self.names[index]}.log"

    def argv(self, index: int) -> list[str]:
        return [
            *(sys.executable, "-m", "dtr.chaos.sim_workload"),
            *("--prefix", f"s{index}", "--count", str(self.workers_per_process)),
            *workload_args(self.config, self.history_path(index)),
        ]

    # --- lifecycle --------------------------------------------------------------

    def start_all(self) -> None:
        """Start every process once; a pool is started once."""
        if self._processes:
            raise InvalidArgument("the simulated workers were started already")
        for index, name in enumerate(self.names):
            self._processes[name] = spawn(
                self.argv(index), self.log_path(index), self.config.environment
            )

    def kill(self, names: list[str]) -> None:
        """SIGKILL every process of ``names`` in one go, then reap them: a rack lost at once.

        They are not restarted; their outcomes say ``killed``, so their -9 is
        the fault and not a failure.
        """
        running = [self._processes[name] for name in names if self._record(name)]
        for process in running:
            process.kill()
        for name in names:
            self._processes[name].wait(timeout=30)
            self.outcomes[name].killed = True
            self._record(name)

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> list[str]:
        """SIGTERM every process still running, SIGKILL after ``grace_s``; their names."""
        stopped = self.running_names()
        for name in stopped:
            self._processes[name].terminate()
        deadline = time.monotonic() + grace_s
        for name in stopped:
            process = self._processes[name]
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
            self.outcomes[name].stopped = True
            self._record(name)
        return stopped

    # --- state ------------------------------------------------------------------

    def _record(self, name: str) -> bool:
        """Whether the process runs; records its exit once it ended."""
        process = self._processes.get(name)
        if process is None:
            return False
        code = process.poll()
        outcome = self.outcomes[name]
        if code is not None and outcome.exit_code is None:
            outcome.exit_code = code
            outcome.exit_codes.append(code)
        return code is None

    def running_names(self) -> list[str]:
        return [name for name in self.names if self._record(name)]

    def pids(self) -> dict[str, int]:
        """The PIDs of the running processes, by name (to read their CPU time from /proc)."""
        return {name: self._processes[name].pid for name in self.running_names()}

    def all_exited(self) -> bool:
        return not self.running_names()

    def wait_all(self, deadline: float) -> bool:
        """Wait until every process exited or ``deadline`` (monotonic); True when all did."""
        return wait_for(self.all_exited, deadline)

    def log_tail(self, index: int, lines: int = 5) -> str:
        return tail(self.log_path(index), lines)
