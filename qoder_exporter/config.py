"""Configuration: a YAML file plus the environment, validated into frozen dataclasses."""

from __future__ import annotations

import difflib
import hmac
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import yaml

DEFAULT_API_URL = "https://api.qoder.com/api/v1/cloud"
# Seconds to hours: Cloud Agent runs range from a quick check to multi-hour jobs.
DEFAULT_DURATION_BUCKETS: tuple[float, ...] = (
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
)

TOKEN_ENV = "QODER_PAT"
URL_ENV = "QODER_API_URL"

_MASK = "********"

_TOP_KEYS = (
    "api",
    "deployments",
    "discover",
    "poll_interval",
    "lookback",
    "page_size",
    "concurrency",
    "duration_buckets",
    "state_file",
    "sessions",
    "sessions_timeout",
)
_SESSIONS_MODES = ("auto", "always", "never")
_API_KEYS = ("url", "token", "token_file", "timeout", "max_retries", "requests_per_second")
_DEPLOYMENT_KEYS = ("id", "lookback")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Ids go into URL paths, so only characters that need no escaping are accepted after the prefix.
_DEPLOYMENT_ID = re.compile(r"dep_[A-Za-z0-9_-]+")
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

# A token file is a few dozen bytes; anything bigger is a wrong path, not a token.
_MAX_TOKEN_FILE_BYTES = 64 * 1024
# Shorter "secrets" would redact ordinary words out of error messages.
_MIN_REDACTED_LENGTH = 4


class Secret:
    """A string that never shows itself in repr, str, format or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the real value, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, format_spec: str) -> str:
        return _MASK

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


# Shared default: a Secret is never mutated, so one instance serves every ApiConfig.
NO_TOKEN = Secret("")


class ConfigError(Exception):
    """Every problem found in a configuration, each written as 'key.path: message'."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "invalid configuration:\n  - " + "\n  - ".join(self.errors)


@dataclass(frozen=True)
class DeploymentConfig:
    """One watched deployment, with its optional lookback override in seconds."""

    id: str
    lookback: float | None = None


@dataclass(frozen=True)
class ApiConfig:
    """How to reach and authenticate to the Qoder API."""

    url: str = DEFAULT_API_URL
    token: Secret = NO_TOKEN
    token_file: str | None = None
    timeout: float = 10.0
    max_retries: int = 2
    requests_per_second: float = 20.0

    @property
    def connect_timeout(self) -> float:
        """Seconds to wait for a TCP connection: short, since a healthy API connects fast."""
        return min(self.timeout, 5.0)


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    api: ApiConfig
    deployments: tuple[DeploymentConfig, ...] = ()
    discover: bool = False
    poll_interval: float = 60.0
    lookback: float = 86400.0
    page_size: int = 100
    concurrency: int = 8
    duration_buckets: tuple[float, ...] = DEFAULT_DURATION_BUCKETS
    state_file: str | None = None
    # Follow runs into their sessions: auto (runs without a status), always, never.
    sessions: str = "auto"
    sessions_timeout: float = 86400.0  # unresolved longer than this: outcome unknown


