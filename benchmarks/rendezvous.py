"""Benchmark torchrun's rendezvous: the dtr backend against torch's c10d, in one run.

Run as ``.venv/bin/python benchmarks/rendezvous.py`` (``--repeats N``,
``--out DIR``). Writes ``benchmarks/results/rendezvous.json`` (every number)
and ``rendezvous.md`` (the targets, verdicts and runs). The target (issue 9):
a rendezvous of 2 agents completes within 2x the time c10d takes on the same
machine in the same run, and so does the re-rendezvous after a worker failure.

The agents are torch elastic's real handlers, built the way torchrun builds
them: ``registry.get_rendezvous_handler(RendezvousParameters(...))`` with
``min_nodes=max_nodes=2`` and ``local_addr=127.0.0.1``. For ``c10d`` the
endpoint is a free loopback port and the first handler hosts the TCPStore
(``is_host``); for ``dtr`` (registered through the ``torchrun.handlers``
entry point) the endpoint is a 3-replica ``LocalCluster``'s coordinator
addresses, with its own etcd, all on 127.0.0.1, started once for the run.
Both agents live in this process, each on a thread of its own, as two
torchrun agents would each call their handler. Measures:

- first rendezvous: both agents call ``next_rendezvous()`` at the same
  moment; the time until both have returned (ranks {0, 1}, world size 2).
- re-rendezvous after a worker failure: after the first round, agent B
  runs the agent's monitor loop: every 0.1 s (``WorkerSpec.monitor_interval``'s
  default) it asks ``num_nodes_waiting()`` and, once that is above 0, calls
  ``next_rendezvous()``. Between 1 and 2 s later (torch's handler answers
  ``num_nodes_waiting()`` from state it caches for 1 s, so the failure's
  phase in that cycle matters; the phases spread evenly over the
  repetitions, the same for both backends) agent A calls
  ``next_rendezvous()`` again (what ``_restart_workers`` does when a worker
  of A's fails). The time from A's call until both returned.

Every repetition uses a fresh run id (and, for c10d, a fresh store port);
an untimed warm-up of each backend comes first; repetitions alternate the
backends' order (c10d first, then dtr first, ...) so drift on a shared
machine hits both. Each handler is shut down (``shutdown()``) at the end of
its repetition and its stores dropped; for c10d the run checks that nothing
listens on the store's port any more. Every wait has a deadline, no
repetition starts after the time budget, and everything started here is
stopped by its own handle. About a minute on two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import os
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import torch
from bench_paths import RESULTS, run_facts
from torch.distributed.elastic.rendezvous import (
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
)
from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler

from dtr.chaos.cluster import LocalCluster
from dtr.etcd import pick_free_ports

NAME = "rendezvous"
JOB = "bench-rdzv"
LOOPBACK = "127.0.0.1"
BACKENDS = ("c10d", "dtr")
BASELINE = "c10d"
RATIO_MAX = 2.0
#: torchrun's default ``--monitor-interval`` (``WorkerSpec.monitor_interval``).
MONITOR_INTERVAL_S = 0.1
#: How long torch's handler answers from its cached state before fetching it again
#: (``_BackendRendezvousStateHolder``'s ``cache_duration``), so how often a monitor
#: loop polling every 0.1 s really asks the backend.
STATE_CACHE_S = 1.0
Result = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Counts and deadlines of one run."""

    repeats: int = 5
    backends: tuple[str, ...] = BACKENDS
    #: No repetition starts after this many seconds (the warm-ups count).
    budget_s: float = 240.0
    #: The handlers' ``join_timeout`` and this script's deadline for one measure.
    step_timeout_s: int = 60


# --- the agents --------------------------------------------------------------------------


