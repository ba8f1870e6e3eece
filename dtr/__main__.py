"""``python -m dtr``: the ``dtr`` command without its console script.

The local cluster launcher runs replicas this way (``sys.executable -m dtr
coordinator``), so they use the same interpreter as their launcher whatever
is on ``PATH``.
"""

from __future__ import annotations

import sys

from dtr.cli import main

sys.exit(main())
