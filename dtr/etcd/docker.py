"""etcd in a Docker container (testcontainers), for machines with an engine but no etcd.

``DockerEtcd`` offers the part of ``EtcdCluster``'s interface that clients
need (``endpoints``, ``client_urls``, ``version``, health, ``stop``); member
faults (stop, kill, restart, pause) raise ``EtcdError``: fault tests need
process etcd. The client port is published on 127.0.0.1 only, which assumes
a local engine. ``testcontainers`` (the ``dtr[docker]`` extra) is imported
only when a container is asked for.
"""

from __future__ import annotations

import json
import time
import urllib.request
from types import TracebackType
from typing import TYPE_CHECKING, cast

from dtr.errors import EtcdError

from .member import probe_health, wait_until
from .ports import LOOPBACK

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

DEFAULT_IMAGE = "gcr.io/etcd-development/etcd:v3.5.17"
_CLIENT_PORT = 2379
_COMMAND = [
    "/usr/local/bin/etcd",
    "--name=etcd0",
    "--data-dir=/etcd-data",
    f"--listen-client-urls=http://0.0.0.0:{_CLIENT_PORT}",
    f"--advertise-client-urls=http://127.0.0.1:{_CLIENT_PORT}",
    "--listen-peer-urls=http://127.0.0.1:2380",
    "--initial-advertise-peer-urls=http://127.0.0.1:2380",
    "--initial-cluster=etcd0=http://127.0.0.1:2380",
    "--logger=zap",
    "--log-level=warn",
]


def docker_unavailable_reason() -> str | None:
    """Why no container can be started here, or None when an engine answers a ping."""
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError as err:
        return f"testcontainers is not installed (pip install 'dtr[docker]'): {err}"
    try:
        client = DockerClient()
        client.client.ping()
        client.client.close()
    except Exception as err:  # docker.errors.DockerException, requests' errors, ...
        return str(err) or type(err).__name__
    return None


class DockerEtcd:
    """A single-member etcd running in a container, stopped and removed on ``stop()``."""

    def __init__(self, container: DockerContainer, port: int, version: str) -> None:
        self._container: DockerContainer | None = container
        self._port = port
        self.version = version

    @classmethod
    def start(cls, *, image: str = DEFAULT_IMAGE, startup_timeout_s: float = 120.0) -> DockerEtcd:
        """Run ``image`` and wait until etcd is healthy (image pulls count against the timeout)."""
        reason = docker_unavailable_reason()
        if reason is not None:
            raise EtcdError(f"no Docker engine is reachable: {reason}")
        from testcontainers.core.container import DockerContainer

        container = DockerContainer(image).with_command(_COMMAND)
        # docker-py reads ("127.0.0.1", None) as "a random port on loopback only".
        cast("dict[str, object]", container.ports)[f"{_CLIENT_PORT}/tcp"] = (LOOPBACK, None)
        try:
            container.start()
        except Exception as err:  # docker's API, pull and start errors
            raise EtcdError(f"cannot start a container from {image}: {err}") from err
        try:
            port = int(container.get_exposed_port(_CLIENT_PORT))
            url = f"http://{LOOPBACK}:{port}"
            deadline = time.monotonic() + startup_timeout_s
            if not wait_until(lambda: probe_health(url) or _has_exited(container), deadline):
                raise EtcdError(f"etcd in {image} was not healthy within {startup_timeout_s}s")
            if _has_exited(container):
                raise EtcdError(f"etcd in {image} exited: {_log_tail(container)}")
            return cls(container, port, _server_version(url))
        except BaseException:
            container.stop()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [f"{LOOPBACK}:{self._port}"]

    @property
    def client_urls(self) -> list[str]:
        return [f"http://{endpoint}" for endpoint in self.endpoints]

    def is_member_healthy(self, index: int) -> bool:
        return index == 0 and self._container is not None and probe_health(self.client_urls[0])

    def is_healthy(self) -> bool:
        return self.is_member_healthy(0)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        if not wait_until(self.is_healthy, time.monotonic() + timeout_s):
            raise EtcdError(f"etcd in Docker was not healthy within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Remove the container (forcefully: its data is scratch). Idempotent."""
        del timeout_s  # docker's forced removal does not wait
        if self._container is not None:
            self._container.stop()
            self._container = None

    def _unsupported(self, what: str) -> EtcdError:
        return EtcdError(f"{what} is not supported for etcd in Docker; use process etcd")

    def stop_member(self, index: int, timeout_s: float = 10.0) -> None:
        raise self._unsupported("stop_member")

    def kill_member(self, index: int) -> None:
        raise self._unsupported("kill_member")

    def start_member(
        self, index: int, *, timeout_s: float = 30.0, wait_healthy: bool = True
    ) -> None:
        raise self._unsupported("start_member")

    def pause_member(self, index: int) -> None:
        raise self._unsupported("pause_member")

    def resume_member(self, index: int) -> None:
        raise self._unsupported("resume_member")

    def __enter__(self) -> DockerEtcd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _has_exited(container: DockerContainer) -> bool:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    return str(wrapped.status) in ("exited", "dead")


def _log_tail(container: DockerContainer) -> str:
    stdout, stderr = container.get_logs()
    lines = (stdout + stderr).decode("utf-8", "replace").splitlines()
    return " | ".join(lines[-5:]) or "no log output"


def _server_version(client_url: str) -> str:
    """etcd's own report of its version (``GET /version``)."""
    try:
        with urllib.request.urlopen(f"{client_url}/version", timeout=5.0) as response:
            return str(json.loads(response.read().decode("utf-8"))["etcdserver"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EtcdError(f"cannot read etcd's version from {client_url}/version: {err}") from err
