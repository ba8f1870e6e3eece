"""The etcd key layout: the only place key strings are built.

Everything a job keeps in etcd lives under one prefix,
``<root>/jobs/<job>/``, so a job can be listed, watched, backed up or wiped
as a unit, and several jobs share one etcd without seeing each other. Names
that become key segments are validated here, so no caller can smuggle a
``/`` into a key and write outside its subtree.

Layout (``<J>`` = ``<root>/jobs/<job>``)::

    <J>/election/<lease id, 16 hex>        candidate keys, bound to each replica's lease
    <J>/replicas/<replica id>              replica address, bound to its lease
    <J>/members/<worker id>                membership record (capacity, alive, incarnation)
    <J>/generation                         membership generation counter
    <J>/datasets/<dataset>                 num_shards and assignment parameters
    <J>/barriers/<barrier>/state           barrier round, expected members, release
    <J>/barriers/<barrier>/arrivals/<worker id>
    <J>/checkpoints/steps/<step, 20 digits>/<worker id>   commit records
    <J>/checkpoints/complete/<step, 20 digits>   a complete step: generation, member count
    <J>/checkpoints/latest                 the latest complete step
    <J>/life                               the job life's uid (written by its first leader)
    <J>/writer                             replica and term of the latest leader transaction
    <J>/rendezvous/<rdzv id>/state         torchrun's rendezvous state (compare-and-set)
    <J>/rendezvous/<rdzv id>/store/<hex>   its agents' store, keys hex-encoded
    <J>/rendezvous/<rdzv id>/adds/<request id>   the answer of one Store.add, for retries
    <J>/rendezvous/<rdzv id>/lease         the id of the idle-expiry lease its keys ride on

Steps are zero-padded so that etcd's byte order is numeric order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dtr.errors import InvalidArgument

DEFAULT_ROOT = "/dtr/v1"

# Ids and names become single key segments: no "/", no whitespace, no
# control characters, bounded length. ":" and "@" allow host:port or
# user@host style worker ids.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_STEP_DIGITS = 20

#: torchrun rendezvous values (the state blob, each store value, and all of
#: one call together) stay under etcd's default request limit of 1.5 MiB.
MAX_RENDEZVOUS_VALUE_BYTES = 1024 * 1024
#: torch's store keys are free text ("torch.rendezvous.<id>.<round>/MASTER_ADDR").
MAX_STORE_KEY_CHARS = 512
#: Keys per store call, so one call stays one transaction below etcd's 128 ops.
MAX_STORE_ENTRIES = 64


def validate_name(field: str, value: object) -> str:
    """Return ``value`` if it can be one key segment, else raise naming ``field``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be 1-128 characters of letters, digits, '.', '_', ':', '@' or '-', "
            f"starting with a letter or digit; got {value!r}"
        )
    return value


