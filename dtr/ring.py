"""Consistent hashing: which member (worker) owns which shard of a dataset.

Everything here is a pure function of its arguments. The coordinator and every
replica must compute the same assignment from the same membership, in any
process, on any platform, so positions come from a stable 64-bit hash
(blake2b for names, a splitmix64 mixer in numpy ``uint64`` for the many
virtual-node and shard positions) and never from Python's salted ``hash()``.
Ties are broken by member id, never by the order of the ``members`` mapping.

The ring holds ``vnodes`` virtual nodes per unit of capacity. A shard belongs
to the member of the first virtual node clockwise from it; all shards are
placed in one ``searchsorted`` pass. Because a member's virtual nodes depend
only on its own id and capacity, a leave moves exactly the leaver's shards and
a join moves exactly the shards the joiner takes.

With ``load_factor`` set, loads are bounded as in Mirrokni, Thorup and
Zadimoghaddam, "Consistent Hashing with Bounded Loads" (2018): no member holds
more than ``ceil(load_factor * num_shards * capacity / total_capacity)``. The
sequential algorithm of the paper is replaced by rounds that run vectorized:
every unplaced shard proposes to the owner of its next virtual node clockwise
that still has room, and each member accepts proposals up to its room, closest
shard first. Accepted shards are never evicted by later rounds. Caps are
rounded at a per-(member, dataset) offset so that equal members do not all
gain or lose a slot on the same join or leave (see ``_cap_dither``): a leave
then moves about 2x the ideal 1/N at 1,000 members x 100 shards each, 1.3x at
1,000 shards each (``benchmarks/ring.py``).

What must not live here: I/O, clocks, randomness without a fixed seed, or
anything that reads the previous assignment. Stability comes from the hash
alone, so any process can recompute it.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import operator
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from dtr.errors import InvalidArgument

__all__ = ["DEFAULT_VNODES", "MAX_RING_SIZE", "Ownership", "assign_shards", "owner_array"]

DEFAULT_VNODES = 150
"""Virtual nodes per unit of capacity: max/mean load ≈ 1.27 at 1,000 members."""

MAX_RING_SIZE = 10_000_000
"""Most virtual nodes in one ring (80 MB of positions): beyond it, scale capacities down."""

U64 = NDArray[np.uint64]
I64 = NDArray[np.int64]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# The fair share is shrunk by this relative amount before rounding up so that
# float noise (1.05 * 100 = 105.00000000000001) never adds a shard to a cap.
_CAP_TOLERANCE = 1e-9


class Ownership(NamedTuple):
    """Owners of all shards as arrays, for callers that diff assignments.

    ``owners[shard]`` indexes ``members``, which is sorted by id so that two
    ``Ownership`` values computed in different processes compare directly.
    """

    members: tuple[str, ...]
    owners: I64


class _Ring(NamedTuple):
    """Virtual nodes sorted clockwise; ``owner`` indexes the sorted member ids."""

    positions: U64
    owner: I64


def assign_shards(
    members: Mapping[str, float],
    dataset: str,
    num_shards: int,
    *,
    vnodes: int = DEFAULT_VNODES,
    load_factor: float | None = None,
) -> dict[str, list[int]]:
    """Map every member id to the sorted shard ids it owns (possibly none).

    ``members`` maps id to capacity (any positive scale: a member with
    capacity 2 gets twice the virtual nodes, and twice the cap, of one with
    capacity 1). ``load_factor`` (>= 1, e.g. 1.05) bounds every member's load
    to ``ceil(load_factor * fair share)``; ``None`` is the plain ring.
    The dict is ordered by member id.

    Raises:
        InvalidArgument: an argument can never work; the message names it.
    """
    ownership = owner_array(members, dataset, num_shards, vnodes=vnodes, load_factor=load_factor)
    return _group_by_owner(ownership)


def owner_array(
    members: Mapping[str, float],
    dataset: str,
    num_shards: int,
    *,
    vnodes: int = DEFAULT_VNODES,
    load_factor: float | None = None,
) -> Ownership:
    """Same assignment as :func:`assign_shards`, as an array of member indices.

    The coordinator diffs two generations with ``owners`` arrays (a vector
    comparison) instead of rebuilding and comparing million-entry lists.
    """
    ids, capacity = _validated_members(members)
    dataset_name = _validated_dataset(dataset)
    shards = _validated_int(num_shards, "num_shards", minimum=0)
    per_unit = _validated_int(vnodes, "vnodes", minimum=1)
    factor = _validated_load_factor(load_factor)
    ring = _build_ring(ids, capacity, per_unit)
    dataset_seed = _name_seed(dataset_name, b"dtr.ring.shard")
    shard_pos = _shard_positions(dataset_seed, shards)
    primary = _first_vnode_at_or_after(ring, shard_pos)
    if factor is None or shards == 0:
        return Ownership(tuple(ids), ring.owner[primary])
    theta = _cap_dither(ids, dataset_seed)
    caps = _load_caps(capacity, shards, factor, theta)
    return Ownership(tuple(ids), _bounded_owners(ring, shard_pos, primary, caps))


# --- validation ----------------------------------------------------------------
# The validators take ``object``: callers are not always type-checked (the
# coordinator passes values decoded from etcd), and a bad value must fail
# here with the argument's name, not deep inside numpy.


def _validated_members(members: object) -> tuple[list[str], NDArray[np.float64]]:
    """Return ids sorted (the canonical order every tie-break uses) and capacities."""
    if not isinstance(members, Mapping):
        raise InvalidArgument(
            f"members must be a mapping of member id to capacity, got {type(members).__name__}"
        )
    if not members:
        raise InvalidArgument("members is empty: at least one member must own the shards")
    checked: dict[str, float] = {}
    for member_id, raw in members.items():
        if not isinstance(member_id, str) or not member_id:
            raise InvalidArgument(f"members: member id {member_id!r} must be a non-empty str")
        if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
            raise InvalidArgument(f"members: capacity of {member_id!r} must be a number")
        value = float(raw)
        if not math.isfinite(value) or value <= 0.0:
            raise InvalidArgument(
                f"members: capacity of {member_id!r} must be finite and > 0, got {raw!r}"
            )
        checked[member_id] = value
    ids = sorted(checked)
    return ids, np.array([checked[i] for i in ids], dtype=np.float64)


def _validated_dataset(dataset: object) -> str:
    if not isinstance(dataset, str) or not dataset:
        raise InvalidArgument(f"dataset must be a non-empty str, got {dataset!r}")
    return dataset


def _validated_int(value: object, name: str, *, minimum: int) -> int:
    """Accept any integer (numpy's too) but not bool, which is almost always a bug."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(f"{name} must be an int, got {value!r}") from None
    if number < minimum:
        raise InvalidArgument(f"{name} must be >= {minimum}, got {number}")
    return number


def _validated_load_factor(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgument(f"load_factor must be a number >= 1.0 or None, got {value!r}")
    factor = float(value)
    if not math.isfinite(factor) or factor < 1.0:
        raise InvalidArgument(f"load_factor must be finite and >= 1.0, got {value!r}")
    return factor


# --- hashing -------------------------------------------------------------------


def _mix64(z: U64) -> U64:
    """splitmix64's finalizer: a bijection on uint64 whose output bits all avalanche."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _name_seed(name: str, person: bytes) -> int:
    """64 stable bits of a name; ``person`` keeps members, datasets and caps independent."""
    data = name.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "little")


def _sequence(seed: NDArray[np.uint64], index: U64) -> U64:
    """Element ``index`` (from 0) of splitmix64's stream started at ``seed``."""
    return _mix64(seed + (index + np.uint64(1)) * _GOLDEN)


def _shard_positions(dataset_seed: int, num_shards: int) -> U64:
    seed = np.full(num_shards, dataset_seed, dtype=np.uint64)
    return _sequence(seed, np.arange(num_shards, dtype=np.uint64))


# --- the plain ring --------------------------------------------------------------


def _build_ring(ids: list[str], capacity: NDArray[np.float64], per_unit: int) -> _Ring:
    """Lay out ``round(per_unit * capacity)`` (at least 1) virtual nodes per member."""
    wanted = np.maximum(1.0, np.floor(per_unit * capacity + 0.5))
    if not wanted.sum() <= MAX_RING_SIZE:
        raise InvalidArgument(
            f"members: vnodes x capacities ask for {wanted.sum():.3g} virtual nodes, more than "
            f"{MAX_RING_SIZE:,}; scale capacities down (only their ratios set the loads)"
        )
    counts = wanted.astype(np.int64)
    seeds = np.array([_name_seed(i, b"dtr.ring.vnode") for i in ids], dtype=np.uint64)
    owner = np.repeat(np.arange(len(ids), dtype=np.int64), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    index = (np.arange(owner.size, dtype=np.int64) - first).astype(np.uint64)
    positions = _sequence(seeds[owner], index)
    # Equal positions (about one ring in 10^9 at 150,000 vnodes) go to the
    # smaller member id first, whatever order the caller listed members in.
    order = np.lexsort((owner, positions))
    return _Ring(positions[order], owner[order])


def _first_vnode_at_or_after(ring: _Ring, positions: U64) -> I64:
    """Index of each position's owning vnode; past the last vnode wraps to the first.

    Searching in sorted order halves the time: consecutive keys land in the
    same cache lines of the ring (0.07 s instead of 0.15 s for 10^6 shards).
    """
    order = np.argsort(positions)
    index = np.empty(positions.size, dtype=np.int64)
    index[order] = np.searchsorted(ring.positions, positions[order], side="left")
    index[index == ring.positions.size] = 0
    return index


def _group_by_owner(ownership: Ownership) -> dict[str, list[int]]:
    """Turn the owners array into id -> ascending shard ids, every member present.

    The stable sort keeps shard ids ascending within a member; on 16-bit keys
    numpy uses a radix sort, 8x faster than on int64.
    """
    narrow = np.uint16 if len(ownership.members) <= 2**16 else np.int64
    order = np.argsort(ownership.owners.astype(narrow), kind="stable").tolist()
    counts = np.bincount(ownership.owners, minlength=len(ownership.members))
    ends = np.cumsum(counts).tolist()
    result: dict[str, list[int]] = {}
    start = 0
    for member_id, end in zip(ownership.members, ends, strict=True):
        result[member_id] = order[start:end]
        start = end
    return result


# --- bounded loads -----------------------------------------------------------------


def _cap_dither(ids: list[str], dataset_seed: int) -> NDArray[np.float64]:
    """A stable per-(member, dataset) offset in [0, 1) subtracted before rounding caps.

    With equal capacities every member's fair share crosses an integer at
    the same membership size, so without it one leave can raise every cap by
    one and pull a shard back to each full member (6x the ideal movement at
    1,000 members x 100,000 shards). Spreading the rounding point makes only
    a fraction of the caps change per join or leave.
    """
    seeds = np.array([_name_seed(i, b"dtr.ring.cap") for i in ids], dtype=np.uint64)
    salt = _mix64(np.array([dataset_seed], dtype=np.uint64))
    bits = _mix64(seeds ^ salt) >> np.uint64(11)
    return bits.astype(np.float64) / float(2**53)


def _load_caps(
    capacity: NDArray[np.float64],
    num_shards: int,
    load_factor: float,
    theta: NDArray[np.float64],
) -> I64:
    """Per-member caps, each <= ceil(load_factor * fair share), summing to >= num_shards."""
    fair = load_factor * num_shards * (capacity / math.fsum(capacity.tolist()))
    fair = fair * (1.0 - _CAP_TOLERANCE)
    upper = np.ceil(fair).astype(np.int64)
    caps = np.maximum(np.ceil(fair - theta), 0.0).astype(np.int64)
    deficit = num_shards - int(caps.sum())
    if deficit > 0:
        # Too little slack to dither (fewer than ~2 spare shards per member):
        # undo the rounding-down where it took the most, stably by offset.
        order = np.argsort(-theta, kind="stable")
        lowered = order[caps[order] < upper[order]]
        caps[lowered[:deficit]] = upper[lowered[:deficit]]
    deficit = num_shards - int(caps.sum())
    if deficit > 0:
        # Only float noise at ~10^9 shards can get here; never loop forever.
        caps[np.argsort(-fair, kind="stable")[:deficit]] += 1
    return caps


def _bounded_owners(ring: _Ring, shard_pos: U64, primary: I64, caps: I64) -> I64:
    """Place shards in rounds; a member's earlier acceptances are never undone.

    Each round has every unplaced shard propose to the member of its current
    virtual node; members accept up to their room, nearest shard first. The
    rejected walk on to the next virtual node whose member still has room.
    A round either places every proposal or fills a member, and total room is
    at least ``num_shards``, so there are at most ``len(caps) + 1`` rounds.
    """
    num_members = caps.size
    owners = np.full(shard_pos.size, -1, dtype=np.int64)
    load = np.zeros(num_members, dtype=np.int64)
    pending = np.arange(shard_pos.size, dtype=np.int64)
    vnode = primary
    while pending.size:
        member = ring.owner[vnode]
        distance = ring.positions[vnode] - shard_pos[pending]  # wraps mod 2**64
        accepted = _accept(member, distance, caps - load)
        owners[pending[accepted]] = member[accepted]
        load += np.bincount(member[accepted], minlength=num_members)
        rejected = ~accepted
        pending, vnode = pending[rejected], vnode[rejected]
        if pending.size:
            vnode = _next_open_vnode(ring, vnode, load < caps)
    return owners


def _accept(member: I64, distance: U64, room: I64) -> NDArray[np.bool_]:
    """Which proposals their members accept: all if they fit, else the nearest ``room``.

    Proposals arrive in ascending shard id, so stable sorts break equal
    distances by shard id and the outcome is fully determined.
    """
    proposals = np.bincount(member, minlength=room.size)
    crowded = proposals > room
    accepted = ~crowded[member]
    contested = np.flatnonzero(crowded[member])
    if contested.size == 0:
        return accepted
    by_distance = contested[np.argsort(distance[contested], kind="stable")]
    ranked = by_distance[np.argsort(member[by_distance], kind="stable")]
    ranked_member = member[ranked]
    starts = np.flatnonzero(np.diff(ranked_member, prepend=-1))
    sizes = np.diff(np.append(starts, ranked.size))
    rank = np.arange(ranked.size) - np.repeat(starts, sizes)
    accepted[ranked[rank < room[ranked_member]]] = True
    return accepted


def _next_open_vnode(ring: _Ring, vnode: I64, is_open: NDArray[np.bool_]) -> I64:
    """The first vnode strictly clockwise of each ``vnode`` whose member has room."""
    open_vnodes = np.flatnonzero(is_open[ring.owner])
    after = vnode + 1
    after[after == ring.owner.size] = 0
    index = np.searchsorted(open_vnodes, after, side="left")
    index[index == open_vnodes.size] = 0
    return open_vnodes[index].astype(np.int64)
