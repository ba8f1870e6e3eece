"""Job lives: a history cut at each wiped ``job-restart``, every life judged on its own.

After a wipe the job starts over (step 0, a new generation count, barriers
named again): facts that must never go back within a life go back across
lives. These histories are what a wiped restart leaves; the same history
with etcd kept must still be judged as one life, where going back is a
violation.
"""

from __future__ import annotations

import itertools
from typing import Any

from dtr.chaos.checker_base import CheckResult, FinalState
from dtr.chaos.checker_lives import check_lives, per_life, split_lives
from dtr.chaos.checkers import check_all, check_checkpoints
from dtr.chaos.history import Event

_op_ids = itertools.count(1)


def op(
    process: str, f: str, start: float, end: float, value: dict[str, Any], **kw: Any
) -> list[Event]:
    op_id = f"{process}#{next(_op_ids)}"
    return [
        Event(start, process, "invoke", f, kw.pop("invoke", {}), op_id),
        Event(end, process, "ok", f, value, op_id, **kw),
    ]


def restart(start: float, end: float, etcd: str) -> list[Event]:
    """The nemesis's ``job-restart``: invoke, ok once the job runs again, info (nothing to heal)."""
    value = {"kind": "job-restart", "etcd": etcd}
    return [
        *op("nemesis", "restart", start, end, value, invoke={"kind": "job-restart"}),
        Event(end + 2, "nemesis", "info", "restart", {**value, "healed": True}, "nemesis#x"),
    ]


def register(worker: str, start: float, life: str) -> list[Event]:
    value = {"incarnation": int(start * 1000), "job_life": life}
    return op(f"worker:{worker}", "register", start, start + 0.1, value)


def status(start: float, latest: int | None) -> list[Event]:
    return op("harness", "status", start, start + 0.1, {"latest_step": latest})


def commit(worker: str, start: float, step: int, latest: int | None) -> list[Event]:
    value = {"step": step, "outcome": "accepted", "latest_complete_step": latest}
    return op(f"worker:{worker}", "commit", start, start + 0.1, value, invoke={"step": step})


def barrier(worker: str, start: float, name: str, generation: int) -> list[Event]:
    value = {"name": name, "generation": generation}
    return op(f"worker:{worker}", "barrier", start, start + 0.2, value, invoke=value)


def train(worker: str, time: float, step: int) -> Event:
    return Event(time, f"worker:{worker}", "ok", "train", {"step": step})


def members(time: float, generation: int, *ids: str) -> Event:
    value = {"generation": generation, "members": list(ids)}
    return Event(time, "harness", "ok", "membership", value, generation=generation)


def history(*parts: Event | list[Event]) -> list[Event]:
    flat = [e for part in parts for e in (part if isinstance(part, list) else [part])]
    return sorted(flat, key=lambda e: e.time)


def a_job_restarted(etcd: str) -> list[Event]:
    """Two workers reach step 20 (generation 2), the job restarts at t=10, steps 20 again.

    After a wipe the new life's first generation is 1 again with the same
    members, step 20's barrier is released again, and the latest step starts
    from None; a kept etcd would resume at 20 instead (not modelled here).
    """
    old, new = "cluster/uid-1", "cluster/uid-2" if etcd == "wiped" else "cluster/uid-1"
    return history(
        register("a", 0, old),
        register("b", 0, old),
        members(1, 2, "a", "b"),
        barrier("a", 2, "step-20", 2),
        barrier("b", 2.1, "step-20", 2),
        commit("a", 3, 20, None),
        commit("b", 3.1, 20, 20),
        status(4, 20),
        train("a", 10.5, 21),  # written while the nemesis killed it: still the old life's
        restart(10, 14, etcd),
        status(12, None),  # the new life's replicas answered before the nemesis's ok
        register("a", 13, new),
        register("b", 13, new),
        members(15, 1, "a", "b"),
        status(16, None),
        barrier("a", 20, "step-20", 1),
        barrier("b", 20.1, "step-20", 1),
        commit("a", 21, 20, None),
        commit("b", 21.1, 20, 20),
        status(22, 20),
        train("a", 23, 20),
        train("b", 23, 20),
    )


