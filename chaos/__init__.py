"""dtr.chaos — the chaos harness (installed as ``dtr.chaos``).

Cluster launcher, nemesis (fault injectors), seeded generator, history
recorder, invariant checkers and report. It drives coordinators and workers as
processes and over RPC, and may import both.
"""