def parse_duration(text: str | int | float) -> float:
    """Parse a Prometheus-style duration ("30s", "1h30m", "500ms") or bare seconds into seconds."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f"a duration must be a string like '30s' or a number, got {_show(text)}")
    if not isinstance(text, str):
        try:
            seconds = float(text)
        except OverflowError:
            raise ValueError(f"duration {_show(text)} is too large") from None
        if math.isnan(seconds):
            raise ValueError("a duration must be a number, got nan")
        if seconds < 0:
            raise ValueError(f"a duration must not be negative, got {_show(text)}")
        if math.isinf(seconds):
            raise ValueError(f"duration {_show(text)} is too large")
        return seconds
    value = text.strip()
    if not value:
        raise ValueError("empty duration: expected e.g. 30s, 5m, 24h or 1h30m")
    if value.startswith("-"):
        raise ValueError(f"a duration must not be negative, got {_show(text)}")
    if _BARE_SECONDS.fullmatch(value):
        return _finite_duration(float(value), text)
    total = 0.0
    position = 0
    previous_unit = math.inf
    while position < len(value):
        match = _DURATION_PART.match(value, position)
        if match is None:
            raise ValueError(f"invalid duration {_show(text)}: expected e.g. 30s, 5m, 24h or 1h30m")
        number, unit = match.groups()
        if unit not in _DURATION_UNITS:
            hint = f"unknown unit {unit!r}: use ms, s, m, h, d, w or y"
            raise _DurationError(f"invalid duration {_show(text)}: {hint}", hint)
        size = _DURATION_UNITS[unit]
        if size >= previous_unit:
            hint = "units go from largest to smallest, each at most once, like 1h30m"
            raise _DurationError(f"invalid duration {_show(text)}: {hint}", hint)
        previous_unit = size
        total += float(number) * size
        position = match.end()
    return _finite_duration(total, text)


class _DurationError(ValueError):
    """A duration that looks right but breaks a specific rule worth naming in messages."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _finite_duration(seconds: float, text: str) -> float:
    if math.isinf(seconds):
        raise ValueError(f"duration {_show(text)} is too large")
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


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML configuration file at path."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([f"{path}: cannot read the configuration file: {reason}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (bad byte at offset {exc.start})"]) from None
    try:
        # Safe: _StrictLoader is a SafeLoader that only adds the duplicate-key check.
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_error(path, exc)]) from None
    except yaml.YAMLError as exc:
        # One line per error: a reader error's text spans lines.
        detail = " ".join(str(exc).split())
        raise ConfigError([f"{path}: invalid YAML: {detail}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: invalid YAML: nested too deeply"]) from None
    except ValueError as exc:
        # PyYAML lets a few constructor failures escape raw (huge ints, impossible dates);
        # the advice after ';' in them is for Python programmers, not for config authors.
        reason = str(exc).split(";")[0]
        raise ConfigError([f"{path}: invalid YAML value: {reason}"]) from None
    base_dir = os.path.dirname(os.path.abspath(path))
    return config_from_dict(data, env, base_dir=base_dir, source=path)


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, but a key given twice in one mapping is an error."""


def _construct_strict_mapping(
    loader: _StrictLoader, node: yaml.MappingNode
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
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {_show(key)}",
                key_node.start_mark,
            )
    data: dict[object, object] = {}
    yield data
    data.update(loader.construct_mapping(node))


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _construct_strict_mapping)


def _yaml_error(path: str, exc: yaml.MarkedYAMLError) -> str:
    # Built from the parts rather than str(exc), whose source snippet could show a token.
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    message = f"{where}: invalid YAML: {exc.problem or 'syntax error'}"
    if exc.context:
        context_mark = exc.context_mark
        if context_mark is not None and context_mark is not mark:
            line, column = context_mark.line + 1, context_mark.column + 1
            message += f" ({exc.context} at line {line}, column {column})"
        else:
            message += f" ({exc.context})"
    return message


def _read_token(path: str) -> tuple[str, str | None]:
    """The token in a file, or what is wrong with it (never the token itself)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        return "", f"cannot read {path!r}: {exc.strerror or exc}"
    if len(raw) > _MAX_TOKEN_FILE_BYTES:
        return "", f"{path!r} is too large to hold a token"
    try:
        # utf-8-sig: editors on Windows like to start files with a byte order mark.
        text = raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        return "", f"{path!r} is not UTF-8 text"
    if not text:
        return "", f"{path!r} is empty"
    if not _token_is_clean(text):
        return text, f"the token in {path!r} must be printable ASCII without spaces"
    return text, None


def read_token_file(path: str) -> Secret:
    """Re-read api.token_file at run time (rotation); ConfigError says what is wrong."""
    text, problem = _read_token(path)
    if problem is not None:
        raise ConfigError([f"api.token_file: {problem}"])
    return Secret(text)


def config_from_dict(
    data: object,
    env: Mapping[str, str] | None = None,
    *,
    base_dir: str | None = None,
    source: str | None = None,
) -> Config:
    """Validate an already-parsed configuration document; source names it in top-level errors."""
    reader = _Reader(os.environ if env is None else env, base_dir)
    config = reader.read(data, source)
    if reader.errors:
        raise ConfigError(reader.render_errors())
    return config


def _show(value: object) -> str:
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