FINAL = FinalState(
    complete_steps={20: ("a", "b")},
    latest_step=20,
    verified_parts={(20, "a"): True, (20, "b"): True},
    leader="replica-0",
    live_workers=("a", "b"),
)


def messages(result: CheckResult) -> list[str]:
    return [v.message for v in result.violations]


def test_without_a_wiped_restart_the_history_is_one_life() -> None:
    events = a_job_restarted("kept")
    assert split_lives(events) == [events]


def test_a_wipe_cuts_workers_at_their_new_run_and_the_harness_at_the_restart() -> None:
    events = a_job_restarted("wiped")
    old, new = split_lives(events)

    killed_late = next(e for e in events if e.f == "train" and e.value["step"] == 21)
    assert killed_late in old  # its process began in the old life
    assert [e.time for e in old if e.f == "register"] == [0, 0, 0.1, 0.1]
    assert [e.time for e in new if e.f == "register"] == [13, 13, 13.1, 13.1]
    assert [e.time for e in old if e.f == "status"] == [4, 4.1]
    assert [e.time for e in new if e.f == "status"] == [16, 16.1, 22, 22.1]  # 12: either's
    assert not any(e.time == 12 for e in old + new)


def test_every_check_passes_a_history_whose_facts_go_back_across_a_wipe() -> None:
    results = check_all(a_job_restarted("wiped"), FINAL, settle_s=5)

    assert {r.name: messages(r) for r in results if not r.ok} == {}
    assert next(r for r in results if r.name == "lives").checked == 2


def test_the_latest_step_going_back_across_a_kept_restart_is_still_a_violation() -> None:
    result = check_checkpoints(a_job_restarted("kept"), FINAL)

    assert messages(result)[0] == "harness: the latest complete step went back from 20 to -1"


def test_a_violation_of_one_life_names_the_life() -> None:
    gone_back = history(a_job_restarted("wiped"), status(30, None))  # 20, then none again
    result = check_all(gone_back, FINAL, settle_s=5)

    checkpoints = next(r for r in result if r.name == "checkpoints")
    assert messages(checkpoints) == [
        "life 2 of 2: harness: the latest complete step went back from 20 to -1"
    ]


def test_per_life_sums_the_counts_and_passes_only_the_last_life_as_the_end() -> None:
    lives = split_lives(a_job_restarted("wiped"))
    seen: list[bool] = []

    def check(life: Any, last: bool) -> CheckResult:
        seen.append(last)
        return CheckResult("x", True, len(life), (), unchecked=1)

    result = per_life(lives, check)

    assert seen == [False, True]
    assert (result.checked, result.unchecked) == (sum(map(len, lives)), 2)


def test_a_wipe_that_kept_its_job_life_is_a_violation() -> None:
    events = a_job_restarted("wiped")
    same = [
        Event(e.time, e.process, e.type, e.f, {**e.value, "job_life": "cluster/uid-1"}, e.op_id)
        if e.f == "register" and e.type == "ok"
        else e
        for e in events
    ]

    assert messages(check_lives(split_lives(same))) == [
        "life 2: workers were told job life 'cluster/uid-1' of life 1: "
        "the wipe did not start a new life"
    ]


def test_a_new_job_life_without_a_wipe_is_a_violation() -> None:
    events = history(register("a", 0, "cluster/uid-1"), register("b", 5, "cluster/uid-2"))

    assert messages(check_lives(split_lives(events))) == [
        "life 1: workers were told 2 job lives ['cluster/uid-1', 'cluster/uid-2'] "
        "with no wipe between"
    ]


def test_registrations_that_name_no_life_are_unchecked() -> None:
    events = op("worker:a", "register", 0, 1, {"incarnation": 7})
    result = check_lives(split_lives(events))

    assert result.ok and (result.checked, result.unchecked) == (1, 1)
