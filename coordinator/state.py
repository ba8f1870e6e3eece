"""The job's state as etcd holds it, read as one frozen snapshot.

``ClusterView`` is what the leader loop and the servicer decide from (STYLE
rule 3): membership, the membership generation and the datasets, all read in
one etcd transaction so they belong to one revision. The records are encoded
as JSON, readable with ``etcdctl get --prefix``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType

from dtr.keys import JobKeys
from dtr.store import EtcdStore, Get
from dtr.store_types import KeyValue


@dataclass(frozen=True)
class MemberRecord:
    """One worker as etcd knows it; dead members stay, marked, until they re-register."""

    worker_id: str
    capacity: float
    alive: bool
    incarnation: int
    host: str = ""
    pid: int = 0
    #: A torchrun rank's rendezvous id, round and rendezvous life (``rounds.py``).
    rdzv_id: str = ""
    rdzv_round: int = 0
    rdzv_life: int = 0

    def encode(self) -> bytes:
        """JSON; the round fields only when set, so records of plain workers (and
        records written before rounds existed) encode to the bytes etcd holds,
        which every plan's compare depends on."""
        return self._encoded

    @functools.cached_property
    def _encoded(self) -> bytes:
        # Once per record (records never change): every plan encodes each member it
        # compares, and dataclasses.asdict was a fifth of planning a fleet's writes.
        data: dict[str, object] = {
            "worker_id": self.worker_id,
            "capacity": self.capacity,
            "alive": self.alive,
            "incarnation": self.incarnation,
            "host": self.host,
            "pid": self.pid,
        }
        if self.rdzv_id:
            data.update(rdzv_id=self.rdzv_id, rdzv_round=self.rdzv_round, rdzv_life=self.rdzv_life)
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def decode(cls, value: bytes) -> MemberRecord:
        data = json.loads(value)
        return cls(
            worker_id=str(data["worker_id"]),
            capacity=float(data["capacity"]),
            alive=bool(data["alive"]),
            incarnation=int(data["incarnation"]),
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
            rdzv_id=str(data.get("rdzv_id", "")),
            rdzv_round=int(data.get("rdzv_round", 0)),
            rdzv_life=int(data.get("rdzv_life", 0)),
        )


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset and the ring parameters every replica must assign it with."""

    name: str
    num_shards: int
    vnodes: int
    load_factor: float | None

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, value: bytes) -> DatasetRecord:
        data = json.loads(value)
        load_factor = data.get("load_factor")
        return cls(
            name=str(data["name"]),
            num_shards=int(data["num_shards"]),
            vnodes=int(data["vnodes"]),
            load_factor=None if load_factor is None else float(load_factor),
        )


def _frozen(mapping: Mapping[str, object] | None = None) -> Mapping[str, object]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class ClusterView:
    """Membership, generation and datasets at one etcd revision."""

    generation: int = 0
    members: Mapping[str, MemberRecord] = field(default_factory=_frozen)  # type: ignore[arg-type]
    datasets: Mapping[str, DatasetRecord] = field(default_factory=_frozen)  # type: ignore[arg-type]
    revision: int = 0
    #: "<etcd cluster id>/<job uid>"; empty until the first leader created the uid.
    job_life: str = ""

    @functools.cached_property
    def _live(self) -> Mapping[str, float]:
        return MappingProxyType({w: m.capacity for w, m in sorted(self.members.items()) if m.alive})

    def live_members(self) -> Mapping[str, float]:
        """Live member id → capacity: the input of ``dtr.ring.assign_shards``.

        Computed once per view (views never change): it is on the path of every
        GetShards and barrier arrival, and rebuilding it for 1,000 members per
        call was half the leader's CPU (benchmarks/results/coordinator.md).
        """
        return self._live

    def replace(
        self,
        *,
        generation: int | None = None,
        members: Mapping[str, MemberRecord] | None = None,
        datasets: Mapping[str, DatasetRecord] | None = None,
        revision: int | None = None,
    ) -> ClusterView:
        """A copy with some parts replaced (what the view becomes after a write).

        Parts not replaced are shared, not copied: a view's mappings are
        read-only proxies of dicts only the view holds, and copying a fleet's
        members on every write (the revision after each) was O(members) a write.
        """
        return ClusterView(
            generation=self.generation if generation is None else generation,
            members=self.members if members is None else MappingProxyType(dict(members)),
            datasets=self.datasets if datasets is None else MappingProxyType(dict(datasets)),
            revision=self.revision if revision is None else revision,
            job_life=self.job_life,
        )


def view_reads(keys: JobKeys) -> list[Get]:
    """The reads of one view, to run in one transaction."""
    return [
        Get(keys.generation),
        Get(keys.members_prefix, prefix=True),
        Get(keys.datasets_prefix, prefix=True),
        Get(keys.job_life),
    ]


def job_life_of(cluster_id: int, uid: bytes) -> str:
    """The job life as workers see it: which etcd cluster, which creation of the job."""
    return f"{cluster_id:016x}/{uid.decode()}"


def view_from_reads(results: tuple[object, ...], revision: int, cluster_id: int = 0) -> ClusterView:
    """Decode what ``view_reads`` returned."""
    generation_kvs, member_kvs, dataset_kvs, life_kvs = (_kvs(r) for r in results)
    generation = int(generation_kvs[0].value) if generation_kvs else 0
    members = {m.worker_id: m for m in (MemberRecord.decode(kv.value) for kv in member_kvs)}
    datasets = {d.name: d for d in (DatasetRecord.decode(kv.value) for kv in dataset_kvs)}
    return ClusterView(
        generation=generation,
        members=MappingProxyType(members),
        datasets=MappingProxyType(datasets),
        revision=revision,
        job_life=job_life_of(cluster_id, life_kvs[0].value) if life_kvs else "",
    )


def load_view(store: EtcdStore, keys: JobKeys) -> ClusterView:
    """Read the view from etcd in one transaction (one revision)."""
    result = store.txn([], view_reads(keys))
    return view_from_reads(result.results, result.revision, result.cluster_id)


def _kvs(result: object) -> tuple[KeyValue, ...]:
    if not isinstance(result, tuple):
        raise TypeError(f"expected the keys a Get read, got {result!r}")
    return result
