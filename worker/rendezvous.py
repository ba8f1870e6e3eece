"""``torchrun --rdzv-backend=dtr``: torch elastic's rendezvous kept by the dtr coordinators.

torch's ``DynamicRendezvousHandler`` needs a backend holding one opaque state
blob under a compare-and-set token, and a c10d store its agents share. Both
live in etcd behind the leader (``DtrRendezvousBackend`` in
``rendezvous_backend``, ``DtrStore`` in ``rendezvous_store``), so a
rendezvous survives the loss of any agent or coordinator replica, and both go
through one ``CoordinatorClient``: the same leader following, retries, TLS
and bearer token as a training ``Worker``.

``torchrun`` finds this module through the ``torchrun.handlers`` entry point
(``handler_creator``) and calls ``create_rdzv_handler`` with its flags::

    torchrun --rdzv-backend=dtr --rdzv-endpoint=HOST:PORT,HOST:PORT --rdzv-id=RUN \\
        --rdzv-conf job=NAME,connect_timeout=30 ...

This module imports no torch at its top, on purpose: torch's rendezvous
package loads the entry points *while it is being imported*, so an entry
point in a module that imports that package would, whenever the dtr module
came first, be found half-initialised and skipped with a warning. Here the
torch parts are imported when first used (``create_rdzv_handler``, or the
names ``DtrRendezvousBackend`` / ``DtrStore``), by which time torch's package
is complete. ``import dtr.worker`` does not import this module at all.

Bad flags are ``InvalidArgument`` (a ``ValueError``) naming the flag, raised
before any network traffic.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtr.errors import InvalidArgument
from dtr.keys import validate_name
from dtr.retry import RetryPolicy
from dtr.security import TlsFiles, read_token_file

from .client import CoordinatorClient, parse_coordinators, resolve_security
from .rendezvous_round import LIFE_ENV, ROUND_ENV

if TYPE_CHECKING:
    from torch.distributed.elastic.rendezvous.api import RendezvousHandler, RendezvousParameters

    from .rendezvous_backend import DtrRendezvousBackend
    from .rendezvous_store import DtrStore

_log = logging.getLogger(__name__)
#: torch's switch for sharing the agent's TCPStore with the ranks (see create_rdzv_handler).
_NO_SHARED_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"

__all__ = [
    "DtrRendezvousBackend",
    "DtrStore",
    "RendezvousConfig",
    "create_rdzv_handler",
    "handler_creator",
]

#: Retry budget of one backend or store call while no coordinator answers:
#: long enough to ride out a leader failover (a lease TTL and an election).
DEFAULT_CONNECT_TIMEOUT_S = 30.0
#: How long a store read waits for a key by default (c10d's ``read_timeout``).
DEFAULT_READ_TIMEOUT_S = 60.0
_ENDPOINT_FORM = (
    "HOST:PORT[,HOST:PORT...] of the dtr coordinators, e.g. '10.0.0.1:50051,10.0.0.2:50051'"
)
_NOT_HOSTNAME = re.compile(r"[^A-Za-z0-9._-]")
_LAZY = {"DtrRendezvousBackend": "rendezvous_backend", "DtrStore": "rendezvous_store"}


# -- torchrun's flags -------------------------------------------------------------


@dataclass(frozen=True)
class RendezvousConfig:
    """What ``torchrun``'s ``--rdzv-*`` flags ask of dtr, checked before any traffic.

    ``--rdzv-conf`` keys: ``job`` (else ``$DTR_JOB``, else ``default``),
    ``connect_timeout`` and ``read_timeout`` (seconds), and ``tls_ca``,
    ``tls_cert``, ``tls_key``, ``token_file`` (else the ``DTR_TLS_*`` /
    ``DTR_TOKEN_FILE`` variables a ``Worker`` reads). Other keys are torch's.
    """

    coordinators: tuple[str, ...]
    rendezvous_id: str
    job: str
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    tls: TlsFiles | None = None
    token_file: str | None = None

    @classmethod
    def from_parameters(
        cls, params: RendezvousParameters, environ: Mapping[str, str] = os.environ
    ) -> RendezvousConfig:
        conf = params.config
        return cls(
            coordinators=_endpoint(params.endpoint),
            rendezvous_id=validate_name("--rdzv-id", params.run_id),
            job=validate_name(
                "--rdzv-conf job", conf.get("job") or environ.get("DTR_JOB") or "default"
            ),
            connect_timeout_s=_seconds(conf, "connect_timeout", DEFAULT_CONNECT_TIMEOUT_S),
            read_timeout_s=_seconds(conf, "read_timeout", DEFAULT_READ_TIMEOUT_S),
            tls=_tls(conf),
            token_file=_text(conf, "token_file"),
        )


def _endpoint(value: object) -> tuple[str, ...]:
    if not isinstance(value, str) or not value.strip() or "://" in value:
        raise InvalidArgument(f"--rdzv-endpoint {value!r}: expected {_ENDPOINT_FORM}")
    try:
        return parse_coordinators(value)
    except InvalidArgument as err:
        raise InvalidArgument(
            f"--rdzv-endpoint {value!r}: expected {_ENDPOINT_FORM} ({err})"
        ) from err


def _seconds(conf: Mapping[str, Any], key: str, default: float) -> float:
    raw = conf.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgument(f"--rdzv-conf {key}={raw!r}: expected a number of seconds > 0")
    return value


def _text(conf: Mapping[str, Any], key: str) -> str | None:
    raw = conf.get(key)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise InvalidArgument(f"--rdzv-conf {key}={raw!r}: expected a file path")
    return raw


def _tls(conf: Mapping[str, Any]) -> TlsFiles | None:
    ca, cert, key = (_text(conf, k) for k in ("tls_ca", "tls_cert", "tls_key"))
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise InvalidArgument(
            "--rdzv-conf: give tls_cert and tls_key together, or neither "
            f"(got tls_cert={cert!r}, tls_key={key!r})"
        )
    return TlsFiles(*(Path(f) if f else None for f in (ca, cert, key)))


# -- the handler torchrun asks for -------------------------------------------------


def create_rdzv_handler(params: RendezvousParameters) -> RendezvousHandler:
    """torch's ``DynamicRendezvousHandler`` over dtr, from ``torchrun``'s flags.

    One ``CoordinatorClient`` serves the backend and the store. Raises
    ``InvalidArgument`` naming the flag (a bad file included) before any
    network traffic; the coordinators are first called by ``next_rendezvous``.
    """
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous

    from .rendezvous_backend import DtrRendezvousBackend
    from .rendezvous_store import DtrStore

    config = RendezvousConfig.from_parameters(params)
    # torch 2.13 lets the ranks of every round share one TCPStore hosted by the
    # rank-0 agent, with no per-attempt prefix: the ranks of a restarted group
    # read their predecessors' gloo addresses and fail "Connection refused".
    # Without sharing, each round's rank 0 hosts a fresh store. A user who
    # sets the variable keeps their choice.
    os.environ.setdefault(_NO_SHARED_STORE, "1")
    token = None
    if config.token_file is not None:
        token = read_token_file(config.token_file, "--rdzv-conf token_file")
    client = CoordinatorClient(
        config.coordinators,
        job=config.job,
        caller_id=_caller_id(),
        policy=RetryPolicy(deadline_s=config.connect_timeout_s),
        security=resolve_security(config.tls, token),
    )
    timeout = timedelta(seconds=config.read_timeout_s)
    store = DtrStore(client, config.rendezvous_id, timeout=timeout)
    backend = DtrRendezvousBackend(client, config.rendezvous_id)
    handler = dynamic_rendezvous.create_handler(store, backend, params)
    # torch's handler has no close(); the channels go when the handler does.
    weakref.finalize(handler, client.close)
    tell_ranks_the_round(handler, backend.life)
    return handler


def tell_ranks_the_round(handler: Any, life: Callable[[], int]) -> None:
    """After every completed round, put its number where the ranks will inherit it.

    torchrun starts the ranks after ``next_rendezvous`` returns, from the
    agent's environment, so ``DTR_RDZV_ROUND`` set here reaches every rank of
    the round (``rendezvous_round.py``: their ``Worker`` joins the round as
    one), with the rendezvous's life (``DTR_RDZV_LIFE``: one more call per
    round). torch does not hand the round to the agent, so it is read from
    the handler's state holder (torch 2.13's ``_state_holder.state.round``);
    if a torch version lacks it, the variables are removed and the ranks
    register one by one, as under any other backend.
    """
    inner = handler.next_rendezvous

    def next_rendezvous() -> Any:
        info = inner()
        state = getattr(getattr(handler, "_state_holder", None), "state", None)
        round_ = getattr(state, "round", None)
        if isinstance(round_, int) and not isinstance(round_, bool):
            os.environ[ROUND_ENV] = str(round_)
            os.environ[LIFE_ENV] = str(life())
        else:
            os.environ.pop(ROUND_ENV, None)
            os.environ.pop(LIFE_ENV, None)
            _log.warning("torch's rendezvous state has no round; ranks register one by one")
        return info

    handler.next_rendezvous = next_rendezvous


def handler_creator() -> Callable[[RendezvousParameters], RendezvousHandler]:
    """The ``torchrun.handlers`` entry point: torch registers what this returns as ``dtr``."""
    return create_rdzv_handler


def _caller_id() -> str:
    host = _NOT_HOSTNAME.sub("-", socket.gethostname()).lstrip("._-")[:64] or "host"
    return f"torchrun-{host}-{os.getpid()}"


def __getattr__(name: str) -> Any:
    """Import the torch-using classes on first use (see the module docstring)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__package__}.{module}"), name)
