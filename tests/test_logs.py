"""Log lines: secrets redacted (also ones added at runtime), controls escaped, fields capped."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from qoder_exporter import logs
from qoder_exporter.client import QoderClient
from qoder_exporter.config import Secret


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "qoder_exporter.test", "levelname": "ERROR"})
    rec.msg, rec.args = msg, args or None
    rec.__dict__.update(extra)
    return rec


HOSTILE = "a\rb\x1b[2Jc\u2028d\u2029e\x85f\x7fg\u202eh\x00i\ud800j"
RAW = ("\r", "\x1b", "\u2028", "\u2029", "\x85", "\x7f", "\u202e", "\x00", "\ud800", "\n")


@pytest.mark.parametrize("formatter", [logs.LogfmtFormatter(), logs.JsonFormatter()])
def test_controls_and_separators_are_escaped(formatter: logging.Formatter) -> None:
    line = formatter.format(record("api said: %s", HOSTILE + "\nforged level=info msg=ok"))
    for raw in RAW:
        assert raw not in line, repr(raw)
    assert line.isprintable()


def test_logfmt_shows_escapes_readably() -> None:
    line = logs.LogfmtFormatter().format(record("x\r\x1b\u2028"))
    assert 'msg="x\\r\\u001b\\u2028"' in line


@pytest.mark.parametrize("formatter", [logs.LogfmtFormatter(), logs.JsonFormatter()])
def test_every_field_is_capped(formatter: logging.Formatter) -> None:
    huge = "r" * 1_000_000  # a request_id from the API with no limit
    line = formatter.format(record("request_id %s", huge, request_id=huge))
    assert len(line) < 3 * logs.MAX_FIELD_CHARS
    assert "more chars]" in line


def test_json_lines_stay_json() -> None:
    line = logs.JsonFormatter().format(record("m", count=3, ratio=float("nan")))
    fields = json.loads(line)
    assert fields["count"] == 3 and fields["ratio"] == "nan"


def test_a_secret_added_at_runtime_is_redacted_everywhere() -> None:
    rotated = "pt-rotated-logs-8d2f41"
    logs.add_secret(rotated)
    logs.add_secret("ab")  # too short to redact: ordinary words would vanish
    rec = record("401: Authorization: Bearer %s", rotated, detail=f"echo {rotated}")
    assert logs.REDACT.filter(rec)
    for formatter in (logs.LogfmtFormatter(), logs.JsonFormatter()):
        line = formatter.format(rec)
        assert rotated not in line and "<redacted>" in line
        assert "ab" in formatter.format(record("abc"))
    assert logs.redact(f"x{rotated}y") == "x<redacted>y"


def test_a_secret_in_a_traceback_is_redacted() -> None:
    rotated = "pt-rotated-exc-a41c07"
    logs.add_secret(rotated)
    try:
        raise RuntimeError(f"bad token {rotated}")
    except RuntimeError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    line = logs.LogfmtFormatter().format(rec)
    assert rotated not in line and "RuntimeError" in line


def test_a_token_rotated_into_the_client_is_redacted_from_then_on() -> None:
    # issue 15 #10: a token re-read from api.token_file was never added to the redaction list.
    rotated = "pt-rotated-0123456789abcdef"
    client = QoderClient("https://api.qoder.com/api/v1/cloud", Secret("pt-first-0123456789"))
    assert rotated in logs.redact(f"echo {rotated}")  # not known yet
    client.set_token(Secret(rotated))
    line = logs.LogfmtFormatter().format(record("upstream echoed Bearer %s", rotated))
    assert rotated not in line and "<redacted>" in line
