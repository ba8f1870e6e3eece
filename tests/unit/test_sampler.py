"""dtr.worker.sampler: equal epochs on every worker, every sample covered, seeded order.

Assignments come from ``dtr.ring.assign_shards`` exactly as the coordinator
computes them (``RingSource``), so the coverage properties hold for the
shard lists workers really get. No network: the DataLoader tests run real
loader worker processes on this machine.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from dtr.errors import InvalidArgument
from dtr.ring import assign_shards
from dtr.worker.assignment import ShardAssignment
from dtr.worker.sampler import ShardIterableDataset, ShardSampler, plan_epoch

DATASET = "tokens"
STREAM_SHARD_SIZE = 5
FAST = settings(max_examples=60, deadline=None)


def ring_assignments(
    members: Mapping[str, float], num_shards: int, *, epoch: int = 0, generation: int = 1
) -> dict[str, ShardAssignment]:
    """Every member's ShardAssignment, as GetShards answers it for ``members``."""
    owned = assign_shards(members, DATASET, num_shards)
    counts = [len(owned[m]) for m in members]
    return {
        member: ShardAssignment(
            dataset=DATASET,
            epoch=epoch,
            shard_ids=tuple(owned[member]),
            generation=generation,
            num_shards=num_shards,
            num_members=len(members),
            max_member_shards=max(counts),
            min_member_shards=min(counts),
        )
        for member in members
    }


class RingSource:
    """An AssignmentSource that computes exactly what the coordinator computes.

    ``dtr.ring.assign_shards`` over ``members``, with the most and fewest
    shards over all members, those holding none included (as the GetShards
    servicer does). It records its calls and holds a lock so that, like the
    real worker's gRPC channels, it cannot be pickled.
    """

    def __init__(self, members: Mapping[str, float], worker_id: str, num_shards: int) -> None:
        self.members = dict(members)
        self.worker_id = worker_id
        self.num_shards = num_shards
        self.generation = 1
        self.stale = False
        self.calls: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def shard_assignment(self, dataset: str, epoch: int) -> ShardAssignment:
        with self._lock:
            self.calls.append((dataset, epoch))
        mine = ring_assignments(
            self.members, self.num_shards, epoch=epoch, generation=self.generation
        )[self.worker_id]
        return mine.as_stale(epoch) if self.stale else mine


def samples_of(assignment: ShardAssignment, shard_size: int, num_samples: int) -> set[int]:
    """The sample indices in ``assignment``'s shards, from the layout's definition."""
    return {
        i
        for s in assignment.shard_ids
        for i in range(s * shard_size, min((s + 1) * shard_size, num_samples))
    }


def stream_shard(shard_id: int) -> list[int]:
    """A streamed shard: module-level so that it pickles for the spawn start method."""
    return list(range(shard_id * STREAM_SHARD_SIZE, (shard_id + 1) * STREAM_SHARD_SIZE))


# --- plan_epoch: the properties DDP relies on -------------------------------------------

