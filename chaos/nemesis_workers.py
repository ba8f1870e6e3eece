"""Faults aimed at workers' identity and time: worker-pause, client-cancel, rack-failure.

- ``worker-pause``: SIGSTOP one real worker, caught (within ``ARRIVAL_WAIT_S``)
  while it holds a barrier arrival, for longer than the heartbeat timeout
  (``Scenario.worker_pause_s``), so it is declared dead while frozen;
  heal = SIGCONT. It must find its way back (rejoin, ``BarrierMissed``).
- ``client-cancel``: every replica's etcd proxies delayed (a leader write
  takes hundreds of ms) while every real worker's calls carry per-attempt
  deadlines shorter than that (``Scenario.client_deadline_s``), so the
  coordinators see handlers cancelled mid-write; heal = proxies healed,
  deadlines back to normal.
- ``rack-failure``: whole simulated-worker processes, drawn until they hold
  ``rack_size`` workers or more, SIGKILLed in one go and never restarted:
  the coordinator must declare them all dead at once (heal has nothing to undo).

Targets are drawn with the nemesis's ``random.Random`` only.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

from .nemesis_types import Injected, NoTarget, Targets
from .proxy import TcpProxy

#: How long ``worker-pause`` waits for its target to be inside a barrier call.
ARRIVAL_WAIT_S = 5.0
#: How much of a history's end is read to find its last barrier event.
_TAIL_BYTES = 64 * 1024
#: How often the history is read meanwhile: an arrival is often held only ~0.1 s.
_ARRIVAL_POLL_S = 0.01


def pause_worker(targets: Targets, rng: random.Random) -> Injected:
    """SIGSTOP a worker holding a barrier arrival; ``holding_arrival`` says if it was caught so."""
    running = targets.workers.running_ids()
    if not running:
        raise NoTarget("no running worker")
    worker_id = rng.choice(running)
    history = targets.workers.history_path(worker_id)
    deadline = time.monotonic() + ARRIVAL_WAIT_S
    holding = holds_arrival(history)
    while not holding and time.monotonic() < deadline:
        time.sleep(_ARRIVAL_POLL_S)
        holding = holds_arrival(history)
    targets.workers.pause(worker_id)
    value = {"target": worker_id, "holding_arrival": holding}
    return Injected(value, lambda: targets.workers.resume(worker_id))


def holds_arrival(history: Path) -> bool:
    """Whether the worker's last ``barrier`` event is an ``invoke`` still without outcome."""
    try:
        with history.open("rb") as file:
            file.seek(max(0, history.stat().st_size - _TAIL_BYTES))
            lines = file.read().splitlines()
    except OSError:
        return False
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue  # the first line cut by the seek, or one being written
        if isinstance(event, dict) and event.get("f") == "barrier":
            return bool(event.get("type") == "invoke")
    return False


def cancel_calls(targets: Targets, rng: random.Random) -> Injected:
    """Slow every replica's etcd and give every running worker's calls a shorter deadline."""
    proxies = [proxy for replica in targets.etcd_proxies for proxy in replica]
    if not proxies:
        raise NoTarget("the replicas dial etcd directly: no proxy to slow")
    settings = targets.settings
    delay_s = round(rng.uniform(*settings.etcd_slow_s), 3)
    deadline_s = round(rng.uniform(*settings.client_deadline_s), 3)
    pool = targets.workers
    workers = [w for w in pool.running_ids() if pool.set_deadline(w, deadline_s)]
    if not workers:
        raise NoTarget("no running worker handles short deadlines yet")
    for proxy in proxies:
        proxy.delay(delay_s)

    def heal() -> None:
        _heal(proxies)
        for worker_id in workers:
            targets.workers.set_deadline(worker_id, None)

    value = {"target": ", ".join(workers), "delay_s": delay_s, "deadline_s": deadline_s}
    return Injected(value, heal)


def _heal(proxies: Sequence[TcpProxy]) -> None:
    for proxy in proxies:
        proxy.heal()


def fail_rack(targets: Targets, rng: random.Random) -> Injected:
    """SIGKILL whole simulated processes holding ``rack_size`` workers or more, at once."""
    sims = targets.sims
    if sims is None:
        raise NoTarget("the run has no simulated workers")
    rack_size = targets.settings.rack_size
    running = sims.running_names()
    if len(running) * sims.workers_per_process < rack_size:
        raise NoTarget(
            f"only {len(running) * sims.workers_per_process} simulated workers run; "
            f"a rack is {rack_size}"
        )
    rng.shuffle(running)
    per_process = sims.workers_per_process
    rack = running[: -(-rack_size // per_process)]  # whole processes, rounded up
    sims.kill(rack)
    value = {"target": ", ".join(sorted(rack)), "workers_killed": len(rack) * per_process}
    return Injected(value, lambda: None)