def validate_step(step: object) -> int:
    """Return ``step`` if it is a checkpoint step etcd can order, else raise."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 10**_STEP_DIGITS:
        raise InvalidArgument(f"step must be an integer in [0, 10**{_STEP_DIGITS}); got {step!r}")
    return step


def prefix_range_end(prefix: str) -> str:
    """The first key after every key that starts with ``prefix`` (etcd's range_end).

    Keys here are ASCII, so incrementing the last character is enough; an
    empty prefix means "every key", which etcd spells as range_end "\\0".
    """
    if not prefix:
        return "\0"
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True)
class JobKeys:
    """Keys of one job. ``root`` lets tests and co-tenants use their own subtree."""

    job: str
    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        validate_name("job", self.job)
        if not self.root.startswith("/") or self.root.endswith("/"):
            raise InvalidArgument(
                f"root must start with '/' and not end with '/'; got {self.root!r}"
            )

    @property
    def prefix(self) -> str:
        """Every key of this job starts with this."""
        return f"{self.root}/jobs/{self.job}/"

    # -- leadership ------------------------------------------------------------
    @property
    def election_prefix(self) -> str:
        return f"{self.prefix}election/"

    def candidate(self, lease_id: int) -> str:
        """A replica's candidate key, named by its lease so it is unique per replica."""
        if lease_id <= 0:
            raise InvalidArgument(f"lease_id must be positive; got {lease_id}")
        return f"{self.election_prefix}{lease_id:016x}"

    @property
    def replicas_prefix(self) -> str:
        return f"{self.prefix}replicas/"

    def replica(self, replica_id: str) -> str:
        return self.replicas_prefix + validate_name("replica_id", replica_id)

    # -- membership ------------------------------------------------------------
    @property
    def members_prefix(self) -> str:
        return f"{self.prefix}members/"

    def member(self, worker_id: str) -> str:
        return self.members_prefix + validate_name("worker_id", worker_id)

    @property
    def generation(self) -> str:
        return f"{self.prefix}generation"

    @property
    def writer(self) -> str:
        """Who wrote last: every leader transaction puts its replica and term here.

        One put per transaction, so etcd's own history names the writer and
        the fencing token of every leader write (DESIGN §5 invariant 1); the
        chaos harness audits that record (``chaos/checker_record.py``).
        """
        return f"{self.prefix}writer"

    @property
    def job_life(self) -> str:
        """The job's life: a uid the first leader writes, fenced, before serving (DESIGN §5)."""
        return f"{self.prefix}life"

    # -- datasets --------------------------------------------------------------
    @property
    def datasets_prefix(self) -> str:
        return f"{self.prefix}datasets/"

    def dataset(self, name: str) -> str:
        return self.datasets_prefix + validate_name("dataset", name)

    # -- barriers --------------------------------------------------------------
    @property
    def barriers_prefix(self) -> str:
        return f"{self.prefix}barriers/"

    def barrier_prefix(self, name: str) -> str:
        return f"{self.barriers_prefix}{validate_name('barrier', name)}/"

    def barrier_state(self, name: str) -> str:
        return f"{self.barrier_prefix(name)}state"

    def barrier_arrivals_prefix(self, name: str) -> str:
        return f"{self.barrier_prefix(name)}arrivals/"

    def barrier_arrival(self, name: str, worker_id: str) -> str:
        return self.barrier_arrivals_prefix(name) + validate_name("worker_id", worker_id)

    # -- checkpoints -----------------------------------------------------------
    @property
    def checkpoint_steps_prefix(self) -> str:
        return f"{self.prefix}checkpoints/steps/"

    def checkpoint_step_prefix(self, step: int) -> str:
        return f"{self.checkpoint_steps_prefix}{validate_step(step):0{_STEP_DIGITS}d}/"

    def checkpoint_commit(self, step: int, worker_id: str) -> str:
        return self.checkpoint_step_prefix(step) + validate_name("worker_id", worker_id)

    @property
    def checkpoint_complete_prefix(self) -> str:
        return f"{self.prefix}checkpoints/complete/"

    def checkpoint_complete(self, step: int) -> str:
        return f"{self.checkpoint_complete_prefix}{validate_step(step):0{_STEP_DIGITS}d}"

    @property
    def latest_checkpoint(self) -> str:
        return f"{self.prefix}checkpoints/latest"

    # -- torchrun rendezvous ----------------------------------------------------
    def rendezvous_prefix(self, rendezvous_id: str) -> str:
        return f"{self.prefix}rendezvous/{validate_name('rdzv_id', rendezvous_id)}/"

    def rendezvous_state(self, rendezvous_id: str) -> str:
        return f"{self.rendezvous_prefix(rendezvous_id)}state"

    def rendezvous_store(self, rendezvous_id: str, key: str) -> str:
        """A store key, hex-encoded: torch's keys hold '/' and any other character."""
        return f"{self.rendezvous_prefix(rendezvous_id)}store/{key.encode().hex()}"

    def rendezvous_add(self, rendezvous_id: str, request_id: str) -> str:
        request = validate_name("request_id", request_id)
        return f"{self.rendezvous_prefix(rendezvous_id)}adds/{request}"

    # -- parsing ---------------------------------------------------------------
    def last_segment(self, key: str, prefix: str) -> str:
        """The name in ``key`` right below ``prefix`` (for listing members, barriers…)."""
        if not key.startswith(prefix):
            raise InvalidArgument(f"key {key!r} is not under {prefix!r}")
        return key[len(prefix) :].split("/", 1)[0]

    def step_of(self, key: str) -> int:
        """The checkpoint step encoded in a commit key."""
        return int(self.last_segment(key, self.checkpoint_steps_prefix))
