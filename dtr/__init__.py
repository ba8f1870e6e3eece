"""dtr — a distributed training runtime.

This package is the shared core both sides import: the wire protocol
(``dtr.proto``), the hash ring (``dtr.ring``), etcd access (``dtr.store``,
``dtr.keys``), local etcd processes (``dtr.etcd``), errors (``dtr.errors``) and
the CLI (``dtr.cli``). ``import dtr`` stays light: nothing heavy is imported
here.
"""

__version__ = "0.1.0"
