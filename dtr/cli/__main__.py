"""``python -m dtr.cli``: the same as the ``dtr`` console script."""

from __future__ import annotations

import sys

from dtr.cli import main

sys.exit(main())
