"""dtr.chaos.proxy: every fault mode on plain sockets and on gRPC, and a clean close.

An echo server and a gRPC health server run in this process on loopback, so
no processes are started. Waits are for conditions with deadlines; the only
fixed timeouts are socket read timeouts bounding how long a test listens for
bytes that must not come.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dtr.chaos.proxy import ProxyError, ProxyMode, TcpProxy
from dtr.errors import InvalidArgument
from helpers import wait_until

SILENCE_S = 0.3  # how long a test listens for bytes that must not arrive
READ_TIMEOUT_S = 5.0
_FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


class EchoServer:
    """Sends every byte back; one thread per connection, all named ``echo-*``."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._accept_loop, name="echo-accept")]
        self._threads[0].start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._echo, args=(conn,), name="echo-conn")
            self._threads.append(thread)
            thread.start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        with conn:
            while not self._stopping.is_set():
                try:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
                except TimeoutError:
                    continue
                except OSError:
                    return

    def close(self) -> None:
        self._stopping.set()
        for thread in list(self._threads):
            thread.join(READ_TIMEOUT_S)
        self._listener.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(echo.address) as started:
        yield started


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=READ_TIMEOUT_S)
    sock.settimeout(READ_TIMEOUT_S)
    return sock


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return receive(sock, len(payload))


def is_silent(sock: socket.socket) -> bool:
    """Whether nothing (no byte, no FIN, no RST) arrives for ``SILENCE_S``."""
    sock.settimeout(SILENCE_S)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(READ_TIMEOUT_S)
    return False


def is_reset(sock: socket.socket) -> bool:
    """Whether the peer aborted the connection with an RST (not a FIN, not silence)."""
    try:
        sock.sendall(b"?")
        sock.recv(1)
    except ConnectionResetError:
        return True
    except (TimeoutError, OSError):
        return False
    return False


def is_new_connection_reset(proxy: TcpProxy) -> bool:
    """Whether a new connection is reset: while connecting (the RST beat ``connect()``) or after."""
    try:
        sock = connect(proxy)
    except ConnectionResetError:
        return True
    with sock:
        return is_reset(sock)


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dtr-proxy")]


# --- plain sockets ------------------------------------------------------------------


def test_a_healed_proxy_forwards_bytes_both_ways_and_counts_them(proxy: TcpProxy) -> None:
    payload = bytes(range(256)) * 400
    with connect(proxy) as sock:
        assert round_trip(sock, payload) == payload
    assert proxy.mode is ProxyMode.HEAL
    assert proxy.address == f"127.0.0.1:{proxy.port}"
    assert proxy.connections_accepted == 1
    wait_until(lambda: proxy.bytes_forwarded == 2 * len(payload), 5, "both directions counted")
    assert proxy.bytes_discarded == 0
    wait_until(lambda: proxy.open_connections == 0, 5, "the closed connection to be gone")


def test_a_delay_holds_every_chunk_back_and_keeps_their_order(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"warm") == b"warm"
        proxy.delay(0.2)
        assert proxy.mode is ProxyMode.DELAY and proxy.delay_s == 0.2
        started = time.monotonic()
        for part in (b"one,", b"two,", b"three"):
            sock.sendall(part)
        assert receive(sock, 13) == b"one,two,three"
        assert time.monotonic() - started >= 0.4  # held back once each way
        proxy.heal()
        assert proxy.delay_s == 0.0
        assert round_trip(sock, b"fast") == b"fast"