@dataclasses.dataclass
class Call:
    """One agent's ``next_rendezvous()``: when it returned and what it got, or its error."""

    called_at: float | None = None
    returned_at: float | None = None
    rank: int | None = None
    world_size: int | None = None
    error: BaseException | None = None
    #: Re-rendezvous, the monitoring agent: when it saw a waiting node, after how many polls.
    noticed_at: float | None = None
    polls: int = 0
    polls_at: list[float] = dataclasses.field(default_factory=list)

    def record(self, info: RendezvousInfo) -> None:
        self.returned_at = time.monotonic()
        self.rank, self.world_size = info.rank, info.world_size


def rendezvous_now(
    handler: RendezvousHandler, go: threading.Event, *, call: Call, delay_s: float = 0.0
) -> None:
    """An agent starting (or restarting) its workers: ``next_rendezvous()`` once ``go`` is set.

    ``delay_s`` after ``go``: when the agent's worker fails.
    """
    try:
        go.wait()
        if delay_s > 0:
            time.sleep(delay_s)
        call.called_at = time.monotonic()
        call.record(handler.next_rendezvous())
    except BaseException as error:  # handed to the main thread, which raises it
        call.error = error


def monitor_then_rendezvous(
    handler: RendezvousHandler, go: threading.Event, call: Call, deadline: float
) -> None:
    """The agent's monitor loop with healthy workers: sleep, ``num_nodes_waiting()``, repeat."""
    try:
        go.wait()
        while True:
            time.sleep(MONITOR_INTERVAL_S)
            if time.monotonic() > deadline:
                raise TimeoutError("num_nodes_waiting() stayed 0 until the deadline")
            call.polls += 1
            call.polls_at.append(time.monotonic())
            if handler.num_nodes_waiting() > 0:
                call.noticed_at = time.monotonic()
                break
        call.record(handler.next_rendezvous())
    except BaseException as error:
        call.error = error


def run_agents(
    targets: list[Callable[[threading.Event], None]], calls: list[Call], s: Settings, what: str
) -> float:
    """Start one thread per agent, release them together; the moment they were released."""
    go = threading.Event()
    threads = [
        threading.Thread(target=target, args=(go,), name=f"bench-agent-{i}", daemon=True)
        for i, target in enumerate(targets)
    ]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    go.set()
    deadline = started + s.step_timeout_s + 10.0
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise TimeoutError(f"{what}: an agent had not returned after {s.step_timeout_s} s")
    for i, call in enumerate(calls):
        if call.error is not None:
            raise RuntimeError(f"{what}: agent {i} failed: {call.error!r}") from call.error
    ranks = sorted(c.rank for c in calls if c.rank is not None)
    if ranks != [0, 1] or any(c.world_size != 2 for c in calls):
        raise RuntimeError(
            f"{what}: expected ranks [0, 1] in a world of 2; got "
            f"{[(c.rank, c.world_size) for c in calls]}"
        )
    return started


def first_rendezvous(handlers: list[RendezvousHandler], s: Settings) -> Result:
    calls = [Call(), Call()]
    targets: list[Callable[[threading.Event], None]] = [
        functools.partial(rendezvous_now, h, call=c) for h, c in zip(handlers, calls, strict=True)
    ]
    started = run_agents(targets, calls, s, "first rendezvous")
    returned = [c.returned_at - started for c in calls if c.returned_at is not None]
    return {"seconds": max(returned), "agents_s": returned, "ranks": [c.rank for c in calls]}


