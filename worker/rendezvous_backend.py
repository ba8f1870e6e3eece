"""``DtrRendezvousBackend``: torch elastic's rendezvous state, kept by the dtr leader.

torch's ``DynamicRendezvousHandler`` keeps everything it knows about a
rendezvous (participants, wait list, round, heartbeats) in one pickled blob
and changes it only by compare-and-set against a fencing token. Here the blob
is one etcd key behind the leader (``GetRendezvousState`` /
``SetRendezvousState``) and the token is that key's mod_revision, so the
state survives any agent and any coordinator replica.

Errors leave as torch's types, which its handler treats as rendezvous
failures (a keep-alive thread logs them and carries on; anything else would
kill it): ``RendezvousConnectionError`` when no coordinator answered within
the retry budget, ``RendezvousStateError`` for a state too big to store,
``RendezvousError`` for anything else dtr refused (wrong job, credentials).

Importing this module imports torch's rendezvous package, which loads the
``torchrun.handlers`` entry points; that is why the entry point lives in the
torch-free ``rendezvous`` module (see there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.distributed.elastic.rendezvous.api import (
    RendezvousConnectionError,
    RendezvousError,
    RendezvousStateError,
)
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import RendezvousBackend, Token

from dtr.errors import CoordinatorUnavailable, DtrError
from dtr.keys import MAX_RENDEZVOUS_VALUE_BYTES, validate_name
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy

from .client import CoordinatorClient

#: The backend's name: torchrun's ``--rdzv-backend`` and the entry point's.
BACKEND_NAME = "dtr"


class DtrRendezvousBackend(RendezvousBackend):
    """torch's rendezvous state in etcd: a compare-and-set on the key's mod_revision.

    The token is that revision as an ``int``; torch treats it as opaque. A
    token that is not one (handed over from another backend) cannot match,
    so it is answered like a stale one: the current state, ``has_set`` False,
    as torch's c10d backend does.
    """

    def __init__(
        self, client: CoordinatorClient, rendezvous_id: str, *, policy: RetryPolicy | None = None
    ) -> None:
        self._client = client
        self.rendezvous_id = validate_name("rdzv_id", rendezvous_id)
        self._policy = policy

    @property
    def name(self) -> str:
        return BACKEND_NAME

    def get_state(self) -> tuple[bytes, Token] | None:
        response: pb.GetRendezvousStateResponse = self._call(
            "GetRendezvousState",
            lambda: pb.GetRendezvousStateRequest(rendezvous_id=self.rendezvous_id),
            mutating=False,
        )
        return (response.state, int(response.token)) if response.present else None

    def life(self) -> int:
        """The rendezvous's life: its state key's etcd create_revision (0: no state).

        A run that reuses the id after the keys expired gets a larger one, so a
        rank's round is told apart from the same number in an earlier run.
        """
        response: pb.GetRendezvousStateResponse = self._call(
            "GetRendezvousState",
            lambda: pb.GetRendezvousStateRequest(rendezvous_id=self.rendezvous_id),
            mutating=False,
        )
        return int(response.created)

    def set_state(
        self, state: bytes, token: Token | None = None
    ) -> tuple[bytes, Token, bool] | None:
        if len(state) > MAX_RENDEZVOUS_VALUE_BYTES:
            raise RendezvousStateError(
                f"rendezvous {self.rendezvous_id!r}: the rendezvous state is {len(state):,} "
                f"bytes; the limit is {MAX_RENDEZVOUS_VALUE_BYTES:,} (etcd's request limit)"
            )
        if token is not None and not _is_revision(token):
            current = self.get_state()
            return None if current is None else (*current, False)

        def build() -> pb.SetRendezvousStateRequest:
            request = pb.SetRendezvousStateRequest(rendezvous_id=self.rendezvous_id, state=state)
            if token is not None:
                request.token = token
            return request

        response: pb.SetRendezvousStateResponse = self._call(
            "SetRendezvousState", build, mutating=True
        )
        if not response.present:
            return None
        return response.state, int(response.token), response.has_set

    def _call(self, method: str, build: Callable[[], Any], *, mutating: bool) -> Any:
        """One RPC, with dtr's errors turned into the ones torch's handler expects."""
        operation = f"rendezvous {self.rendezvous_id!r}: {method}"
        try:
            return self._client.call(
                method, build, operation=operation, mutating=mutating, policy=self._policy
            )
        except CoordinatorUnavailable as err:
            raise RendezvousConnectionError(
                f"{err} [--rdzv-endpoint {','.join(self._client.addresses)}, "
                f"job {self._client.job!r}]"
            ) from err
        except DtrError as err:
            raise RendezvousError(f"{operation}: {err}") from err

    def __repr__(self) -> str:
        return f"DtrRendezvousBackend({self.rendezvous_id!r}, job={self._client.job!r})"


def _is_revision(token: object) -> bool:
    return isinstance(token, int) and not isinstance(token, bool) and 0 <= token < 2**64