LAYOUTS = [
    pytest.param({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, 16, 5, None, id="equal-members"),
    pytest.param({"a": 1.0, "b": 2.0, "c": 4.0}, 10, 7, 66, id="uneven-capacity-short-last"),
    pytest.param({f"w{i}": 1.0 for i in range(6)}, 3, 4, 10, id="more-members-than-shards"),
    pytest.param({"solo": 1.0}, 5, 3, 13, id="one-member"),
    pytest.param({"a": 1.0, "b": 3.0}, 9, 1, None, id="shard-size-1"),
]

layouts = st.tuples(
    st.dictionaries(
        st.sampled_from([f"w{i}" for i in range(8)]),
        st.sampled_from([0.5, 1.0, 2.0, 4.0]),
        min_size=1,
        max_size=8,
    ),
    st.integers(min_value=0, max_value=24),
    st.integers(min_value=1, max_value=6),
    st.data(),
)


def plans(
    members: Mapping[str, float],
    num_shards: int,
    shard_size: int,
    num_samples: int | None,
    **options: bool,
) -> dict[str, list[int]]:
    return {
        member: plan_epoch(
            assignment, shard_size=shard_size, num_samples=num_samples, seed=7, epoch=3, **options
        )
        for member, assignment in ring_assignments(members, num_shards).items()
    }


def check_padded_cover(
    members: Mapping[str, float], num_shards: int, shard_size: int, num_samples: int | None
) -> None:
    total = num_shards * shard_size if num_samples is None else num_samples
    for shuffle in (True, False):
        planned = plans(members, num_shards, shard_size, num_samples, shuffle=shuffle)
        assignments = ring_assignments(members, num_shards)
        lengths = {len(p) for p in planned.values()}
        assert lengths == {max(a.max_member_shards for a in assignments.values()) * shard_size}
        counts = Counter(i for p in planned.values() for i in p)
        assert set(counts) == set(range(total)), "every sample at least once, none outside"
        assert sum(counts.values()) - total == lengths.pop() * len(members) - total
        for member, indices in planned.items():
            own = samples_of(assignments[member], shard_size, total)
            if own:  # a worker pads from its own samples only
                assert set(indices) == own


def check_dropped_cover(
    members: Mapping[str, float], num_shards: int, shard_size: int, num_samples: int | None
) -> None:
    total = num_shards * shard_size if num_samples is None else num_samples
    planned = plans(members, num_shards, shard_size, num_samples, drop_last=True)
    assignments = ring_assignments(members, num_shards)
    fewest = min(a.min_member_shards for a in assignments.values())
    expected = max(0, fewest * shard_size - (num_shards * shard_size - total))
    assert {len(p) for p in planned.values()} == {expected}
    every = [i for p in planned.values() for i in p]
    assert len(every) == len(set(every)), "no sample twice with drop_last"
    for member, indices in planned.items():
        assert set(indices) <= samples_of(assignments[member], shard_size, total)


@pytest.mark.parametrize(("members", "num_shards", "shard_size", "num_samples"), LAYOUTS)
def test_padded_plans_have_equal_lengths_and_cover_every_sample(
    members: dict[str, float], num_shards: int, shard_size: int, num_samples: int | None
) -> None:
    check_padded_cover(members, num_shards, shard_size, num_samples)


@pytest.mark.parametrize(("members", "num_shards", "shard_size", "num_samples"), LAYOUTS)
def test_drop_last_plans_have_equal_lengths_and_never_repeat_a_sample(
    members: dict[str, float], num_shards: int, shard_size: int, num_samples: int | None
) -> None:
    check_dropped_cover(members, num_shards, shard_size, num_samples)


@FAST
@given(layouts)
def test_cover_properties_hold_for_any_membership(
    layout: tuple[dict[str, float], int, int, st.DataObject],
) -> None:
    members, num_shards, shard_size, data = layout
    shortfall = data.draw(st.integers(0, shard_size - 1 if num_shards else 0), label="shortfall")
    num_samples = num_shards * shard_size - shortfall
    check_padded_cover(members, num_shards, shard_size, num_samples)
    check_dropped_cover(members, num_shards, shard_size, num_samples)


def test_workers_without_shards_pad_from_one_seeded_order() -> None:
    members = {f"w{i}": 1.0 for i in range(6)}
    planned = plans(members, 2, 4, None)
    idle = [p for m, p in planned.items() if not ring_assignments(members, 2)[m].shard_ids]
    assert len(idle) >= 2
    assert all(p == idle[0] for p in idle)


def test_plan_order_depends_on_seed_and_epoch_only() -> None:
    mine = ring_assignments({"a": 1.0, "b": 1.0}, 32)["a"]
    first = plan_epoch(mine, shard_size=8, seed=1, epoch=0)
    assert first == plan_epoch(mine, shard_size=8, seed=1, epoch=0)
    assert first != sorted(first), "shuffled"
    assert plan_epoch(mine, shard_size=8, seed=1, epoch=1) != first
    assert plan_epoch(mine, shard_size=8, seed=2, epoch=0) != first
    assert sorted(plan_epoch(mine, shard_size=8, seed=1, epoch=1)) == sorted(first)
    assert plan_epoch(mine, shard_size=8, shuffle=False) == sorted(first)


@pytest.mark.parametrize(
    ("num_samples", "field"),
    [(15, "num_samples"), (21, "num_samples"), (-1, "num_samples"), (2.5, "num_samples")],
)
def test_plan_refuses_a_layout_where_more_than_the_last_shard_is_short(
    num_samples: object, field: str
) -> None:
    mine = ring_assignments({"a": 1.0}, 4)["a"]
    with pytest.raises(InvalidArgument, match=field):
        plan_epoch(mine, shard_size=5, num_samples=num_samples)  # type: ignore[arg-type]


# --- ShardSampler ------------------------------------------------------------------------


def sampler(source: RingSource, **options: Any) -> ShardSampler:
    return ShardSampler(source, DATASET, shard_size=4, **options)


def test_two_samplers_with_the_same_seed_and_epoch_agree() -> None:
    members = {"a": 1.0, "b": 2.0}
    one = sampler(RingSource(members, "b", 24), seed=5, epoch=2)
    two = sampler(RingSource(members, "b", 24), seed=5, epoch=2)
    assert list(one) == list(two)
    other = sampler(RingSource(members, "b", 24), seed=5, epoch=3)
    assert list(other) != list(one)
    assert sorted(other) == sorted(one)


def test_len_and_iter_of_an_epoch_agree_and_ask_the_source_once() -> None:
    source = RingSource({"a": 1.0, "b": 1.0, "c": 1.0}, "a", 12)
    s = sampler(source)
    assert len(s) == len(list(s)) == len(list(s))
    assert source.calls == [(DATASET, 0)]


def test_a_new_generation_is_picked_up_at_the_next_epoch_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = RingSource({"a": 1.0, "b": 1.0}, "a", 16)
    s = sampler(source)
    first = list(s)
    before = s.assignment
    assert before is not None
    source.members["c"] = 1.0
    source.generation = 2
    assert list(s) == first, "mid-epoch the plan does not move"
    assert source.calls == [(DATASET, 0)]
    with caplog.at_level(logging.INFO, logger="dtr.worker.sampler"):
        s.set_epoch(1)
        second = list(s)
    after = s.assignment
    assert after is not None
    assert after.generation == 2
    assert after.shard_ids != before.shard_ids, "c took some of a's shards"
    assert set(second) == samples_of(after, 4, 64)
    assert source.calls == [(DATASET, 0), (DATASET, 1)]
    assert any("generation 1 -> 2" in r.getMessage() for r in caplog.records)


def test_a_stale_assignment_is_used_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    source = RingSource({"a": 1.0, "b": 1.0}, "a", 8)
    source.stale = True
    s = sampler(source)
    with caplog.at_level(logging.WARNING, logger="dtr.worker.sampler"):
        planned = list(s)
    assert s.assignment is not None
    assert s.assignment.stale
    assert set(planned) == samples_of(s.assignment, 4, 32)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


@pytest.mark.parametrize(
    ("dataset", "options", "field"),
    [
        ("bad/name", {}, "dataset"),
        ("", {}, "dataset"),
        (DATASET, {"shard_size": 0}, "shard_size"),
        (DATASET, {"shard_size": True}, "shard_size"),
        (DATASET, {"epoch": -1}, "epoch"),
        (DATASET, {"epoch": 1.0}, "epoch"),
        (DATASET, {"seed": "1"}, "seed"),
        (DATASET, {"num_samples": -3}, "num_samples"),
        (DATASET, {"shuffle": 1}, "shuffle"),
        (DATASET, {"drop_last": None}, "drop_last"),
    ],
)
def test_bad_sampler_arguments_are_refused_before_asking_the_source(
    dataset: str, options: dict[str, object], field: str
) -> None:
    source = RingSource({"a": 1.0}, "a", 4)
    kwargs: dict[str, object] = {"shard_size": 4, **options}
    with pytest.raises(InvalidArgument, match=field):
        ShardSampler(source, dataset, **kwargs)  # type: ignore[arg-type]
    assert source.calls == []


def test_set_epoch_refuses_a_negative_epoch() -> None:
    s = sampler(RingSource({"a": 1.0}, "a", 4))
    with pytest.raises(InvalidArgument, match="epoch"):
        s.set_epoch(-1)
    assert s.epoch == 0


def test_num_samples_that_do_not_fit_the_shards_fail_on_first_use() -> None:
    s = sampler(RingSource({"a": 1.0}, "a", 4), num_samples=30)
    with pytest.raises(InvalidArgument, match="num_samples"):
        len(s)


def test_dataloader_workers_yield_exactly_the_planned_indices() -> None:
    members = {"a": 1.0, "b": 2.0, "c": 1.0}
    s = sampler(RingSource(members, "c", 15), num_samples=58)
    data = TensorDataset(torch.arange(58) * 10)
    loader = DataLoader(data, sampler=s, num_workers=2, batch_size=3)
    for epoch in (0, 1):
        s.set_epoch(epoch)
        got = torch.cat([batch for (batch,) in loader]).tolist()
        assert got == [i * 10 for i in s]
        assert len(got) == len(s) > 0


# --- ShardIterableDataset ----------------------------------------------------------------


def stream(source: RingSource, **options: Any) -> ShardIterableDataset[int]:
    return ShardIterableDataset(source, DATASET, load_shard=stream_shard, **options)


def test_streaming_through_two_loader_workers_yields_each_sample_once() -> None:
    source = RingSource({"a": 1.0, "b": 1.0}, "b", 20)
    ds = stream(source)
    ds.set_epoch(1)
    got = list(DataLoader(ds, num_workers=2, batch_size=None))
    assert ds.assignment is not None
    assert sorted(got) == sorted(samples_of(ds.assignment, STREAM_SHARD_SIZE, 100))
    assert source.calls == [(DATASET, 1)], "only the main process asked"


def test_streaming_with_spawned_workers_carries_plain_data_only() -> None:
    source = RingSource({"a": 1.0, "b": 1.0}, "a", 12)
    ds = stream(source)
    ds.set_epoch(0)
    loader = DataLoader(ds, num_workers=2, batch_size=None, multiprocessing_context="spawn")
    got = list(loader)
    assert ds.assignment is not None
    assert sorted(got) == sorted(samples_of(ds.assignment, STREAM_SHARD_SIZE, 60))


def test_a_pickled_stream_drops_the_source_and_keeps_its_shards() -> None:
    source = RingSource({"a": 1.0, "b": 1.0}, "a", 12)
    ds = stream(source, seed=3)
    ds.set_epoch(2)
    copy = pickle.loads(pickle.dumps(ds))  # the source holds a lock: it would not pickle
    assert list(copy) == list(ds)
    with pytest.raises(InvalidArgument, match="no assignment source"):
        copy.set_epoch(3)  # a new epoch needs the source, which stayed behind


def test_loader_workers_never_ask_the_source() -> None:
    source = RingSource({"a": 1.0}, "a", 4)
    loader = DataLoader(stream(source), num_workers=2, batch_size=None)
    with pytest.raises(InvalidArgument, match="set_epoch"):
        list(loader)
    assert source.calls == []


def test_without_loader_workers_the_first_iteration_fetches_lazily() -> None:
    source = RingSource({"a": 1.0, "b": 1.0}, "a", 16)
    ds = stream(source, seed=9)
    assert source.calls == []
    first = list(ds)
    assert list(ds) == first
    assert source.calls == [(DATASET, 0)]
    assert first == list(stream(RingSource({"a": 1.0, "b": 1.0}, "a", 16), seed=9))
    ds.set_epoch(1)
    assert list(ds) != first
    assert sorted(ds) == sorted(first)


def test_bad_stream_arguments_are_refused() -> None:
    source = RingSource({"a": 1.0}, "a", 4)
    with pytest.raises(InvalidArgument, match="load_shard"):
        ShardIterableDataset(source, DATASET, load_shard=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="epoch"):
        stream(source, epoch=-2)
    with pytest.raises(InvalidArgument, match="dataset"):
        ShardIterableDataset(source, "a b", load_shard=stream_shard)
    assert source.calls == []
