"""Attack on issue 16: ``slow-etcd-leadership`` lets *any* other fault excuse a step-down.

The module's docstring names the excuses: "a leader pause or an etcd
cut-off is a reason to step down". ``check_slow_etcd`` excuses a step-down
when any non-slow fault was active within ``OTHER_FAULT_MARGIN_S`` (5 s)
of it: a ``worker-kill``, ``rack-failure``, ``worker-pause`` or
``slow-storage`` touches no replica's lease, yet silences the check. Faults
run back to back (soak-fleet: one every ~4 s, 3 s each), so in a soak most
slow windows start within 5 s of another fault's heal: the ``short-keepalive``
mutant's step-downs there are waved through, and the window still counts as
``checked``.
"""

from __future__ import annotations

from dtr.chaos.checker_slow_etcd import StepDown, Window, check_slow_etcd

DOWN = StepDown("replica-0", 15.0, "could not renew the lease within the renew deadline")
SLOW = Window("etcd-slow", 14.0, 20.0, 0.2)  # 0.4 s round trips: well within the budget


def test_control_a_lone_slow_window_flags_the_step_down() -> None:
    assert not check_slow_etcd([SLOW], [DOWN]).ok


def test_a_worker_fault_that_healed_just_before_does_not_excuse_a_step_down() -> None:
    for kind in ("worker-kill", "rack-failure", "worker-pause", "slow-storage", "disk-full"):
        before = Window(kind, 9.0, 12.0, None)  # healed 2 s before etcd-slow began
        result = check_slow_etcd([before, SLOW], [DOWN])
        assert not result.ok, (
            f"a step-down under a 0.4 s round trip was excused by {kind}, a fault that touches "
            f"no replica (checked={result.checked})"
        )
