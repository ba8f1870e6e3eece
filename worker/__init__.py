"""dtr.worker — the library a training script imports (installed as ``dtr.worker``).

The gRPC client with its retry policy, the shard sampler, the checkpoint
manager and its on-disk commit queue live here. It reaches cluster state
through the coordinators' gRPC API only: never ``dtr.coordinator``,
``dtr.chaos`` or an etcd client (tests/unit/test_import_boundaries.py).
"""
