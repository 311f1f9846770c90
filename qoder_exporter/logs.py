"""Logging in logfmt or JSON, with secrets scrubbed from every record and every field safe.

Every field is cut to a bounded length and every character that could forge a line or move
the cursor on a terminal (C0/C1 controls, DEL, line and paragraph separators, bidi and other
format characters, lone surrogates) is written as an escape, never raw.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import unicodedata
from datetime import datetime, timezone

_RESERVED = frozenset(vars(logging.makeLogRecord({})))
REDACTED = "<redacted>"
# Shorter "secrets" would redact ordinary words out of every line.
_MIN_SECRET_LENGTH = 4
# One log field (a message, a request id from the API) never takes more than this; a
# traceback gets more room since its last lines are the useful ones.
MAX_FIELD_CHARS = 4096
MAX_TRACEBACK_CHARS = 16384
# Unicode categories never written raw: controls, format (bidi overrides, zero-width),
# line/paragraph separators, surrogates, private use.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co"})


class RedactFilter(logging.Filter):
    """Replace known secret values wherever they would appear in a log line."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        # Copy-on-write: readers take the tuple without a lock while a rotation adds one.
        self._secrets: tuple[str, ...] = ()

    def add(self, secret: str) -> None:
        if len(secret) < _MIN_SECRET_LENGTH:
            return
        with self._lock:
            if secret not in self._secrets:
                # Longest first: a secret that contains another is replaced whole.
                self._secrets = tuple(sorted((*self._secrets, secret), key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            record.msg, record.args = self.redact(record.getMessage()), None
        return True


REDACT = RedactFilter()


def add_secret(value: str) -> None:
    """Redact value from every log line and every string the landing page shows from now on.

    For a token read at start-up, on reload, or rotated through token_file. Values shorter
    than 4 characters are ignored (they would redact ordinary words).
    """
    REDACT.add(value)


def redact(text: str) -> str:
    """text with every known secret replaced by <redacted>."""
    return REDACT.redact(text)


def _escape_char(c: str) -> str:
    code = ord(c)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def is_unsafe(c: str) -> bool:
    """True for a character that must not reach a terminal or a page raw."""
    return unicodedata.category(c) in _UNSAFE_CATEGORIES


def cap(text: str, limit: int) -> str:
    """text cut to at most limit characters plus a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} more chars]"


def _time(record: logging.LogRecord) -> str:
    ts = datetime.fromtimestamp(record.created, timezone.utc)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


_LOGFMT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(c in ' ="\\' or is_unsafe(c) for c in text):
        return text
    out = (_LOGFMT_ESCAPES.get(c) or (_escape_char(c) if is_unsafe(c) else c) for c in text)
    return '"' + "".join(out) + '"'


def _plain_number(value: object) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _fields(record: logging.LogRecord, exc: str | None, *, extras: bool) -> dict[str, object]:
    fields: dict[str, object] = {
        "ts": _time(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": cap(redact(record.getMessage()), MAX_FIELD_CHARS),
    }
    for key, value in vars(record).items() if extras else ():
        if key not in _RESERVED and key not in fields:
            if not _plain_number(value):
                value = cap(redact(str(value)), MAX_FIELD_CHARS)
            fields[cap(key, 64)] = value
    if exc:
        # The end of a traceback names the error; keep it when cutting.
        text = redact(exc)
        if len(text) > MAX_TRACEBACK_CHARS:
            text = f"[{len(text) - MAX_TRACEBACK_CHARS} chars cut]…" + text[-MAX_TRACEBACK_CHARS:]
        fields["exc"] = text
    return fields


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else None
        fields = _fields(record, exc, extras=False)
        return " ".join(f"{_logfmt_value(k)}={_logfmt_value(v)}" for k, v in fields.items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else None
        # ensure_ascii writes every non-ASCII character (C1, U+2028, bidi) as \\uXXXX; DEL is
        # the one ASCII control json leaves raw.
        return json.dumps(_fields(record, exc, extras=True), default=str).replace("\x7f", "\\u007f")


def setup(level: str, fmt: str) -> None:
    """Configure the root logger once, writing to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(REDACT)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # urllib3 logs full URLs at debug; they carry no token but are noise at our debug level.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
