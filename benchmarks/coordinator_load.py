"""The load generator of ``benchmarks/coordinator.py``: simulated workers over grpc.aio.

It runs in a process of its own (``multiprocessing``, spawn), so the client's
CPU is never the server's, and takes one command at a time over a pipe:
``{"op": NAME, **arguments}``, answered by one JSON-able dict. Simulated
workers share a few channels (``connect``), each with its own TCP connection
(a local subchannel pool), as a few training hosts would.

Every loop here stops itself: a deadline and a call count bound each one,
and the process exits when the pipe closes. Latencies are measured on
``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in every process);
open-loop latencies start at the *scheduled* send time, so a slow answer
also charges the sends it delayed (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import grpc
import numpy as np

from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc

# A channel of its own per pool slot: without a local pool, channels with the
# same arguments share one connection. Fast reconnects, as dtr.worker uses.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)
CALL_TIMEOUT_S = 10.0
BARRIER_POLL_S = 10.0
_ERROR_PAUSE_S = 0.01
_CLK_TCK = os.sysconf("SC_CLK_TCK")

Result = dict[str, Any]


def worker_ids(count: int) -> list[str]:
    return [f"w{i:04d}" for i in range(count)]


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) a process has used; 0.0 if unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def summarize(latencies_s: Sequence[float]) -> Result:
    """Count and percentiles in milliseconds."""
    if not latencies_s:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(latencies_s) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "count": len(ms),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(ms.max()),
    }


@dataclass
class Window:
    """Counts completions inside ``[start, stop)`` and the CPU both sides spent in it."""

    start: float
    stop: float
    max_calls: int
    server_pid: int | None
    calls: int = 0
    in_window: int = 0
    errors: int = 0
    cpu_marks: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def is_open(self) -> bool:
        return time.monotonic() < self.stop and self.calls < self.max_calls

    def record(self, sent: float, latencies: list[float] | None = None) -> None:
        now = time.monotonic()
        self.calls += 1
        if self.start <= now < self.stop:
            self.in_window += 1
            if latencies is not None:
                latencies.append(now - sent)

    async def mark_cpu(self) -> None:
        """Sample CPU times at the window's start and stop."""
        await asyncio.sleep(max(0.0, self.start - time.monotonic()))
        own, server = time.process_time(), process_cpu_s(self.server_pid)
        await asyncio.sleep(max(0.0, self.stop - time.monotonic()))
        self.cpu_marks = (own, server, time.process_time(), process_cpu_s(self.server_pid))

    def result(self) -> Result:
        seconds = self.stop - self.start
        own0, server0, own1, server1 = self.cpu_marks
        return {
            "calls": self.in_window,
            "seconds": seconds,
            "calls_per_s": self.in_window / seconds,
            "errors": self.errors,
            "loadgen_cpu": (own1 - own0) / seconds,
            "server_cpu": (server1 - server0) / seconds,
            "server_cpu_us_per_call": (server1 - server0) * 1e6 / max(1, self.in_window),
        }


