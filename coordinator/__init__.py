"""dtr.coordinator — the coordinator service (installed as ``dtr.coordinator``).

Election with fencing, the leader's state machine, the gRPC servicer, failure
detection and metrics live here. It reaches etcd through ``dtr.store`` only and
never imports ``dtr.worker``, ``dtr.chaos`` or torch (tests/unit/
test_import_boundaries.py checks it).
"""