def re_rendezvous(handlers: list[RendezvousHandler], s: Settings, fail_after_s: float) -> Result:
    """Agent 0's worker fails: it rendezvous again; agent 1 notices by its monitor loop.

    Agent 1's monitor loop starts as soon as the first round is over and runs
    ``fail_after_s`` before agent 0's call, so its handler is in the steady
    state of a running job (the state it caches for 1 s is refetched about
    once a second) and the failure lands at a chosen phase of that cycle.
    """
    failed, monitoring = Call(), Call()
    deadline = time.monotonic() + fail_after_s + s.step_timeout_s

    def restart(go: threading.Event) -> None:
        rendezvous_now(handlers[0], go, call=failed, delay_s=fail_after_s)

    def monitor(go: threading.Event) -> None:
        monitor_then_rendezvous(handlers[1], go, monitoring, deadline)

    run_agents([restart, monitor], [failed, monitoring], s, "re-rendezvous")
    assert failed.called_at is not None and failed.returned_at is not None
    assert monitoring.returned_at is not None and monitoring.noticed_at is not None
    called = failed.called_at
    if monitoring.noticed_at < called:
        raise RuntimeError("re-rendezvous: a node was waiting before agent 0's worker failed")
    return {
        "seconds": max(failed.returned_at, monitoring.returned_at) - called,
        "fail_after_s": fail_after_s,
        "failed_agent_s": failed.returned_at - called,
        "monitoring_agent_s": monitoring.returned_at - called,
        "noticed_s": monitoring.noticed_at - called,
        "polls": monitoring.polls,
        "polls_after_failure": sum(t >= called for t in monitoring.polls_at),
        "ranks": [failed.rank, monitoring.rank],
    }


# --- the backends ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backend:
    """How to build a pair of agents' handlers for one backend."""

    name: str
    endpoint: Callable[[], str]  # a fresh one per repetition where the backend needs it
    conf: Callable[[int], dict[str, Any]]  # extra RendezvousParameters options, per agent


def c10d_backend() -> Backend:
    return Backend(
        name="c10d",
        endpoint=lambda: f"{LOOPBACK}:{pick_free_ports(1)[0]}",
        conf=lambda agent: {"is_host": agent == 0},
    )


def dtr_backend(cluster: LocalCluster) -> Backend:
    return Backend(
        name="dtr", endpoint=lambda: cluster.coordinators, conf=lambda agent: {"job": cluster.job}
    )


def port_listening(endpoint: str) -> bool:
    host, port = endpoint.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, int(port))) == 0


@contextlib.contextmanager
def agents(backend: Backend, run_id: str, s: Settings, out: Result) -> Iterator[list[Any]]:
    """Two handlers of one rendezvous; shut down, and their stores dropped, on the way out."""
    endpoint = backend.endpoint()
    handlers: list[RendezvousHandler] = []
    try:
        started = time.monotonic()
        for agent in range(2):  # in order: c10d's host first, as its clients dial it
            params = RendezvousParameters(
                backend=backend.name,
                endpoint=endpoint,
                run_id=run_id,
                min_nodes=2,
                max_nodes=2,
                local_addr=LOOPBACK,
                join_timeout=s.step_timeout_s,
                **backend.conf(agent),
            )
            handlers.append(get_rendezvous_handler(params))
        out["create_s"] = time.monotonic() - started
        out["handler"] = type(handlers[0]).__name__
        yield handlers
    finally:
        out["shutdown"] = [bool(h.shutdown()) for h in handlers]
        handlers.clear()  # the last references to the handlers and their stores
        gc.collect()
        if backend.name == "c10d":
            out["store_port_closed"] = not port_listening(endpoint)


def fail_after_s(rep: int, repeats: int) -> float:
    """When agent 0's worker fails, after the monitor loop starts: one cache period, then a phase.

    The phases spread evenly over the cache period across the repetitions,
    the same for both backends (a paired design); the warm-up takes the middle.
    """
    phase = 0.5 if rep < 0 else (rep + 0.5) / repeats
    return STATE_CACHE_S * (1.0 + phase)


def repetition(backend: Backend, rep: int, s: Settings) -> Result:
    run_id = f"bench-{backend.name}-{rep}-{uuid.uuid4().hex[:8]}"
    row: Result = {"backend": backend.name, "rep": rep, "run_id": run_id}
    with agents(backend, run_id, s, row) as handlers:
        row["first"] = first_rendezvous(handlers, s)
        row["re"] = re_rendezvous(handlers, s, fail_after_s(rep, s.repeats))
    first, re = row["first"], row["re"]
    print(
        f"{'warm-up' if rep < 0 else f'#{rep}'} {backend.name}: first {first['seconds']:.3f} s, "
        f"re-rendezvous {re['seconds']:.3f} s (noticed after {re['noticed_s']:.2f} s)",
        flush=True,
    )
    return row


