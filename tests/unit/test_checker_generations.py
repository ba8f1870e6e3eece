"""``record-generations`` on hand-made records: membership changes must move the generation.

The records are what the real planner writes (``plan_register``,
``plan_mark_dead``) turned into etcd events, so the checker is judged on the
shapes it meets in a run: the real plans pass, the ``incarnation-blind-barriers``
mutant's plan (a restart under a live id, generation unchanged) fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dtr import mutants
from dtr.chaos.checker_generations import check_generations
from dtr.chaos.etcd_record import RecordEvent
from dtr.coordinator.membership import WritePlan, plan_mark_dead, plan_register
from dtr.coordinator.state import ClusterView
from dtr.keys import JobKeys
from dtr.store import Delete, Put

KEYS = JobKeys("job")


class Recorder:
    """Applies plans to a view and keeps the etcd events they make, one revision each."""

    def __init__(self) -> None:
        self.view = ClusterView()
        self.events: list[RecordEvent] = []
        self.revision = 1

    def apply(self, plan: WritePlan | None) -> None:
        assert plan is not None
        self.revision += 1
        for op in plan.ops:
            if isinstance(op, Put):
                self.events.append(RecordEvent(self.revision, "put", op.key, op.value))
            elif isinstance(op, Delete):
                self.events.append(RecordEvent(self.revision, "delete", op.key))
        self.view = plan.view

    def register(self, worker: str) -> None:
        self.apply(plan_register(KEYS, self.view, worker, 1.0, host="h", pid=1))


@pytest.fixture
def blind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(mutants.ENV, mutants.INCARNATION_BLIND_BARRIERS)
    mutants.selected.cache_clear()
    yield
    monkeypatch.delenv(mutants.ENV)
    mutants.selected.cache_clear()


def test_joins_restarts_and_deaths_planned_for_real_pass() -> None:
    record = Recorder()
    for worker in ("a", "b", "a", "c"):  # "a" again: a restart under a live id
        record.register(worker)
    record.apply(plan_mark_dead(KEYS, record.view, ["b", "c"]))
    result = check_generations(record.events, KEYS)
    assert result.ok, result.violations
    assert result.checked == 5


def test_a_restart_that_leaves_the_generation_is_named(blind: None) -> None:
    record = Recorder()
    record.register("a")
    record.register("b")
    record.register("a")
    result = check_generations(record.events, KEYS)
    assert not result.ok
    assert [v.message for v in result.violations] == [
        "revision 4: membership changed (a incarnation 1 -> 2) but generation 2 stayed"
    ]


def test_a_wiped_prefix_starts_a_new_membership() -> None:
    record = Recorder()
    record.register("a")
    wipe = [RecordEvent(3, "delete", KEYS.generation), RecordEvent(3, "delete", KEYS.member("a"))]
    again = Recorder()
    again.register("a")  # generation 1 again, in the new life
    events = [
        *record.events,
        *wipe,
        *(RecordEvent(4, e.kind, e.key, e.value) for e in again.events),
    ]
    assert check_generations(events, KEYS).ok
