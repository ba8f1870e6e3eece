"""The etcd timeouts of a replica: defaults sized from the lease, the deprecated alias, limits.

A slow etcd is not a dead etcd (DESIGN §4): keep-alive, read and write
timeouts must not default to a fast etcd's latency, and the keep-alive
timeout must leave a retry inside the renew deadline.
"""

from __future__ import annotations

import pytest

from dtr.coordinator.config import DEFAULT_ETCD_TIMEOUT_S, CoordinatorConfig
from dtr.coordinator.election import keepalives_in_flight
from dtr.errors import InvalidArgument

ETCD = ("127.0.0.1:2379",)


def test_defaults_wait_for_a_slow_etcd() -> None:
    config = CoordinatorConfig(ETCD)
    assert config.read_timeout_s == config.write_timeout_s == DEFAULT_ETCD_TIMEOUT_S == 1.5
    assert config.keepalive_interval_s == pytest.approx(2.0 / 3)
    assert config.keepalive_timeout_s == pytest.approx(2.0 - 2.0 / 3)


def test_the_keepalive_timeout_follows_the_renew_deadline() -> None:
    config = CoordinatorConfig(ETCD, lease_ttl_s=30, renew_deadline_s=20.0)
    assert config.keepalive_timeout_s == pytest.approx(20.0 - 20.0 / 3)


def test_the_deprecated_timeout_is_the_default_of_read_and_write() -> None:
    config = CoordinatorConfig(ETCD, etcd_timeout_s=0.7, etcd_write_timeout_s=2.0)
    assert (config.read_timeout_s, config.write_timeout_s) == (0.7, 2.0)


def test_explicit_timeouts_win() -> None:
    config = CoordinatorConfig(
        ETCD, etcd_read_timeout_s=0.5, etcd_write_timeout_s=3.0, etcd_keepalive_timeout_s=1.0
    )
    assert (config.read_timeout_s, config.write_timeout_s) == (0.5, 3.0)
    assert config.keepalive_timeout_s == 1.0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"etcd_read_timeout_s": 0.0}, "etcd_read_timeout_s"),
        ({"etcd_write_timeout_s": float("inf")}, "etcd_write_timeout_s"),
        ({"etcd_timeout_s": -1.0}, "etcd_timeout_s"),
        ({"etcd_keepalive_timeout_s": 2.5}, "etcd_keepalive_timeout_s"),  # > renew deadline
        ({"etcd_keepalive_timeout_s": float("nan")}, "etcd_keepalive_timeout_s"),
    ],
)
def test_bad_timeouts_are_refused_naming_the_field(options: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        CoordinatorConfig(ETCD, **options)  # type: ignore[arg-type]


def test_enough_keepalives_may_be_in_flight_to_cover_one_timeout() -> None:
    assert keepalives_in_flight(4 / 3, 2 / 3) == 3
    assert keepalives_in_flight(0.1, 1.0) == 2