def _kind(value: object) -> str:
    """Describe a value by kind only, for fields whose content is secret."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _child(path: str, key: object) -> str:
    if isinstance(key, str) and _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_show(key)}]"


def _token_is_clean(token: str) -> bool:
    # A token lands in an HTTP header: spaces, control or non-ASCII characters would break it.
    return all(33 <= ord(char) <= 126 for char in token)


class _Reader:
    """Walks one document, collecting every error with its key path."""

    def __init__(self, env: Mapping[str, str], base_dir: str | None) -> None:
        self.env = env
        self.base_dir = base_dir
        self.errors: list[tuple[str, str]] = []
        self.secrets: list[str] = []
        pat = env.get(TOKEN_ENV)
        if pat:
            self.secrets.append(pat.strip())

    def error(self, path: str, message: str) -> None:
        self.errors.append((path, message))

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if len(secret) >= _MIN_REDACTED_LENGTH:
                text = text.replace(secret, _MASK)
        return text

    def show(self, value: object) -> str:
        """Like _show, but a token pasted into the wrong field is masked before truncation."""
        return _show(self.redact(value) if isinstance(value, str) else value)

    def render_errors(self) -> list[str]:
        # Again at the end: the token may be learned after a message that quotes it was written.
        return [f"{path}: {self.redact(message)}" for path, message in self.errors]

    # Scalars

    def expand(self, path: str, text: str, *, secret: bool = False) -> tuple[str, bool] | None:
        """Expand ${VAR}, ${VAR:-default} and $$; return the text and whether a VAR was used."""
        out: list[str] = []
        referenced = False
        ok = True
        position = 0
        while True:
            dollar = text.find("$", position)
            if dollar < 0:
                out.append(text[position:])
                break
            out.append(text[position:dollar])
            following = text[dollar + 1 : dollar + 2]
            if following == "$":
                out.append("$")
                position = dollar + 2
                continue
            if following != "{":
                self.error(
                    path,
                    f"'$' at character {dollar + 1} must start ${{VAR}}; write $$ for a literal $",
                )
                ok = False
                position = dollar + 1
                continue
            end = text.find("}", dollar + 2)
            if end < 0:
                self.error(path, f"unterminated '${{' at character {dollar + 1}")
                ok = False
                break
            inner = text[dollar + 2 : end]
            position = end + 1
            referenced = True
            name, has_default, default = inner.partition(":-")
            if not _IDENTIFIER.fullmatch(name):
                shown = "" if secret else f" {'${' + inner + '}'!r}"
                self.error(
                    path,
                    f"invalid variable reference{shown} at character {dollar + 1}: "
                    "expected ${VAR} or ${VAR:-default}",
                )
                ok = False
                continue
            value = self.env.get(name)
            if has_default and not value:
                value = default
            if value is None:
                self.error(
                    path,
                    f"environment variable {name} is not set "
                    f"(write ${{{name}:-default}} to give a default)",
                )
                ok = False
                continue
            out.append(value)
        return ("".join(out), referenced) if ok else None

    def scalar(self, path: str, value: object) -> tuple[object, bool] | None:
        """Expand a string value; other values pass through unchanged."""
        if isinstance(value, str):
            return self.expand(path, value)
        return value, False

    def string(self, path: str, value: object, *, secret: bool = False) -> str | None:
        if not isinstance(value, str):
            shown = _kind(value) if secret else self.show(value)
            self.error(path, f"must be a string, got {shown}")
            return None
        expanded = self.expand(path, value, secret=secret)
        return None if expanded is None else expanded[0]

    def integer(self, path: str, value: object, default: int, low: int, high: int) -> int:
        if value is None:
            return default
        scalar = self.scalar(path, value)
        if scalar is None:
            return default
        number, referenced = scalar
        # Numbers may come from ${VAR}, whose expansion is necessarily text.
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
        except _DurationError as exc:
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

    def mapping(self, path: str, value: object, keys: Sequence[str]) -> dict[str, object] | None:
        """Check value is a mapping of known keys; return the known keys' values."""
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, got {self.show(value)}")
            return None
        known: dict[str, object] = {}
        for key, item in value.items():
            if isinstance(key, str) and key in keys:
                known[key] = item
                continue
            close = difflib.get_close_matches(key, keys, n=1) if isinstance(key, str) else []
            hint = f"did you mean {close[0]!r}?" if close else "expected one of: " + ", ".join(keys)
            self.error(_child(path, key), f"unknown key ({hint})")
        return known

    # Sections

    def read(self, data: object, source: str | None) -> Config:
        if not isinstance(data, dict):
            got = "an empty document" if data is None else self.show(data)
            self.error(source or "<top level>", f"the configuration must be a mapping, got {got}")
            return Config(api=ApiConfig())
        top = self.mapping("", data, _TOP_KEYS) or {}
        api = self.api(top.get("api"))
        deployments, deployment_lookbacks = self.deployments(top.get("deployments"))
        discover = self.boolean("discover", top.get("discover"), False)
        poll_interval = self.duration("poll_interval", top.get("poll_interval"), 60.0, 1.0)
        lookback = self.duration("lookback", top.get("lookback"), 86400.0)
        page_size = self.integer("page_size", top.get("page_size"), 100, 1, 1000)
        concurrency = self.integer("concurrency", top.get("concurrency"), 8, 1, 64)
        buckets = self.buckets(top.get("duration_buckets"))
        state_file = self.path("state_file", top.get("state_file"))
        sessions = top.get("sessions", "auto")
        if sessions not in _SESSIONS_MODES:
            self.error("sessions", f"must be one of auto, always, never, got {self.show(sessions)}")
        timeout = self.duration("sessions_timeout", top.get("sessions_timeout"), 86400.0, 60.0)

        # Cross-field rules, checked only when both sides were valid on their own.
        fields_ok = not any(p in ("poll_interval", "lookback") for p, _ in self.errors)
        if fields_ok and lookback < poll_interval:
            raw_lookback = top.get("lookback")
            shown = self.show(raw_lookback)
            if raw_lookback is None:
                shown = f"the default {format_duration(lookback)}"
            self.error(
                "lookback",
                f"must be at least poll_interval ({format_duration(poll_interval)}), got {shown}",
            )
        if not any(p == "poll_interval" for p, _ in self.errors):
            for path, (seconds, raw) in deployment_lookbacks.items():
                if seconds < poll_interval:
                    self.error(
                        path,
                        f"must be at least poll_interval ({format_duration(poll_interval)}), "
                        f"got {self.show(raw)}",
                    )
        listed = top.get("deployments")
        discover_ok = not any(p == "discover" for p, _ in self.errors)
        if discover_ok and (listed is None or isinstance(listed, list)):
            if listed and discover:
                self.error("discover", "set either deployments or discover: true, not both")
            elif not listed and not discover:
                self.error("deployments", "list deployment ids or set discover: true")

        return Config(
            api=api,
            deployments=deployments,
            discover=discover,
            poll_interval=poll_interval,
            lookback=lookback,
            page_size=page_size,
            concurrency=concurrency,
            duration_buckets=buckets,
            state_file=state_file,
            sessions=sessions if sessions in _SESSIONS_MODES else "auto",
            sessions_timeout=timeout,
        )

    def api(self, value: object) -> ApiConfig:
        section = {} if value is None else self.mapping("api", value, _API_KEYS)
        api_ok = section is not None
        section = section or {}
        # The token first, so that every later message can mask it.
        token, token_file = self.token(section.get("token"), section.get("token_file"), api_ok)
        url = self.url(section.get("url"))
        return ApiConfig(
            url=url,
            token=token,
            token_file=token_file,
            timeout=self.duration("api.timeout", section.get("timeout"), 10.0),
            max_retries=self.integer("api.max_retries", section.get("max_retries"), 2, 0, 10),
            requests_per_second=self.rate(section.get("requests_per_second")),
        )

    def url(self, value: object) -> str:
        url = DEFAULT_API_URL
        if value is not None:
            text = self.string("api.url", value)
            if text is not None:
                url = self.check_url(text, "") or url
        override = self.env.get(URL_ENV, "").strip()
        if override:
            url = self.check_url(override, f"from {URL_ENV}: ") or url
        return url

    def check_url(self, text: str, origin: str) -> str | None:
        try:
            parts = urlsplit(text)
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            parts, port_ok = None, False
        clean = not any(char.isspace() or ord(char) < 32 for char in text)
        if (
            parts is None
            or not port_ok
            or not clean
            or parts.scheme not in ("http", "https")
            or not parts.hostname
        ):
            self.error(
                "api.url",
                f"{origin}must be an http:// or https:// URL with a host, got {self.show(text)}",
            )
            return None
        if parts.username is not None or parts.password is not None:
            # The URL is not echoed: its user info may hold a password.
            self.error("api.url", f"{origin}must not contain a user name or password")
            return None
        if parts.query or parts.fragment:
            self.error(
                "api.url", f"{origin}must not contain a query or fragment, got {self.show(text)}"
            )
            return None
        return text.rstrip("/")

    def token(self, token: object, token_file: object, api_ok: bool) -> tuple[Secret, str | None]:
        if token is not None and token_file is not None:
            self.error("api.token", "set either api.token or api.token_file, not both")
            return Secret(""), None
        if token is not None:
            text = self.string("api.token", token, secret=True)
            if text is None:
                return Secret(""), None
            self.secrets.append(text)
            if not text:
                self.error("api.token", "must not be empty")
            elif not _token_is_clean(text):
                self.error("api.token", "must be printable ASCII without spaces")
            return Secret(text), None
        if token_file is not None:
            return self.token_from_file(token_file)
        pat = self.env.get(TOKEN_ENV, "").strip()
        if pat:
            if not _token_is_clean(pat):
                self.error("api.token", f"{TOKEN_ENV} must be printable ASCII without spaces")
            return Secret(pat), None
        if api_ok:
            self.error(
                "api.token",
                f"no token: set api.token, api.token_file or the {TOKEN_ENV} environment variable",
            )
        return Secret(""), None

    def path(self, key: str, value: object) -> str | None:
        """An optional file path, relative to the config file's directory."""
        if value is None:
            return None
        name = self.string(key, value)
        if name is None:
            return None
        if not name:
            self.error(key, "must not be empty")
            return None
        return os.path.join(self.base_dir, name) if self.base_dir else name

    def token_from_file(self, value: object) -> tuple[Secret, str | None]:
        name = self.string("api.token_file", value)
        if name is None:
            return Secret(""), None
        if not name:
            self.error("api.token_file", "must not be empty")
            return Secret(""), None
        path = os.path.join(self.base_dir, name) if self.base_dir else name
        text, problem = _read_token(path)
        if text:
            self.secrets.append(text)
        if problem is not None:
            self.error("api.token_file", problem)
            return Secret(""), path
        return Secret(text), path

    def rate(self, value: object) -> float:
        if value is None:
            return 20.0
        expected = "a number greater than 0 and at most 1000"
        rate = self.real("api.requests_per_second", value, expected)
        if rate is None:
            return 20.0
        if not 0 < rate <= 1000:
            self.error("api.requests_per_second", f"must be {expected}, got {self.show(value)}")
            return 20.0
        return rate

    def deployments(
        self, value: object
    ) -> tuple[tuple[DeploymentConfig, ...], dict[str, tuple[float, object]]]:
        """Read the deployment list; also return each override lookback for cross-checks."""
        lookbacks: dict[str, tuple[float, object]] = {}
        if value is None:
            return (), lookbacks
        if not isinstance(value, list):
            self.error("deployments", f"must be a list of deployment ids, got {self.show(value)}")
            return (), lookbacks
        result: list[DeploymentConfig] = []
        first_seen: dict[str, str] = {}
        for index, item in enumerate(value):
            item_path = f"deployments[{index}]"
            lookback: float | None = None
            raw_id: object
            if isinstance(item, str):
                id_path, raw_id = item_path, item
            elif isinstance(item, dict):
                section = self.mapping(item_path, item, _DEPLOYMENT_KEYS) or {}
                id_path, raw_id = f"{item_path}.id", section.get("id")
                raw_lookback = section.get("lookback")
                if raw_lookback is not None:
                    errors_before = len(self.errors)
                    lookback = self.duration(f"{item_path}.lookback", raw_lookback, 0.0)
                    if len(self.errors) == errors_before:
                        lookbacks[f"{item_path}.lookback"] = (lookback, raw_lookback)
                if raw_id is None:
                    self.error(id_path, "is required (the deployment id, like 'dep_0123abcd')")
                    continue
            else:
                self.error(
                    item_path,
                    "must be a deployment id or a mapping with id and lookback, "
                    f"got {self.show(item)}",
                )
                continue
            deployment_id = self.string(id_path, raw_id)
            if deployment_id is None:
                continue
            if not _DEPLOYMENT_ID.fullmatch(deployment_id):
                self.error(
                    id_path,
                    f"must be a deployment id like 'dep_0123abcd', got {self.show(deployment_id)}",
                )
                continue
            if deployment_id in first_seen:
                self.error(
                    id_path,
                    f"duplicate deployment id {deployment_id!r} "
                    f"(already listed at {first_seen[deployment_id]})",
                )
                continue
            first_seen[deployment_id] = item_path
            result.append(DeploymentConfig(deployment_id, lookback))
        return tuple(result), lookbacks

    def buckets(self, value: object) -> tuple[float, ...]:
        if value is None:
            return DEFAULT_DURATION_BUCKETS
        if not isinstance(value, list) or not value:
            self.error(
                "duration_buckets",
                "must be a non-empty list of bucket upper bounds in seconds, "
                f"got {self.show(value)}",
            )
            return DEFAULT_DURATION_BUCKETS
        result: list[float] = []
        previous: tuple[float, str, object] | None = None
        errors_before = len(self.errors)
        for index, item in enumerate(value):
            path = f"duration_buckets[{index}]"
            bound = self.real(path, item, "a positive number of seconds")
            if bound is None:
                continue
            if bound == math.inf:
                self.error(path, "must be finite: the +Inf bucket is always added")
                continue
            if bound <= 0:
                self.error(path, f"must be a positive number of seconds, got {self.show(item)}")
                continue
            if previous is not None and bound <= previous[0]:
                self.error(
                    path,
                    f"must be greater than {previous[1]} ({self.show(previous[2])}), "
                    f"got {self.show(item)}",
                )
            previous = (bound, path, item)
            result.append(bound)
        if len(self.errors) != errors_before:
            return DEFAULT_DURATION_BUCKETS
        return tuple(result)
