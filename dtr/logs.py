"""Log formats shared by the coordinator and training scripts: plain text or one JSON per line.

``dtr coordinator --log-format json`` installs ``JsonFormatter`` on its
handler; the worker library never configures logging (it is a library), so
a training script that wants JSON installs it itself::

    import logging, sys
    from dtr.logs import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])

Each line is one object with ``time`` (UTC, ISO 8601), ``level``,
``logger``, ``message``, ``term`` (when a filter stamped one, as the
coordinator's does) and ``exception`` / ``stack`` when the record has them.
Only these fields are written, never arbitrary ``extra=`` attributes, so
nothing a caller attached by accident (a token, a request) leaks into logs.

Standard library only: the CLI imports this before any command runs.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

#: Values of ``--log-format`` / ``DTR_LOG_FORMAT``.
LOG_FORMATS = ("text", "json")
#: The coordinator's text format; ``term`` comes from its filter.
TEXT_FORMAT = "%(asctime)s %(levelname)s [term %(term)s] %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        term = getattr(record, "term", None)
        if term is not None:  # "-": the coordinator knows of no leader yet
            entry["term"] = None if term == "-" else term if isinstance(term, int) else str(term)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of a ``--log-format`` value (``ValueError`` for any other)."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}; got {log_format!r}")
