"""Reading a YAML configuration file: strict loading and a Reader that checks values by key path.

Shared by config.py (the exporter's configuration) and webconfig.py (--web.config.file), so
that both word their errors alike ("key.path: must be ..., got ..."), suggest the nearest key
for a typo, parse durations and sizes the same way and never show a secret in a message.
"""

from __future__ import annotations

import difflib
import hmac
import math
import re
from collections.abc import Iterator, Mapping, Sequence

import yaml

MASK = "********"

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Bounded digit counts keep int() away from Python's 4300-digit conversion limit.
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT_TEXT = re.compile(r"[+-]?[0-9]{1,18}(\.[0-9]{1,18})?")

_DURATION_UNITS: dict[str, float] = {
    "y": 365 * 86400.0,
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]+)")
_BARE_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")

_SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_SIZE = re.compile(r"([0-9]{1,12})\s*([A-Za-z]*)")

# Shorter "secrets" would redact ordinary words out of error messages.
_MIN_REDACTED_LENGTH = 4
# Quoted source text in a PyYAML message (an alias, tag or anchor name): it may be a token
# written as `*pt-...` or `!pt-...`. Short quotes ('\t', ':') and token kinds ('<scalar>') stay.
_QUOTED = re.compile(r"\s*(?<!\S)(?:'(?!<)[^']{3,}'|\"(?!<)[^\"]{3,}\")(?![^\s;,.)])")
_SIGIL_PROBLEMS = (
    "found undefined alias",
    "could not determine a constructor",
    "found undefined tag",
)
_DUPLICATE_KEY = "found duplicate key"
_SIGIL_HINT = "a value starting with * or ! is YAML syntax: put it in quotes"


class Secret:
    """A string that never shows itself in repr, str, format or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the real value, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, format_spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, so comparing tokens does not leak how much of them matched.
        return hmac.compare_digest(
            self._value.encode("utf-8", "surrogatepass"),
            other._value.encode("utf-8", "surrogatepass"),
        )

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class YamlFileError(Exception):
    """A file that cannot be read or parsed; the message names the file, never its text."""


# Loading


def load_yaml_file(path: str, max_bytes: int) -> object:
    """The parsed document in the file at path (None for an empty file)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise YamlFileError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise YamlFileError(f"{path}: larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlFileError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        # Safe: StrictLoader is a SafeLoader that only adds the duplicate-key check.
        return yaml.load(text, Loader=StrictLoader)
    except yaml.MarkedYAMLError as exc:
        raise YamlFileError(_yaml_error(path, exc)) from None
    except yaml.reader.ReaderError as exc:
        raise YamlFileError(
            f"{path}: invalid YAML: character #x{_codepoint(exc.character)} "
            f"at offset {exc.position} is not allowed"
        ) from None
    except yaml.YAMLError as exc:
        # One line per error: the text of an unmarked error spans lines.
        detail = _without_source(" ".join(str(exc).split()))
        raise YamlFileError(f"{path}: invalid YAML: {detail}") from None
    except RecursionError:
        raise YamlFileError(f"{path}: invalid YAML: nested too deeply") from None
    except ValueError as exc:
        # PyYAML lets a few constructor failures escape raw (huge ints, impossible dates);
        # the advice after ';' in them is for Python programmers, not for config authors.
        reason = str(exc).split(";")[0]
        raise YamlFileError(f"{path}: invalid YAML value: {reason}") from None


def _codepoint(character: object) -> str:
    if isinstance(character, str) and len(character) == 1:
        return f"{ord(character):04x}"
    return "?"


class StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, but a key given twice in one mapping is an error."""


def _construct_strict_mapping(
    loader: StrictLoader, node: yaml.MappingNode
) -> Iterator[dict[object, object]]:
    # PyYAML silently keeps the last of two equal keys; in a config that hides a mistake.
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<" merges may legitimately repeat keys; the explicit key wins.
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # unhashable: construct_mapping reports it
        if duplicate:
            shown = show_value(key) if isinstance(key, str) and IDENTIFIER.fullmatch(key) else ""
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"{_DUPLICATE_KEY} {shown}".strip(),
                key_node.start_mark,
            )
    data: dict[object, object] = {}
    yield data
    data.update(loader.construct_mapping(node))


StrictLoader.add_constructor("tag:yaml.org,2002:map", _construct_strict_mapping)


def _yaml_error(path: str, exc: yaml.MarkedYAMLError) -> str:
    # Built from the parts rather than str(exc), whose source snippet could show a token.
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    problem = exc.problem or "syntax error"
    if not problem.startswith(_DUPLICATE_KEY):  # ours, and it shows only plain key names
        problem = _without_source(problem)
    message = f"{where}: invalid YAML: {problem}"
    if exc.context:
        context = _without_source(exc.context)
        context_mark = exc.context_mark
        if context_mark is not None and context_mark is not mark:
            line, column = context_mark.line + 1, context_mark.column + 1
            message += f" ({context} at line {line}, column {column})"
        else:
            message += f" ({context})"
    if problem.startswith(_SIGIL_PROBLEMS):
        message += f" ({_SIGIL_HINT})"
    return message


def _without_source(text: str) -> str:
    """PyYAML's message minus the names it quotes from the file (an alias may be a token)."""
    return _QUOTED.sub("", text)


# Durations and sizes


class DurationError(ValueError):
    """A duration that looks right but breaks a specific rule worth naming in messages."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def parse_duration(text: str | int | float) -> float:
    """Parse a Prometheus-style duration ("30s", "1h30m", "500ms") or bare seconds into seconds."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(
            f"a duration must be a string like '30s' or a number, got {show_value(text)}"
        )
    if not isinstance(text, str):
        try:
            seconds = float(text)
        except OverflowError:
            raise ValueError(f"duration {show_value(text)} is too large") from None
        if math.isnan(seconds):
            raise ValueError("a duration must be a number, got nan")
        if seconds < 0:
            raise ValueError(f"a duration must not be negative, got {show_value(text)}")
        if math.isinf(seconds):
            raise ValueError(f"duration {show_value(text)} is too large")
        return seconds
    value = text.strip()
    if not value:
        raise ValueError("empty duration: expected e.g. 30s, 5m, 24h or 1h30m")
    if value.startswith("-"):
        raise ValueError(f"a duration must not be negative, got {show_value(text)}")
    if _BARE_SECONDS.fullmatch(value):
        return _finite_duration(float(value), text)
    total = 0.0
    position = 0
    previous_unit = math.inf
    while position < len(value):
        match = _DURATION_PART.match(value, position)
        if match is None:
            raise ValueError(
                f"invalid duration {show_value(text)}: expected e.g. 30s, 5m, 24h or 1h30m"
            )
        number, unit = match.groups()
        if unit not in _DURATION_UNITS:
            hint = f"unknown unit {unit!r}: use ms, s, m, h, d, w or y"
            raise DurationError(f"invalid duration {show_value(text)}: {hint}", hint)
        size = _DURATION_UNITS[unit]
        if size >= previous_unit:
            hint = "units go from largest to smallest, each at most once, like 1h30m"
            raise DurationError(f"invalid duration {show_value(text)}: {hint}", hint)
        previous_unit = size
        total += float(number) * size
        position = match.end()
    return _finite_duration(total, text)