def summary(rows: list[Result], backends: tuple[str, ...]) -> Result:
    out: Result = {}
    for measure in ("first", "re"):
        figures: Result = {}
        for name in backends:
            values = [r[measure]["seconds"] for r in rows if r["backend"] == name]
            figures[name] = {
                "median_s": statistics.median(values),
                "max_s": max(values),
                "runs": len(values),
            }
        if BASELINE in figures and "dtr" in figures:
            figures["ratio"] = figures["dtr"]["median_s"] / figures[BASELINE]["median_s"]
        out[measure] = figures
    return out


def run(s: Settings) -> Result:
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        backends: dict[str, Backend] = {}
        etcd_version = None
        if "c10d" in s.backends:
            backends["c10d"] = c10d_backend()
        if "dtr" in s.backends:
            cluster = LocalCluster.start(replicas=3, job=JOB)
            stack.callback(cluster.stop)
            cluster.leader(timeout_s=30.0)
            backends["dtr"] = dtr_backend(cluster)
            etcd_version = cluster.owned_etcd.version if cluster.owned_etcd else "unknown"
        order = [backends[name] for name in s.backends]
        warmups = [repetition(b, -1, s) for b in order]
        rows: list[Result] = []
        for rep in range(s.repeats):
            if time.monotonic() - started > s.budget_s:
                print(f"time budget of {s.budget_s:.0f} s spent: {rep} repetitions", flush=True)
                break
            for backend in order if rep % 2 == 0 else order[::-1]:
                rows.append(repetition(backend, rep, s))
    if not rows:
        raise RuntimeError("no repetition ran within the time budget")
    return {
        "summary": summary(rows, s.backends),
        "runs": rows,
        "warmups": warmups,
        "etcd_version": etcd_version,
    }


# --- the report --------------------------------------------------------------------------


def verdict(ratio: float) -> str:
    return "PASS" if ratio <= RATIO_MAX else f"**FAIL** (+{ratio / RATIO_MAX - 1:.0%} over)"