def test_healing_releases_the_chunks_a_long_delay_holds_at_once(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        proxy.delay(60)
        sock.sendall(b"held")
        assert is_silent(sock)
        proxy.heal()
        assert receive(sock, 4) == b"held"  # within READ_TIMEOUT_S, not 60 s


def test_a_blackhole_swallows_bytes_and_healing_resets_the_connections_that_lost_some(
    proxy: TcpProxy,
) -> None:
    with connect(proxy) as old:
        assert round_trip(old, b"ping") == b"ping"
        proxy.blackhole()
        assert proxy.mode is ProxyMode.BLACKHOLE
        old.sendall(b"lost")
        assert is_silent(old)
        with connect(proxy) as new:  # accepted, then silent too
            new.sendall(b"gone")
            assert is_silent(new)
            wait_until(lambda: proxy.bytes_discarded == 8, 5, "8 bytes swallowed")
            proxy.heal()
            assert is_reset(old) and is_reset(new)
    with connect(proxy) as again:
        assert round_trip(again, b"back") == b"back"
    assert proxy.connections_accepted == 3


def test_a_connection_idle_through_a_blackhole_carries_on_after_it(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"before") == b"before"
        proxy.blackhole()
        proxy.heal()
        assert round_trip(sock, b"after") == b"after"


def test_reset_aborts_existing_connections_and_resets_new_ones_until_healed(
    proxy: TcpProxy,
) -> None:
    with connect(proxy) as old:
        assert round_trip(old, b"ping") == b"ping"
        proxy.reset()
        assert proxy.mode is ProxyMode.RESET
        assert is_reset(old)
    assert is_new_connection_reset(proxy)
    wait_until(lambda: proxy.open_connections == 0, 5, "no connection left open")
    proxy.heal()
    with connect(proxy) as again:
        assert round_trip(again, b"back") == b"back"


def test_drop_new_closes_new_connections_and_keeps_existing_ones(proxy: TcpProxy) -> None:
    with connect(proxy) as old:
        assert round_trip(old, b"ping") == b"ping"
        proxy.drop_new()
        assert proxy.mode is ProxyMode.DROP_NEW
        with connect(proxy) as new:
            assert new.recv(1) == b""  # a FIN at once
        assert round_trip(old, b"still") == b"still"


def test_cutting_off_one_client_silences_it_while_the_others_pass(proxy: TcpProxy) -> None:
    with connect(proxy) as kept, connect(proxy) as cut:
        assert round_trip(kept, b"ping") == b"ping" and round_trip(cut, b"ping") == b"ping"
        cut_port = cut.getsockname()[1]
        proxy.cut_off(lambda peer: peer[1] == cut_port)
        cutting = proxy.is_cutting
        assert cutting and proxy.mode is ProxyMode.HEAL
        cut.sendall(b"lost")
        assert is_silent(cut)
        assert round_trip(kept, b"kept") == b"kept"
        with connect(proxy) as other:  # a new client the filter does not pick
            assert round_trip(other, b"new") == b"new"
        proxy.heal()
        assert not proxy.is_cutting
        assert is_reset(cut)  # it lost bytes: its stream cannot resume
        assert round_trip(kept, b"still") == b"still"


def test_new_connections_of_a_cut_off_client_are_silent_until_healed(proxy: TcpProxy) -> None:
    proxy.cut_off(lambda peer: True)
    with connect(proxy) as sock:
        sock.sendall(b"gone")
        assert is_silent(sock)
        proxy.heal()
        assert is_reset(sock)
    with connect(proxy) as again:
        assert round_trip(again, b"back") == b"back"


def test_a_client_filter_that_fails_cuts_nothing(proxy: TcpProxy) -> None:
    def broken(peer: tuple[str, int]) -> bool:
        raise RuntimeError(f"cannot tell {peer}")

    proxy.cut_off(broken)
    with connect(proxy) as sock:
        assert round_trip(sock, b"ping") == b"ping"


def test_a_mode_set_before_start_holds_from_the_first_connection(echo: EchoServer) -> None:
    proxy = TcpProxy(echo.address)
    proxy.blackhole()
    with proxy, connect(proxy) as sock:
        assert proxy.mode is ProxyMode.BLACKHOLE
        sock.sendall(b"lost")
        assert is_silent(sock)


def test_closing_a_busy_proxy_leaves_no_thread_task_or_connection(echo: EchoServer) -> None:
    before = set(threading.enumerate())
    port = echo.address.rsplit(":", 1)[1]
    proxy = TcpProxy(f"localhost:{port}").start()  # a host name: resolved in an executor
    healthy, held, stranded = connect(proxy), connect(proxy), None
    assert round_trip(healthy, b"ping") == b"ping"
    assert round_trip(held, b"ping") == b"ping"
    proxy.delay(60)
    held.sendall(b"held back")
    proxy.blackhole()
    stranded = connect(proxy)
    stranded.sendall(b"lost")
    wait_until(lambda: proxy.open_connections == 3, 5, "three open connections")
    proxy.close()  # raises ProxyError if a task outlived it
    proxy.close()
    assert proxy.open_connections == 0
    assert not proxy_threads()
    assert {t for t in threading.enumerate() if not t.name.startswith("echo")} <= before
    for sock in (healthy, held, stranded):
        with sock:
            assert is_reset(sock)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=READ_TIMEOUT_S)