def _finite_duration(seconds: float, text: str) -> float:
    if math.isinf(seconds):
        raise ValueError(f"duration {show_value(text)} is too large")
    return seconds


def format_duration(seconds: float) -> str:
    """Write seconds the Prometheus way ("1h30m", "500ms"), for messages."""
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return "".join(parts)


def parse_size(value: str | int) -> int:
    """Parse a byte count: plain bytes (an integer) or a number with B, KiB, MiB or GiB."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative")
        return value
    match = _SIZE.fullmatch(value.strip())
    if match is None or (match.group(2) or "B") not in _SIZE_UNITS:
        raise ValueError("not a size")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"]


def format_size(size: int) -> str:
    """The largest binary unit that writes size exactly ("8MiB", "1500B")."""
    for unit in ("GiB", "MiB", "KiB"):
        if size and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return f"{size}B"


# Describing values


def show_value(value: object) -> str:
    """Describe a value for an error message: YAML spelling for scalars, a kind otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int) and value.bit_length() > 128:
        return "a very large integer"
    if isinstance(value, (str, int, float)):
        text = repr(value)
        return text if len(text) <= 80 else text[:76] + "...'"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "an empty list" if not value else "a list"
    return f"a {type(value).__name__}"


def kind_of(value: object) -> str:
    """Describe a value by kind only, for fields whose content may be secret."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string" if value.strip() else "an empty string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def child_path(path: str, key: object) -> str:
    """The key path of key under path: a.b for plain names, a['odd key'] otherwise."""
    if isinstance(key, str) and IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{show_value(key)}]"


# The reader


class Reader:
    """Walks one document, collecting every error with its key path; values read by kind.

    Each value method takes the key path and the raw value, and returns the checked value,
    or the default (or None) after recording an error: one pass reports every problem.
    """

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.secrets: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append((path, message))

    def failed(self, *paths: str) -> bool:
        """Whether an error was recorded at one of paths (for cross-field checks)."""
        return any(p in paths for p, _ in self.errors)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if len(secret) >= _MIN_REDACTED_LENGTH:
                text = text.replace(secret, MASK)
        return text

    def show(self, value: object) -> str:
        """Like show_value, but a token pasted into the wrong field is masked first."""
        return show_value(self.redact(value) if isinstance(value, str) else value)

    def render_errors(self) -> list[str]:
        # Again at the end: a secret may be learned after a message that quotes it was written.
        return [f"{path}: {self.redact(message)}" for path, message in self.errors]

    def scalar(self, path: str, value: object) -> tuple[object, bool] | None:
        """The value to check, and whether it came from text substitution (then it is text)."""
        return value, False

    def mapping(
        self,
        path: str,
        value: object,
        keys: Sequence[str],
        unsupported: Mapping[str, str] | None = None,
    ) -> dict[str, object] | None:
        """Check value is a mapping of known keys; return the known keys' values."""
        if not isinstance(value, dict):
            self.error(path or "<top level>", f"must be a mapping, got {self.show(value)}")
            return None
        known: dict[str, object] = {}
        for key, item in value.items():
            if isinstance(key, str) and key in keys:
                known[key] = item
                continue
            child = child_path(path, key)
            if unsupported and child in unsupported:
                self.error(child, unsupported[child])
                continue
            close = difflib.get_close_matches(key, keys, n=1) if isinstance(key, str) else []
            hint = f"did you mean {close[0]!r}?" if close else "expected one of: " + ", ".join(keys)
            self.error(child, f"unknown key ({hint})")
        return known

    def string(self, path: str, value: object, *, secret: bool = False) -> str | None:
        if not isinstance(value, str):
            shown = kind_of(value) if secret else self.show(value)
            self.error(path, f"must be a string, got {shown}")
            return None
        return value

    def choice(self, path: str, value: object, default: str, choices: Sequence[str]) -> str:
        """One of a few fixed words."""
        if value is None:
            return default
        if isinstance(value, str) and value in choices:
            return value
        listed = " or ".join(choices) if len(choices) == 2 else "one of " + ", ".join(choices)
        self.error(path, f"must be {listed}, got {self.show(value)}")
        return default

    def integer(self, path: str, value: object, default: int, low: int, high: int) -> int:
        if value is None:
            return default
        scalar = self.scalar(path, value)
        if scalar is None:
            return default
        number, referenced = scalar
        if referenced and isinstance(number, str) and _INT_TEXT.fullmatch(number.strip()):
            number = int(number)
        if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
            self.error(path, f"must be an integer from {low} to {high}, got {self.show(number)}")
            return default
        return number

    def real(self, path: str, value: object, expected: str) -> float | None:
        """Read a finite-or-infinite number (not a bool); None after reporting an error."""
        scalar = self.scalar(path, value)
        if scalar is None:
            return None
        number, referenced = scalar
        if referenced and isinstance(number, str) and _FLOAT_TEXT.fullmatch(number.strip()):
            number = float(number)
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            self.error(path, f"must be {expected}, got {self.show(number)}")
            return None
        try:
            result = float(number)
        except OverflowError:
            result = math.inf
        if math.isnan(result):
            self.error(path, f"must be {expected}, got {self.show(number)}")
            return None
        return result

    def boolean(self, path: str, value: object, default: bool) -> bool:
        if value is None:
            return default
        scalar = self.scalar(path, value)
        if scalar is None:
            return default
        flag, referenced = scalar
        if referenced and isinstance(flag, str) and flag.strip().lower() in ("true", "false"):
            return flag.strip().lower() == "true"
        if not isinstance(flag, bool):
            self.error(path, f"must be true or false, got {self.show(flag)}")
            return default
        return flag

    def duration(self, path: str, value: object, default: float, minimum: float = 0.0) -> float:
        if value is None:
            return default
        scalar = self.scalar(path, value)
        if scalar is None:
            return default
        raw = scalar[0]
        hint = ""
        try:
            if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
                raise ValueError("not a duration")
            seconds = parse_duration(raw)
        except DurationError as exc:
            seconds, hint = 0.0, f" ({exc.hint})"
        except ValueError:
            seconds = 0.0
        if seconds <= 0:
            self.error(path, f"must be a positive duration like 10s, got {self.show(raw)}{hint}")
            return default
        if seconds < minimum:
            self.error(path, f"must be at least {format_duration(minimum)}, got {self.show(raw)}")
            return default
        return seconds

    def size(self, path: str, value: object, default: int, low: int, high: int) -> int:
        """A byte count from low to high: plain bytes or a number with B, KiB, MiB or GiB."""
        if value is None:
            return default
        scalar = self.scalar(path, value)
        if scalar is None:
            return default
        raw, referenced = scalar
        if referenced and isinstance(raw, str) and _INT_TEXT.fullmatch(raw.strip()):
            raw = int(raw)
        try:
            if isinstance(raw, bool) or not isinstance(raw, (str, int)):
                raise ValueError("not a size")
            size = parse_size(raw)
        except ValueError:
            self.error(path, f"must be a size like 512KiB or 8MiB, got {self.show(raw)}")
            return default
        if not low <= size <= high:
            self.error(
                path,
                f"must be from {format_size(low)} to {format_size(high)}, got {self.show(raw)}",
            )
            return default
        return size
