"""dtr.examples — a DDP training job on dtr, run as ``torchrun ... -m dtr.examples.train``.

Installed with the package (from ``examples/ddp``) so that pip-installed users,
who have no ``examples/`` folder, can run the composed job too; see
docs/tutorial.md, "DDP under torchrun".
"""
