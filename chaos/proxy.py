"""A fault-injecting TCP proxy: partitions, resets and latency on one link.

Killing or pausing a process (``coordinator_process.py``) hurts every peer of
it at once. A network partition cuts one link and leaves both ends running,
and that is what the chaos harness must inject: partitions between workers
and coordinators, and between coordinators and etcd. So it puts a
``TcpProxy`` on each link to cut — a replica advertises its proxy's address
(``LocalCluster.start(advertise_ports=…)``), so workers and the
``dtr-leader`` redirect hints both go through proxies; a replica's ``--etcd``
may name proxies in front of etcd members — and switches modes as traffic
flows:

- ``heal()``: bytes pass.
- ``blackhole()``: packets vanish. New connections are accepted but never
  reach the target; bytes both ways are read and dropped, FINs too; existing
  connections stay open and silent, so only deadlines and keepalives notice.
- ``reset()``: every connection is aborted with an RST (SO_LINGER 0), and
  new ones are reset as soon as they are accepted.
- ``delay(seconds)``: each chunk leaves ``seconds`` after it arrived, in
  order (latency, not a bandwidth cap).
- ``drop_new()``: new connections are closed at once; existing ones pass.
- ``cut_off(clients)``: a blackhole for the clients a filter picks (by the
  ``(host, port)`` the proxy sees), bytes pass for every other. Every worker
  reaches a replica through the one proxy the replica advertises, so this is
  how one worker is partitioned alone (``sockets.py`` tells its connections
  from the others'). Any other switch, ``heal()`` included, ends the cut.

A switch acts on existing and new connections alike and returns once the
proxy's loop applied it; chunks held back by a delay obey the mode of the
moment they leave. A byte stream that lost bytes in a blackhole cannot resume
(real TCP would stall until it gave up), so leaving a blackhole resets the
connections that lost bytes or never reached the target, and clients
reconnect as they would after a real partition.

The proxy runs its own asyncio loop (``proxy_relay.py``, what happens to the
bytes) in a daemon thread, so synchronous tests and the harness drive it
with plain calls. It listens on loopback only; every wait is bounded, and
``close()`` leaves no thread, task or socket behind, raising if it would.
What is not here: when to switch (the nemesis and its seeded schedule).
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from dtr.errors import DtrError, InvalidArgument

from .coordinator_process import LOOPBACK
from .proxy_relay import ClientFilter, ProxyMode, Relay

__all__ = ["ClientFilter", "ProxyError", "ProxyMode", "TcpProxy"]

_T = TypeVar("_T")

CONTROL_TIMEOUT_S = 15.0  # start, one switch, close: longer than any wait in the relay
MAX_DELAY_S = 3600.0


class ProxyError(DtrError):
    """The proxy could not start, a control call timed out, or close() was not clean."""


def _parse_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"target must be HOST:PORT; got {target!r}")
    return host, int(port)


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``, with faults switched at runtime."""

    def __init__(self, target: str, *, listen_port: int | None = None) -> None:
        """Describe a proxy to ``target`` (``HOST:PORT``); ``start()`` binds and runs it.

        ``listen_port`` None picks a free port. A mode set before ``start()``
        holds from the first connection.
        """
        if listen_port is not None and not 0 < listen_port < 65536:
            raise InvalidArgument(f"listen_port must be in [1, 65535]; got {listen_port}")
        self.target = target
        self._relay = Relay(*_parse_target(target))
        self._port = listen_port or 0
        self._control = threading.Lock()  # start, close and switches, one at a time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._closed = False

    # --- what it is and has done ----------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port; 0 before ``start()`` when none was asked for."""
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: what a client dials instead of the target."""
        return f"{LOOPBACK}:{self._port}"

    @property
    def mode(self) -> ProxyMode:
        return self._relay.mode

    @property
    def is_cutting(self) -> bool:
        """Whether some clients are cut off (``cut_off``) now."""
        return self._relay.cut is not None

    @property
    def delay_s(self) -> float:
        """The latency added to each chunk; 0 unless the mode is ``delay``."""
        return self._relay.delay_s

    @property
    def connections_accepted(self) -> int:
        """Connections accepted so far in every mode, dropped and reset ones too."""
        return self._relay.accepted

    @property
    def bytes_forwarded(self) -> int:
        """Bytes delivered, both directions together."""
        return self._relay.forwarded_bytes

    @property
    def bytes_discarded(self) -> int:
        """Bytes a blackhole read and dropped, both directions together."""
        return self._relay.discarded_bytes

    @property
    def open_connections(self) -> int:
        return self._relay.open_connections

    # --- modes ----------------------------------------------------------------------

    def heal(self) -> None:
        self._set_mode(ProxyMode.HEAL)

    def blackhole(self) -> None:
        self._set_mode(ProxyMode.BLACKHOLE)

    def reset(self) -> None:
        self._set_mode(ProxyMode.RESET)

    def delay(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and 0.0 <= seconds <= MAX_DELAY_S):
            raise InvalidArgument(f"delay must be in [0, {MAX_DELAY_S}] s; got {seconds}")
        self._set_mode(ProxyMode.DELAY, seconds)

    def drop_new(self) -> None:
        self._set_mode(ProxyMode.DROP_NEW)

    def cut_off(self, clients: ClientFilter) -> None:
        """Blackhole the connections of the clients ``clients`` picks; the others pass.

        The filter runs on the proxy's loop, for each open connection now and
        each new one: it must be quick and must not block.
        """
        self._set_mode(ProxyMode.HEAL, cut=clients)

    def _set_mode(
        self, mode: ProxyMode, delay_s: float = 0.0, cut: ClientFilter | None = None
    ) -> None:
        self._refuse_own_thread()
        with self._control:
            if self._loop is None or self._closed:
                self._relay.mode, self._relay.delay_s, self._relay.cut = mode, delay_s, cut
            else:
                self._call(self._relay.switch(mode, delay_s, cut))

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> TcpProxy:
        """Bind ``127.0.0.1:<port>`` and serve in a daemon thread; ProxyError if it cannot."""
        with self._control:
            if self._closed or self._loop is not None:
                raise ProxyError(f"proxy to {self.target} was already started")
            self._loop = loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=_run_loop, args=(loop,), name=f"dtr-proxy-{self.target}", daemon=True
            )
            self._thread.start()
            try:
                self._server = self._call(self._listen())
            except BaseException:
                self._closed = True
                self._stop_thread()
                raise
        return self

    async def _listen(self) -> asyncio.Server:
        try:
            server = await asyncio.start_server(self._relay.accept, LOOPBACK, self._port)
        except OSError as err:
            raise ProxyError(
                f"proxy to {self.target}: cannot listen on {self.address}: {err}"
            ) from None
        self._port = int(server.sockets[0].getsockname()[1])
        return server

    def close(self) -> None:
        """Close the listener and reset every connection, stop the thread. Idempotent.

        Raises ProxyError if a task or the thread outlived the shutdown: a
        leak is a bug, and tests should see it.
        """
        self._refuse_own_thread()
        with self._control:
            if self._closed:
                return
            self._closed = True
            if self._loop is None:
                return
            try:
                leftover = self._call(self._shutdown())
            finally:
                self._stop_thread()
        if leftover:
            raise ProxyError(f"proxy to {self.target}: {leftover} task(s) outlived close()")

    async def _shutdown(self) -> int:
        """Stop accepting, end every connection; return how many other tasks remain."""
        assert self._server is not None
        self._server.close()
        await self._relay.shutdown()
        await asyncio.wait_for(self._server.wait_closed(), CONTROL_TIMEOUT_S / 2)
        return len(asyncio.all_tasks() - {asyncio.current_task()})

    def _stop_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(CONTROL_TIMEOUT_S)
        if thread.is_alive():
            raise ProxyError(f"proxy to {self.target}: its thread did not stop")

    def _refuse_own_thread(self) -> None:
        """Control calls wait on the loop: from the loop's own thread they would deadlock."""
        if self._thread is not None and threading.current_thread() is self._thread:
            raise ProxyError("a TcpProxy must be controlled from outside its own loop")

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the proxy's loop and wait (bounded) for its result."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(CONTROL_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise ProxyError(f"proxy to {self.target}: a control call timed out") from None

    def __enter__(self) -> TcpProxy:
        return self.start() if self._loop is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TcpProxy({self.address} -> {self.target}, mode={self.mode.value})"


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The proxy thread: the loop until stopped, then its executor joined and it closed."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # Host names are resolved in the default executor: its threads must not outlive us.
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