class Load:
    """The simulated workers' side; one method per command."""

    def __init__(self) -> None:
        self.channels: list[grpc.aio.Channel] = []
        self.stubs: list[pb_grpc.CoordinatorAsyncStub] = []
        self.job = "default"
        self.barrier_tasks: dict[str, list[asyncio.Task[tuple[float, int]]]] = {}

    def header(self, worker: str) -> pb.RequestHeader:
        return pb.RequestHeader(job=self.job, caller_id=worker)

    def stub(self, index: int) -> pb_grpc.CoordinatorAsyncStub:
        return self.stubs[index % len(self.stubs)]

    async def connect(self, address: str, channels: int, job: str) -> Result:
        await self.close()
        self.job = job
        self.channels = [
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(channels)
        ]
        self.stubs = [pb_grpc.CoordinatorStub(c) for c in self.channels]
        for channel in self.channels:
            await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT_S)
        return {"address": address, "channels": channels}

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        self.channels, self.stubs = [], []

    # -- membership ----------------------------------------------------------------
    async def register(self, workers: list[str], capacity: float) -> Result:
        """RegisterWorker for every worker at once (each one a fenced etcd write on dtr)."""

        async def one(index: int, worker: str) -> int:
            request = pb.RegisterWorkerRequest(
                header=self.header(worker), worker_id=worker, capacity=capacity, host="bench"
            )
            reply = await self.stub(index).RegisterWorker(request, timeout=120.0)
            return reply.header.generation

        started = time.monotonic()
        generations = await asyncio.gather(*(one(i, w) for i, w in enumerate(workers)))
        return {"seconds": time.monotonic() - started, "generation": max(generations)}

    async def register_dataset(self, name: str, num_shards: int) -> Result:
        request = pb.RegisterDatasetRequest(
            header=self.header("bench"), name=name, num_shards=num_shards
        )
        reply = await self.stub(0).RegisterDataset(request, timeout=CALL_TIMEOUT_S)
        return {"created": reply.created, "num_shards": reply.dataset.num_shards}

    # -- heartbeats ----------------------------------------------------------------
    def beat(self, worker: str, sequence: int) -> pb.HeartbeatRequest:
        return pb.HeartbeatRequest(
            header=self.header(worker),
            beat=pb.WorkerBeat(worker_id=worker, sequence=sequence, step=sequence),
        )

    def stream_beat(self, worker: str, sequence: int) -> pb.HeartbeatStreamRequest:
        return pb.HeartbeatStreamRequest(
            header=self.header(worker),
            beat=pb.WorkerBeat(worker_id=worker, sequence=sequence, step=sequence),
        )

    async def heartbeat_closed(
        self,
        *,
        mode: str,
        workers: list[str],
        warmup_s: float,
        duration_s: float,
        max_calls: int,
        server_pid: int | None,
    ) -> Result:
        """Every worker beats again as soon as its answer arrives; calls/s in the window."""
        start = time.monotonic() + warmup_s
        window = Window(start, start + duration_s, max_calls, server_pid)
        loop = self._unary_closed if mode == "unary" else self._stream_closed
        marks = asyncio.create_task(window.mark_cpu())
        await asyncio.wait_for(
            asyncio.gather(*(loop(i, w, window) for i, w in enumerate(workers))),
            warmup_s + duration_s + 2 * CALL_TIMEOUT_S,
        )
        await marks
        return {"mode": mode, "workers": len(workers), **window.result()}

    async def _unary_closed(self, index: int, worker: str, window: Window) -> None:
        stub, sequence = self.stub(index), 0
        while window.is_open():
            sequence += 1
            try:
                await stub.Heartbeat(self.beat(worker, sequence), timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError:
                window.errors += 1
                await asyncio.sleep(_ERROR_PAUSE_S)
                continue
            window.record(0.0)

    async def _stream_closed(self, index: int, worker: str, window: Window) -> None:
        call = self.stub(index).HeartbeatStream(timeout=window.stop - time.monotonic() + 5.0)
        sequence = 0
        try:
            while window.is_open():
                sequence += 1
                await call.write(self.stream_beat(worker, sequence))
                if await call.read() is grpc.aio.EOF:
                    break
                window.record(0.0)
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError:
            window.errors += 1

    async def heartbeat_open(
        self, mode: str, workers: list[str], period_s: float, duration_s: float
    ) -> Result:
        """Each worker beats every ``period_s`` on a schedule (phases spread evenly)."""
        streams: list[Any] = []
        if mode == "stream":
            streams = [self.stub(i).HeartbeatStream() for i in range(len(workers))]
            for call, worker in zip(streams, workers, strict=True):  # open every stream first
                await call.write(self.stream_beat(worker, 0))
                await call.read()
        t0 = time.monotonic() + 0.2
        latencies: list[float] = []
        lags: list[float] = []
        errors: list[int] = []
        n = len(workers)

        async def run(i: int, worker: str) -> None:
            k = 0
            while True:
                scheduled = t0 + period_s * (k + i / n)
                if scheduled >= t0 + duration_s:
                    return
                k += 1
                await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
                lags.append(time.monotonic() - scheduled)
                try:
                    if streams:
                        await streams[i].write(self.stream_beat(worker, k))
                        await streams[i].read()
                    else:
                        await self.stub(i).Heartbeat(self.beat(worker, k), timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError:
                    errors.append(1)
                    continue
                latencies.append(time.monotonic() - scheduled)

        cpu0 = time.process_time()
        await asyncio.wait_for(
            asyncio.gather(*(run(i, w) for i, w in enumerate(workers))),
            duration_s + 2 * CALL_TIMEOUT_S,
        )
        cpu_s = time.process_time() - cpu0
        for call in streams:
            await call.done_writing()
            await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
        return {
            "mode": mode,
            "workers": n,
            "period_s": period_s,
            "duration_s": duration_s,
            "errors": len(errors),
            "loadgen_cpu": cpu_s / duration_s,
            "send_lag": summarize(lags),
            **summarize(latencies),
        }

    # -- shards --------------------------------------------------------------------
    async def get_shards_closed(
        self,
        *,
        dataset: str,
        workers: list[str],
        concurrency: int,
        warmup_s: float,
        duration_s: float,
        max_calls: int,
        server_pid: int | None,
    ) -> Result:
        """``concurrency`` callers, each asking for the next worker's shards in turn."""
        start = time.monotonic() + warmup_s
        window = Window(start, start + duration_s, max_calls, server_pid)
        latencies: list[float] = []
        sizes: set[int] = set()

        async def caller(index: int) -> None:
            stub, turn = self.stub(index), index
            while window.is_open():
                worker = workers[turn % len(workers)]
                turn += concurrency
                request = pb.GetShardsRequest(
                    header=self.header(worker), dataset=dataset, worker_id=worker
                )
                sent = time.monotonic()
                try:
                    reply = await stub.GetShards(request, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError:
                    window.errors += 1
                    await asyncio.sleep(_ERROR_PAUSE_S)
                    continue
                window.record(sent, latencies)
                sizes.add(len(reply.shard_ids))

        marks = asyncio.create_task(window.mark_cpu())
        await asyncio.wait_for(
            asyncio.gather(*(caller(i) for i in range(concurrency))),
            warmup_s + duration_s + 2 * CALL_TIMEOUT_S,
        )
        await marks
        return {
            "concurrency": concurrency,
            "shards_per_reply_min": min(sizes, default=0),
            "shards_per_reply_max": max(sizes, default=0),
            **window.result(),
            **summarize(latencies),
        }

    async def get_shards_once(self, dataset: str, worker: str) -> Result:
        request = pb.GetShardsRequest(header=self.header(worker), dataset=dataset, worker_id=worker)
        sent = time.monotonic()
        reply = await self.stub(0).GetShards(request, timeout=CALL_TIMEOUT_S)
        return {
            "latency_ms": (time.monotonic() - sent) * 1000.0,
            "shards": len(reply.shard_ids),
            "generation": reply.generation,
        }

    # -- barriers ------------------------------------------------------------------
    async def barrier_open(self, name: str, workers: list[str], timeout_s: float) -> Result:
        """Start one arrival per worker and return at once; they wait in the background."""
        deadline = time.monotonic() + timeout_s
        self.barrier_tasks[name] = [
            asyncio.create_task(self._arrive(i, name, w, deadline)) for i, w in enumerate(workers)
        ]
        return {"started": len(workers)}

    async def barrier_last(self, name: str, worker: str, timeout_s: float) -> Result:
        """Send the last arrival; seconds until every waiter (and it) got its answer."""
        waiting = self.barrier_tasks.pop(name)
        deadline = time.monotonic() + timeout_s
        sent = time.monotonic()
        last = asyncio.create_task(self._arrive(len(waiting), name, worker, deadline))
        outcomes = await asyncio.gather(*waiting, last, return_exceptions=True)
        done = [o for o in outcomes if not isinstance(o, BaseException)]
        statuses: dict[str, int] = {}
        for _, status in done:
            label = pb.BarrierStatus.Name(status)
            statuses[label] = statuses.get(label, 0) + 1
        return {
            "last_release_s": max((t for t, _ in done), default=sent) - sent,
            "last_caller_s": done[-1][0] - sent if len(done) == len(outcomes) else None,
            "statuses": statuses,
            "errors": [repr(o) for o in outcomes if isinstance(o, BaseException)][:3],
        }

    async def _arrive(
        self, index: int, name: str, worker: str, deadline: float
    ) -> tuple[float, int]:
        """Arrive, and arrive again after a WAITING answer (a long poll's end), until done."""
        request = pb.BarrierRequest(
            header=self.header(worker), name=name, worker_id=worker, timeout_s=BARRIER_POLL_S
        )
        while True:
            timeout_s = max(0.1, min(BARRIER_POLL_S + 5.0, deadline - time.monotonic()))
            reply = await self.stub(index).Barrier(request, timeout=timeout_s)
            if reply.status != pb.BARRIER_STATUS_WAITING or time.monotonic() >= deadline:
                return time.monotonic(), int(reply.status)


async def _serve(conn: Connection) -> None:
    load = Load()
    ops: dict[str, Callable[..., Awaitable[Result]]] = {
        "connect": load.connect,
        "register": load.register,
        "register_dataset": load.register_dataset,
        "heartbeat_closed": load.heartbeat_closed,
        "heartbeat_open": load.heartbeat_open,
        "get_shards_closed": load.get_shards_closed,
        "get_shards_once": load.get_shards_once,
        "barrier_open": load.barrier_open,
        "barrier_last": load.barrier_last,
    }
    try:
        while True:
            try:
                command: dict[str, Any] = await asyncio.to_thread(conn.recv)
            except EOFError:  # the benchmark is gone: so are we
                return
            op = command.pop("op")
            if op == "stop":
                return
            try:
                reply: Result = {"ok": True, "result": await ops[op](**command)}
            except Exception as err:
                reply = {"ok": False, "error": f"{op}: {type(err).__name__}: {err}"}
            conn.send(reply)
    finally:
        await load.close()


def pin(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of ``pid`` (threads started later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(task), cpus)


def run(conn: Connection, cpus: set[int] | None) -> None:
    """The process's target: serve commands until ``stop`` or the pipe closes.

    A session of its own: in the benchmark's session (one autogroup with the
    bare server) the load starved etcd of CPU, its leases expired and the
    replicas failed over in the middle of measurements. ``cpus`` pins it (and
    every thread it starts) so the server measured has the other core(s).
    """
    os.setsid()
    if cpus:
        os.sched_setaffinity(0, cpus)
    asyncio.run(_serve(conn))