def render(payload: Result) -> str:
    """``rendezvous.md`` from what ``rendezvous.json`` holds."""
    meta, summ = payload["meta"], payload["summary"]
    s = meta["settings"]
    backends = [b for b in s["backends"] if b in summ["first"]]
    handlers = {r["backend"]: r["handler"] for r in payload["warmups"]}
    lines = [
        "# torchrun rendezvous benchmark: dtr vs c10d",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['cpu_count']} cores (os.cpu_count()), {meta['platform']}",
        f"- python {meta['python']}, torch {meta['torch']}, grpcio {meta['grpcio']}, "
        f"etcd {meta['etcd'] or '-'}",
        f"- command: `{meta['command']}` (wall time {meta['wall_s']:.0f} s; load average "
        f"{meta['loadavg_at_start'][0]:.2f} at start, {meta['loadavg_at_end'][0]:.2f} at the end)",
        "- setup: 2 agents = 2 rendezvous handlers from torch's registry "
        "(`min_nodes=max_nodes=2`, `local_addr=127.0.0.1`) on 2 threads of one process; "
        "c10d: a TCPStore on a fresh loopback port hosted by agent 0; dtr: a 3-replica "
        "LocalCluster (1 etcd member), all on 127.0.0.1. Handlers: "
        + ", ".join(f"{b} `{handlers[b]}`" for b in backends)
        + ". Nothing pinned.",
        f"- {s['repeats']} repetitions asked, {summ['first'][backends[0]]['runs']} run, "
        "each with a fresh run id, backends alternating which goes first; one untimed "
        "warm-up of each before.",
        "",
        "## Targets",
        "",
        "| measure | c10d median s | c10d max s | dtr median s | dtr max s "
        "| dtr/c10d (medians) | target | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    titles = {
        "first": "first rendezvous (both call at once → both returned)",
        "re": "re-rendezvous after a worker failure (A calls → both returned)",
    }
    for measure, title in titles.items():
        f = summ[measure]
        cells = []
        for name in BACKENDS:
            if name in f:
                cells += [f"{f[name]['median_s']:.3f}", f"{f[name]['max_s']:.3f}"]
            else:
                cells += ["-", "-"]
        ratio = f.get("ratio")
        shown = f"{ratio:.2f}x" if ratio is not None else "-"
        judged = verdict(ratio) if ratio is not None else "-"
        lines.append(f"| {title} | {' | '.join(cells)} | {shown} | ≤ {RATIO_MAX:g}x | {judged} |")
    lines += [
        "",
        "First rendezvous: both agents' `next_rendezvous()` released together; the time until "
        "both returned. It includes torch's random 0-0.3 s delay before a handler's first "
        "join and its 1 s pause between polls of the shared state (`DynamicRendezvousHandler`, "
        "the same for both backends).",
        "",
        "Re-rendezvous: after the first round, agent B runs the agent's monitor loop (every "
        f"{MONITOR_INTERVAL_S:g} s, torchrun's default `--monitor-interval`, "
        "`num_nodes_waiting()`; torch's handler answers it from state cached for "
        f"{STATE_CACHE_S:g} s); `fail at` seconds later agent A calls `next_rendezvous()` again "
        "(torchrun's `_restart_workers` after a worker failure), and B calls it too once "
        "`num_nodes_waiting()` is above 0. Times from A's call until both returned; `fail at` "
        "spreads A's call over one cache period, the same for both backends in a repetition. "
        "`B noticed` is when B saw the waiting node.",
        "",
        "## Runs",
        "",
        "| rep | backend | first s | fail at s | re-rendezvous s | A returned s | B noticed s "
        "| B returned s | B polls after A's call | handlers built s | shut down |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in [*payload["warmups"], *payload["runs"]]:
        re = r["re"]
        shut = "ok" if all(r["shutdown"]) else f"{r['shutdown']}"
        if r.get("store_port_closed") is False:
            shut += ", store port still open"
        lines.append(
            f"| {'warm-up' if r['rep'] < 0 else r['rep']} | {r['backend']} "
            f"| {r['first']['seconds']:.3f} | {re['fail_after_s']:.2f} | {re['seconds']:.3f} "
            f"| {re['failed_agent_s']:.3f} | {re['noticed_s']:.3f} "
            f"| {re['monitoring_agent_s']:.3f} | {re['polls_after_failure']} "
            f"| {r['create_s']:.3f} | {shut} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=Settings.repeats, help="per backend")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=Settings.budget_s,
        help="no repetition starts after this many seconds",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated, of c10d and dtr (the ratios need both)",
    )
    args = parser.parse_args()
    chosen = tuple(b for b in BACKENDS if b in args.backends.split(","))
    if not chosen or set(args.backends.split(",")) - set(BACKENDS):
        parser.error(f"--backends takes a comma-separated subset of {','.join(BACKENDS)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    settings = Settings(repeats=args.repeats, backends=chosen, budget_s=args.budget_s)
    started, load_before = time.monotonic(), os.getloadavg()
    results = run(settings)
    meta: Result = {
        **run_facts(),
        "torch": torch.__version__,
        "grpcio": grpc.__version__,
        "etcd": results.pop("etcd_version"),
        "wall_s": time.monotonic() - started,
        "loadavg_at_start": load_before,
        "loadavg_at_end": os.getloadavg(),
        "settings": dataclasses.asdict(settings),
        "targets": {"ratio_max": RATIO_MAX, "baseline": BASELINE},
        "monitor_interval_s": MONITOR_INTERVAL_S,
        "state_cache_s": STATE_CACHE_S,
    }
    payload = {"meta": meta, **results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(payload, indent=2) + "\n")
    markdown = render(payload)
    (args.out / f"{NAME}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
