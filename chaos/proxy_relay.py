"""The in-loop half of ``TcpProxy``: connections, the current mode, the bytes.

Everything here runs on the proxy's own asyncio loop and is touched from no
other thread except to read a counter; ``proxy.py`` is the thread-safe facade
that owns the loop, the listener and the lifecycle, and documents the modes.
Split from it by role: this file decides what happens to every byte.

Each connection is a ``_Link``: the accepted socket and, once dialled, the one
to the target, with per direction a reader and a deliverer joined by a bounded
queue. Chunks are stamped on arrival and judged by the mode when they leave,
so a mode switch also governs bytes already held back by a delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import struct
import time
from collections.abc import Callable

__all__ = ["ClientFilter", "ProxyMode", "Relay"]

_log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
QUEUE_CHUNKS = 16  # per direction: at most ~1 MiB held back by a delay
CONNECT_TIMEOUT_S = 5.0
LINGER_S = 2.0  # a graceful close that cannot flush in this long is aborted
END_TIMEOUT_S = 10.0
_Chunk = tuple[float, bytes]  # (monotonic arrival time, data); b"" is the EOF
#: Picks clients by their ``(host, port)`` as the proxy sees them: True cuts one off.
ClientFilter = Callable[[tuple[str, int]], bool]


class ProxyMode(enum.StrEnum):
    """What the proxy does to traffic now (see ``dtr.chaos.proxy``)."""

    HEAL = "heal"
    BLACKHOLE = "blackhole"
    RESET = "reset"
    DELAY = "delay"
    DROP_NEW = "drop_new"


def _abort_with_rst(transport: asyncio.WriteTransport) -> None:
    """Close at once, unsent bytes dropped, with an RST rather than a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing to linger
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Link:
    """One accepted connection and, once dialled, its connection to the target."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        # Lost bytes, or never reached the target: can never carry traffic again.
        self.is_broken = False
        # Its client is cut off (``Relay.cut``): treated as in a blackhole whatever the mode.
        self.is_cut = False
        self.task: asyncio.Task[None] | None = None

    @property
    def peer(self) -> tuple[str, int] | None:
        name = self.client.get_extra_info("peername")
        return (str(name[0]), int(name[1])) if isinstance(name, tuple) else None

    def _writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]

    def abort(self) -> None:
        for writer in self._writers():
            _abort_with_rst(writer.transport)

    async def close(self, timeout_s: float) -> None:
        """FIN both sides; whatever has not flushed within ``timeout_s`` is aborted."""
        writers = self._writers()
        try:
            for writer in writers:
                writer.close()
            closed = asyncio.gather(*(w.wait_closed() for w in writers))
            await asyncio.wait_for(closed, timeout_s)
        except OSError:  # a side was reset, or the flush timed out
            pass
        finally:
            self.abort()  # a no-op on what closed


class Relay:
    """The connections of one proxy and what its mode does to them."""

    def __init__(self, host: str, port: int) -> None:
        self.target = f"{host}:{port}"
        self._host, self._port = host, port
        self.mode = ProxyMode.HEAL
        self.delay_s = 0.0
        self.cut: ClientFilter | None = None
        self.accepted = 0
        self.forwarded_bytes = 0
        self.discarded_bytes = 0
        self._links: set[_Link] = set()
        self._changed = asyncio.Event()  # set, and replaced, on every switch

    @property
    def open_connections(self) -> int:
        return len(self._links)

    # --- control ------------------------------------------------------------------

    async def switch(self, mode: ProxyMode, delay_s: float, cut: ClientFilter | None) -> None:
        """Apply a mode and the clients cut off; return once the connections it ends are closed.

        Leaving a blackhole (or a cut) ends the links that lost bytes: a
        stream with a hole cannot resume.
        """
        self.mode, self.delay_s, self.cut = mode, delay_s, cut
        for link in self._links:
            link.is_cut = self._is_cut(link)
        doomed = [
            link
            for link in self._links
            if mode is ProxyMode.RESET
            or (mode is not ProxyMode.BLACKHOLE and link.is_broken and not link.is_cut)
        ]
        await self._end(doomed)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wakes every chunk held back, to be judged by the new mode

    async def shutdown(self) -> None:
        """Reset every connection and wait until their tasks are gone."""
        await self._end(list(self._links))

    async def _end(self, links: list[_Link]) -> None:
        tasks = [link.task for link in links if link.task is not None]
        for link in links:
            link.abort()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=END_TIMEOUT_S)

    # --- traffic ------------------------------------------------------------------

    def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The listener's callback: reset, drop, or serve a new connection by the mode."""
        self.accepted += 1
        link = _Link(writer)
        link.is_cut = self._is_cut(link)
        if self.mode is ProxyMode.RESET:
            link.abort()
            return
        if self.mode is ProxyMode.DROP_NEW:
            writer.close()
            return
        link.task = asyncio.get_running_loop().create_task(self._serve(link, reader))
        self._links.add(link)
        link.task.add_done_callback(lambda task: self._forget(link, task))

    def _is_cut(self, link: _Link) -> bool:
        """Whether the filter cuts the link's client off; a filter that fails cuts nothing."""
        peer = link.peer
        if self.cut is None or peer is None:
            return False
        try:
            return bool(self.cut(peer))
        except Exception:
            _log.exception("proxy to %s: the client filter failed", self.target)
            return False

    def _forget(self, link: _Link, task: asyncio.Task[None]) -> None:
        self._links.discard(link)
        if not task.cancelled() and task.exception() is not None:
            _log.error("proxy to %s: connection failed", self.target, exc_info=task.exception())

    async def _serve(self, link: _Link, client: asyncio.StreamReader) -> None:
        """Relay one connection until both sides end; RST both sides on any failure."""
        try:
            if self.mode is ProxyMode.BLACKHOLE or link.is_cut:
                await self._swallow(link, client)
            else:
                dialled = asyncio.open_connection(self._host, self._port)
                upstream, link.upstream = await asyncio.wait_for(dialled, CONNECT_TIMEOUT_S)
                await self._relay(link, client, upstream)
        except OSError as err:  # the target refused or timed out, a side reset
            _log.debug("proxy to %s: connection ended: %r", self.target, err)
            link.abort()
        except BaseException:
            link.abort()
            raise
        await link.close(LINGER_S)

    async def _swallow(self, link: _Link, client: asyncio.StreamReader) -> None:
        """A connection accepted in a blackhole: its SYN vanished, so it ends once healed."""
        link.is_broken = True
        while data := await client.read(CHUNK_BYTES):
            self.discarded_bytes += len(data)

    async def _relay(
        self, link: _Link, client: asyncio.StreamReader, upstream: asyncio.StreamReader
    ) -> None:
        assert link.upstream is not None
        try:
            async with asyncio.TaskGroup() as group:
                for reader, writer in ((client, link.upstream), (upstream, link.client)):
                    queue: asyncio.Queue[_Chunk] = asyncio.Queue(QUEUE_CHUNKS)
                    group.create_task(self._pump(reader, queue))
                    group.create_task(self._deliver(queue, writer, link))
        except* OSError:  # one side was reset or failed: the other gets an RST too
            link.abort()

    async def _pump(self, reader: asyncio.StreamReader, queue: asyncio.Queue[_Chunk]) -> None:
        while True:
            data = await reader.read(CHUNK_BYTES)
            await queue.put((time.monotonic(), data))
            if not data:
                return

    async def _deliver(
        self, queue: asyncio.Queue[_Chunk], writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        while True:
            arrived, data = await queue.get()
            if not await self._is_released(arrived, link):
                link.is_broken = True
                self.discarded_bytes += len(data)
                if not data:
                    return  # the FIN vanished too
                continue
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            self.forwarded_bytes += len(data)

    async def _is_released(self, arrived: float, link: _Link) -> bool:
        """Wait until a chunk may leave under the current mode; False: it is dropped."""
        while True:
            changed = self._changed
            if self.mode is ProxyMode.BLACKHOLE or link.is_cut:
                return False
            delay_s = self.delay_s if self.mode is ProxyMode.DELAY else 0.0
            remaining_s = arrived + delay_s - time.monotonic()
            if remaining_s <= 0:
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining_s)