def test_a_port_in_use_fails_start_and_leaves_no_thread(echo: EchoServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        proxy = TcpProxy(echo.address, listen_port=taken.getsockname()[1])
        with pytest.raises(ProxyError, match="cannot listen"):
            proxy.start()
    assert not proxy_threads()
    proxy.close()
    with pytest.raises(ProxyError, match="already started"):
        proxy.start()


@pytest.mark.parametrize("target", ["nohost", ":80", "host:0", "host:65536", "host:http"])
def test_a_target_that_is_not_host_port_is_refused(target: str) -> None:
    with pytest.raises(InvalidArgument, match="HOST:PORT"):
        TcpProxy(target)


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_a_listen_port_out_of_range_is_refused(port: int) -> None:
    with pytest.raises(InvalidArgument, match="listen_port"):
        TcpProxy("127.0.0.1:1", listen_port=port)


@pytest.mark.parametrize("seconds", [-0.1, math.nan, math.inf, 3601.0])
def test_a_delay_that_cannot_work_is_refused(seconds: float) -> None:
    with pytest.raises(InvalidArgument, match="delay"):
        TcpProxy("127.0.0.1:1").delay(seconds)


# --- gRPC (HTTP/2) ------------------------------------------------------------------


@pytest.fixture
def health_server() -> Iterator[str]:
    """The standard gRPC health service on a free loopback port (overall: SERVING)."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None).wait(READ_TIMEOUT_S)


@pytest.fixture
def health_stub(health_server: str) -> Iterator[tuple[TcpProxy, health_pb2_grpc.HealthStub]]:
    with (
        TcpProxy(health_server) as proxy,
        grpc.insecure_channel(proxy.address, options=_FAST_RECONNECT) as channel,
    ):
        yield proxy, health_pb2_grpc.HealthStub(channel)


def check(stub: health_pb2_grpc.HealthStub, timeout_s: float) -> grpc.StatusCode:
    """The status of one health check through the proxy: OK, or the failure's code."""
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.RpcError as err:
        return err.code()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return grpc.StatusCode.OK


def test_grpc_through_a_blackhole_times_out_and_works_again_once_healed(
    health_stub: tuple[TcpProxy, health_pb2_grpc.HealthStub],
) -> None:
    proxy, stub = health_stub
    assert check(stub, READ_TIMEOUT_S) is grpc.StatusCode.OK
    proxy.blackhole()
    failed = check(stub, 0.5)
    assert failed in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert proxy.bytes_discarded > 0
    proxy.heal()
    wait_until(lambda: check(stub, 0.5) is grpc.StatusCode.OK, 10, "calls to work again")


def test_grpc_after_a_reset_is_unavailable_and_works_again_once_healed(
    health_stub: tuple[TcpProxy, health_pb2_grpc.HealthStub],
) -> None:
    proxy, stub = health_stub
    assert check(stub, READ_TIMEOUT_S) is grpc.StatusCode.OK
    proxy.reset()
    assert check(stub, 2.0) is grpc.StatusCode.UNAVAILABLE
    proxy.heal()
    wait_until(lambda: check(stub, 0.5) is grpc.StatusCode.OK, 10, "calls to work again")


def test_grpc_through_a_delay_works_and_takes_at_least_the_delay(
    health_stub: tuple[TcpProxy, health_pb2_grpc.HealthStub],
) -> None:
    proxy, stub = health_stub
    assert check(stub, READ_TIMEOUT_S) is grpc.StatusCode.OK
    proxy.delay(0.2)
    started = time.monotonic()
    assert check(stub, READ_TIMEOUT_S) is grpc.StatusCode.OK
    assert time.monotonic() - started >= 0.4
