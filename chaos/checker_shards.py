"""Invariant 3 (DESIGN §5): every shard has exactly one owner, a live member of the generation.

Reads the ``get_shards`` ok events. A ``stale`` answer is the worker's cached
assignment served while it could not reach a coordinator (relabelled with
the epoch asked for), so it says nothing about that epoch's assignment and
is skipped, counted as unchecked.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from .checker_base import CheckResult, Findings, members_by_generation, worker_id
from .history import Event

#: Shard ids listed in one message.
MAX_IDS_LISTED = 10
#: (dataset, epoch, generation)
Key = tuple[str, int, int]


def check_shards(events: Sequence[Event]) -> CheckResult:
    """Disjoint fresh assignments per (dataset, epoch, generation), covering every shard.

    ``checked`` counts fresh ok answers; ``unchecked`` counts stale answers,
    answers without a generation, and groups whose membership is unknown or
    not every member of which reported (coverage then cannot be judged).
    """
    found = Findings("shards")
    members = members_by_generation(events)
    groups: dict[Key, dict[str, list[Event]]] = defaultdict(lambda: defaultdict(list))
    for event in events:
        worker = worker_id(event.process)
        if event.f != "get_shards" or event.type != "ok" or worker is None:
            continue
        if event.value.get("stale") or event.generation is None:
            found.unchecked += 1
            continue
        found.checked += 1
        key = (str(event.value["dataset"]), int(event.value["epoch"]), event.generation)
        groups[key][worker].append(event)
    for key, by_worker in sorted(groups.items()):
        _check_group(key, by_worker, members.get(key[2]), found)
    return found.result()


def _check_group(
    key: Key, by_worker: dict[str, list[Event]], members: frozenset[str] | None, found: Findings
) -> None:
    label = f"dataset {key[0]!r} epoch {key[1]} generation {key[2]}"
    first = {worker: answers[0] for worker, answers in by_worker.items()}
    for worker, answers in sorted(by_worker.items()):
        if len({_ids(a) for a in answers}) > 1:
            found.flag(f"{label}: {worker} was given different shards", answers)
    sizes = {int(e.value["num_shards"]) for e in first.values()}
    if len(sizes) > 1:
        found.flag(f"{label}: answers disagree on num_shards {sorted(sizes)}", first.values())
        return
    num_shards = sizes.pop()
    _check_disjoint(label, first, num_shards, found)
    if members is None:
        found.unchecked += 1
        return
    for worker, answer in sorted(first.items()):
        if worker not in members:
            found.flag(f"{label}: {worker} owns shards but is not a member", [answer])
    if not members <= first.keys():
        found.unchecked += 1
        return
    owned = frozenset().union(*(_ids(first[m]) for m in members))
    missing = sorted(set(range(num_shards)) - owned)
    if missing:
        found.flag(
            f"{label}: {len(missing)} shards have no owner, e.g. {missing[:MAX_IDS_LISTED]}",
            [first[m] for m in sorted(members)],
        )


def _check_disjoint(label: str, first: dict[str, Event], num_shards: int, found: Findings) -> None:
    """No shard is given to two workers, and every shard id is in range(num_shards)."""
    owner: dict[int, str] = {}
    shared: dict[tuple[str, str], list[int]] = defaultdict(list)
    for worker, answer in sorted(first.items()):
        out_of_range = sorted(s for s in _ids(answer) if not 0 <= s < num_shards)
        if out_of_range:
            found.flag(
                f"{label}: {worker} was given shards outside range({num_shards}): "
                f"{out_of_range[:MAX_IDS_LISTED]}",
                [answer],
            )
        for shard in sorted(_ids(answer)):
            other = owner.setdefault(shard, worker)
            if other != worker:
                shared[(other, worker)].append(shard)
    for (one, two), shards in sorted(shared.items()):
        found.flag(
            f"{label}: {len(shards)} shards owned by both {one} and {two}, "
            f"e.g. {shards[:MAX_IDS_LISTED]}",
            [first[one], first[two]],
        )


def _ids(answer: Event) -> frozenset[int]:
    return frozenset(int(s) for s in answer.value.get("shard_ids", ()))
