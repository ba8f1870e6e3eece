"""``dtr.logs``: one JSON object per line, with the term, the exception, and nothing else."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from dtr.cli import build_parser
from dtr.cli.coordinator_command import config_from_args
from dtr.cli.options import apply_environment
from dtr.errors import InvalidArgument
from dtr.logs import TEXT_FORMAT, JsonFormatter, formatter_for


class _Term(logging.Filter):
    """Stamps a term, as the coordinator's filter does."""

    def __init__(self, term: object) -> None:
        super().__init__()
        self.term = term

    def filter(self, record: logging.LogRecord) -> bool:
        record.term = self.term
        return True


@pytest.fixture
def stream() -> Iterator[tuple[logging.Logger, io.StringIO, _Term]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    term = _Term(41)
    handler.addFilter(term)
    logger = logging.getLogger("dtr.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, out, term
    finally:
        logger.removeHandler(handler)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_record_is_one_json_object_on_one_line(
    stream: tuple[logging.Logger, io.StringIO, _Term],
) -> None:
    logger, out, _ = stream
    logger.info("took over %s", "r1")
    logger.warning('two\nlines and a "quote" and ünïcode')
    first, second = _lines(out)
    assert first["message"] == "took over r1"
    assert first["level"] == "INFO" and first["logger"] == "dtr.test.logs"
    assert first["term"] == 41
    assert str(first["time"]).endswith("+00:00")
    assert second["message"] == 'two\nlines and a "quote" and ünïcode'


def test_an_exception_is_included_in_its_line(
    stream: tuple[logging.Logger, io.StringIO, _Term],
) -> None:
    logger, out, _ = stream
    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("cycle failed")
    (line,) = _lines(out)
    assert line["message"] == "cycle failed" and line["level"] == "ERROR"
    assert "Traceback" in str(line["exception"]) and "ValueError: bad value" in str(
        line["exception"]
    )


def test_no_known_leader_is_a_null_term_and_no_filter_means_no_term() -> None:
    record = logging.LogRecord("dtr.x", logging.INFO, __file__, 1, "hello", None, None)
    assert "term" not in json.loads(JsonFormatter().format(record))
    record.term = "-"
    assert json.loads(JsonFormatter().format(record))["term"] is None


def test_extra_attributes_such_as_tokens_never_reach_the_line(
    stream: tuple[logging.Logger, io.StringIO, _Term],
) -> None:
    logger, out, _ = stream
    logger.info("calling", extra={"token": "s3cret-token-value", "password": "hunter2"})
    text = out.getvalue()
    assert "s3cret-token-value" not in text and "hunter2" not in text
    assert set(_lines(out)[0]) == {"time", "level", "logger", "message", "term"}


def test_the_coordinator_flag_picks_the_format() -> None:
    assert isinstance(formatter_for("json"), JsonFormatter)
    assert formatter_for("text")._fmt == TEXT_FORMAT
    with pytest.raises(ValueError, match="log format"):
        formatter_for("xml")
    args = build_parser().parse_args(["coordinator", "--log-format", "JSON"])
    apply_environment(args, {"DTR_ETCD": "http://127.0.0.1:1"})
    assert config_from_args(args).log_format == "json"
    args = build_parser().parse_args(["coordinator"])
    with pytest.raises(InvalidArgument, match="DTR_LOG_FORMAT"):
        apply_environment(args, {"DTR_ETCD": "http://127.0.0.1:1", "DTR_LOG_FORMAT": "yaml"})
