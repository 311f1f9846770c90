"""Configuration: a YAML file plus the environment, validated into frozen dataclasses.

Every default is written once, here, as a named constant; the dataclasses, the reader and the
client's signature all take it from here.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .filters import (
    DEFAULT_METRICS,
    DEPLOYMENT_STATUSES,
    DiscoverFilter,
    MetricFilter,
    MetricsConfig,
    Selector,
    join_patterns,
)
from .models import MAX_CLOCK_SKEW
from .yamlreader import (
    IDENTIFIER,
    Reader,
    Secret,
    YamlFileError,
    format_duration,
    load_yaml_file,
    parse_duration,
)

__all__ = [
    "AccountConfig",
    "ApiConfig",
    "Config",
    "ConfigError",
    "DeploymentConfig",
    "Secret",
    "config_from_dict",
    "format_duration",
    "load_config",
    "parse_duration",
    "read_token_file",
]

DEFAULT_API_URL = "https://api.qoder.com/api/v1/cloud"
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_REQUESTS_PER_SECOND = 20.0
# Hostile-upstream bounds: what one answer may cost in bytes, time, pages and clock trust.
DEFAULT_MAX_RESPONSE_BYTES = 8 << 20
MIN_MAX_RESPONSE_BYTES = 64 << 10
MAX_MAX_RESPONSE_BYTES = 1 << 30
DEFAULT_DEADLINE = 30.0
DEFAULT_MAX_PAGES = 1000
DEFAULT_MAX_CLOCK_SKEW = MAX_CLOCK_SKEW  # models refuses times beyond the API's clock + this
DEFAULT_POLL_INTERVAL = 60.0
MIN_POLL_INTERVAL = 1.0
DEFAULT_LOOKBACK = 86400.0
DEFAULT_SESSIONS_TIMEOUT = 86400.0
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 64
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
    "metrics",
    "sessions",
    "sessions_timeout",
    "accounts",
)
_SESSIONS_MODES = ("auto", "always", "never")
_API_KEYS = (
    "url",
    "token",
    "token_file",
    "timeout",
    "max_retries",
    "requests_per_second",
    "max_response_size",
    "deadline",
    "max_pages",
    "max_clock_skew",
    "insecure",
    "workspace_id",
)
_ACCOUNT_KEYS = ("name", "api", "deployments", "discover", "lookback", "page_size", "concurrency")
# An account name is a label value and a state file suffix: short, no path separator.
_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_WORKSPACE_ID = re.compile(r"[!-~]{1,128}")  # an HTTP header value: printable ASCII
_DEPLOYMENT_KEYS = ("id", "lookback")
_DISCOVER_KEYS = ("include", "exclude")
_SELECTOR_KEYS = ("name", "agent_ids", "statuses")
_METRICS_KEYS = ("allowlist", "denylist", "failed_duration_histogram")

# Ids go into URL paths, so only characters that need no escaping are accepted after the prefix.
_DEPLOYMENT_ID = re.compile(r"dep_[A-Za-z0-9_-]+")
# A whole config file larger than this is a wrong path, not a configuration.
_MAX_CONFIG_BYTES = 16 << 20
# A token file is a few dozen bytes; anything bigger is a wrong path, not a token.
_MAX_TOKEN_FILE_BYTES = 64 * 1024
_LOOPBACK_NAMES = ("localhost", "localhost.")

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
    """How to reach and authenticate to the Qoder API, and how far to trust its answers."""

    url: str = DEFAULT_API_URL
    token: Secret = NO_TOKEN
    token_file: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND
    # Largest decompressed response body; a larger answer is an API error.
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # Total seconds for one request, reading the body included (timeout is per socket read).
    deadline: float = DEFAULT_DEADLINE
    # Pages read per listing before giving up on it.
    max_pages: int = DEFAULT_MAX_PAGES
    # Timestamps later than the API's clock plus this are invalid.
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW
    # Allow a plain http:// URL to a host other than loopback (the token then travels in clear).
    insecure: bool = False
    # Sent as the qoder-workspace-id header when set.
    workspace_id: str | None = None


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    api: ApiConfig
    deployments: tuple[DeploymentConfig, ...] = ()
    discover: bool = False
    poll_interval: float = DEFAULT_POLL_INTERVAL
    lookback: float = DEFAULT_LOOKBACK
    page_size: int = DEFAULT_PAGE_SIZE
    # Whether the file set page_size: an explicit 100 is not the default 100 to the feed.
    page_size_set: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    duration_buckets: tuple[float, ...] = DEFAULT_DURATION_BUCKETS
    state_file: str | None = None
    # discover: {include, exclude}; None with discover: true watches every deployment.
    discover_filter: DiscoverFilter | None = None
    metrics: MetricsConfig = DEFAULT_METRICS
    # Follow runs into their sessions: auto (runs without a status), always, never.
    sessions: str = "auto"
    sessions_timeout: float = DEFAULT_SESSIONS_TIMEOUT  # unresolved longer: outcome unknown
    # Several accounts in one process (accounts.py); then api/deployments/discover are unused.
    accounts: tuple[AccountConfig, ...] = ()


@dataclass(frozen=True)
class AccountConfig:
    """One of `accounts`: its own API, deployments and overrides of the top-level settings."""

    name: str
    api: ApiConfig
    deployments: tuple[DeploymentConfig, ...] = ()
    discover: bool = False
    lookback: float = DEFAULT_LOOKBACK
    page_size: int = DEFAULT_PAGE_SIZE
    page_size_set: bool = False
    concurrency: int = DEFAULT_CONCURRENCY


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML configuration file at path."""
    try:
        data = load_yaml_file(path, _MAX_CONFIG_BYTES)
    except YamlFileError as exc:
        raise ConfigError([str(exc)]) from None
    base_dir = os.path.dirname(os.path.abspath(path))
    return config_from_dict(data, env, base_dir=base_dir, source=path)


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
    reader = _ConfigReader(os.environ if env is None else env, base_dir)
    config = reader.read(data, source)
    if reader.errors:
        raise ConfigError(reader.render_errors())
    return config


def _token_is_clean(token: str) -> bool:
    # A token lands in an HTTP header: spaces, control or non-ASCII characters would break it.
    return all(33 <= ord(char) <= 126 for char in token)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ConfigReader(Reader):
    """The exporter's configuration: the shared Reader plus ${VAR} expansion and the sections."""

    def __init__(
        self, env: Mapping[str, str], base_dir: str | None, *, in_account: bool = False
    ) -> None:
        super().__init__()
        self.env = env
        self.base_dir = base_dir
        self.in_account = in_account
        pat = env.get(TOKEN_ENV)
        if pat:
            self.secrets.append(pat.strip())

    # Scalars: strings may hold ${VAR} references.

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
            if not IDENTIFIER.fullmatch(name):
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
        text = super().string(path, value, secret=secret)
        if text is None:
            return None
        expanded = self.expand(path, text, secret=secret)
        return None if expanded is None else expanded[0]

    # Sections

    def read(self, data: object, source: str | None) -> Config:
        if not isinstance(data, dict):
            got = "an empty document" if data is None else self.show(data)
            self.error(source or "<top level>", f"the configuration must be a mapping, got {got}")
            return Config(api=ApiConfig())
        top = self.mapping("", data, _TOP_KEYS) or {}
        several = top.get("accounts") is not None
        api = ApiConfig() if several else self.api(top.get("api"))
        deployments, deployment_lookbacks = self.deployments(top.get("deployments"))
        discover, discover_filter = self.discover(top.get("discover"))
        poll_interval = self.duration(
            "poll_interval", top.get("poll_interval"), DEFAULT_POLL_INTERVAL, MIN_POLL_INTERVAL
        )
        lookback = self.duration("lookback", top.get("lookback"), DEFAULT_LOOKBACK)
        page_size = self.integer(
            "page_size", top.get("page_size"), DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE
        )
        concurrency = self.integer(
            "concurrency", top.get("concurrency"), DEFAULT_CONCURRENCY, 1, MAX_CONCURRENCY
        )
        buckets = self.buckets(top.get("duration_buckets"))
        state_file = self.path("state_file", top.get("state_file"))
        metrics = self.metrics(top.get("metrics"))
        sessions = top.get("sessions", "auto")
        if sessions not in _SESSIONS_MODES:
            self.error("sessions", f"must be one of auto, always, never, got {self.show(sessions)}")
        timeout = self.duration(
            "sessions_timeout", top.get("sessions_timeout"), DEFAULT_SESSIONS_TIMEOUT, 60.0
        )

        # Cross-field rules, checked only when both sides were valid on their own.
        if not self.failed("poll_interval", "lookback") and lookback < poll_interval:
            raw_lookback = top.get("lookback")
            shown = self.show(raw_lookback)
            if raw_lookback is None:
                shown = f"the default {format_duration(lookback)}"
            self.error(
                "lookback",
                f"must be at least poll_interval ({format_duration(poll_interval)}), got {shown}",
            )
        if not self.failed("poll_interval"):
            for path, (seconds, raw) in deployment_lookbacks.items():
                if seconds < poll_interval:
                    self.error(
                        path,
                        f"must be at least poll_interval ({format_duration(poll_interval)}), "
                        f"got {self.show(raw)}",
                    )
        listed = top.get("deployments")
        if several:
            for key in ("api", "deployments", "discover"):
                if key in top:
                    self.error(key, "set it in each of accounts, not at the top level")
        elif not self.failed("discover") and (listed is None or isinstance(listed, list)):
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
            page_size_set=top.get("page_size") is not None,
            concurrency=concurrency,
            duration_buckets=buckets,
            state_file=state_file,
            discover_filter=discover_filter,
            metrics=metrics,
            sessions=sessions if sessions in _SESSIONS_MODES else "auto",
            sessions_timeout=timeout,
            accounts=self.accounts(top, poll_interval, lookback, page_size, concurrency),
        )

    def discover(self, value: object) -> tuple[bool, DiscoverFilter | None]:
        """discover: true/false, or a mapping of include/exclude selectors (discover on)."""
        if not isinstance(value, dict):
            return self.boolean("discover", value, False), None
        section = self.mapping("discover", value, _DISCOVER_KEYS) or {}
        include = self.selector("discover.include", section.get("include"))
        exclude = self.selector("discover.exclude", section.get("exclude"))
        if include is None and exclude is None:
            return True, None
        return True, DiscoverFilter(include, exclude)

    def selector(self, path: str, value: object) -> Selector | None:
        if value is None:
            return None
        section = self.mapping(path, value, _SELECTOR_KEYS)
        if section is None:
            return None
        if not value:
            self.error(path, "must set at least one of: " + ", ".join(_SELECTOR_KEYS))
            return None
        name = None
        if section.get("name") is not None:
            text = self.string(f"{path}.name", section["name"])
            name = None if text is None else self.regex(f"{path}.name", text)
        agent_ids = self.words(f"{path}.agent_ids", section.get("agent_ids"))
        statuses = self.words(f"{path}.statuses", section.get("statuses"), DEPLOYMENT_STATUSES)
        return Selector(
            name,
            None if agent_ids is None else frozenset(agent_ids),
            None if statuses is None else frozenset(statuses),
        )

    def regex(self, path: str, text: str) -> re.Pattern[str] | None:
        if not text:
            self.error(path, "must not be empty")
            return None
        try:
            return re.compile(text)
        except re.error as exc:
            self.error(path, f"invalid regular expression {self.show(text)}: {exc}")
            return None

    def words(
        self, path: str, value: object, choices: tuple[str, ...] | None = None
    ) -> list[str] | None:
        """A non-empty list of non-empty strings, each one of choices when given."""
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            self.error(path, f"must be a non-empty list of strings, got {self.show(value)}")
            return None
        result: list[str] = []
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            text = self.string(item_path, item)
            if text is None:
                continue
            if not text:
                self.error(item_path, "must not be empty")
            elif choices is not None and text not in choices:
                self.error(item_path, f"must be one of {', '.join(choices)}, got {self.show(text)}")
            else:
                result.append(text)
        return result if len(result) == len(value) else None

    def metrics(self, value: object) -> MetricsConfig:
        if value is None:
            return MetricsConfig()
        section = self.mapping("metrics", value, _METRICS_KEYS)
        if section is None:
            return MetricsConfig()
        lists: dict[str, re.Pattern[str] | None] = {}
        for key in ("allowlist", "denylist"):
            path = f"metrics.{key}"
            patterns = self.words(path, section.get(key))
            if patterns is None:
                lists[key] = None
                continue
            compiled = [self.regex(f"{path}[{i}]", p) for i, p in enumerate(patterns)]
            lists[key] = join_patterns(patterns) if all(compiled) else None
        if section.get("allowlist") is not None and section.get("denylist") is not None:
            # kube-state-metrics refuses both too: which one wins would be a guess.
            self.error("metrics", "set either metrics.allowlist or metrics.denylist, not both")
            lists = {}
        return MetricsConfig(
            MetricFilter(lists.get("allowlist"), lists.get("denylist")),
            self.boolean(
                "metrics.failed_duration_histogram",
                section.get("failed_duration_histogram"),
                True,
            ),
        )

    def accounts(
        self, top: dict[str, object], poll: float, lookback: float, page_size: int, workers: int
    ) -> tuple[AccountConfig, ...]:
        """The accounts list; each one read by a reader of its own, its errors prefixed."""
        value = top.get("accounts")
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            self.error("accounts", f"must be a non-empty list of accounts, got {self.show(value)}")
            return ()
        result: list[AccountConfig] = []
        names: dict[str, str] = {}
        for index, item in enumerate(value):
            path = f"accounts[{index}]"
            section = self.mapping(path, item, _ACCOUNT_KEYS)
            if section is None:
                continue
            sub = _ConfigReader(self.env, self.base_dir, in_account=True)
            account = sub.account(section, poll, lookback, page_size, workers)
            self.secrets.extend(sub.secrets)
            self.errors.extend((f"{path}.{p}", m) for p, m in sub.errors)
            if account.name in names:
                self.error(
                    f"{path}.name",
                    f"duplicate account name {account.name!r} (already at {names[account.name]})",
                )
            elif account.name:
                names[account.name] = path
                result.append(account)
        return tuple(result)

    def account(
        self, section: dict[str, object], poll: float, lookback: float, page_size: int, workers: int
    ) -> AccountConfig:
        name = self.string("name", section.get("name")) if "name" in section else None
        if name is None or not _ACCOUNT_NAME.fullmatch(name):
            shown = "is required" if name is None else f"got {self.show(name)}"
            self.error("name", f"must be 1-63 letters, digits, '_', '.' or '-' ({shown})")
            name = ""
        api = self.api(section.get("api"))
        deployments, lookbacks = self.deployments(section.get("deployments"))
        discover = self.boolean("discover", section.get("discover"), False)
        own_lookback = self.duration("lookback", section.get("lookback"), lookback)
        for path, (seconds, raw) in {**lookbacks, "lookback": (own_lookback, "")}.items():
            if path == "lookback" and section.get("lookback") is None:
                continue  # the top-level lookback, checked there
            if seconds < poll and not self.failed(path):
                shown = self.show(section.get("lookback") if path == "lookback" else raw)
                self.error(
                    path, f"must be at least poll_interval ({format_duration(poll)}), got {shown}"
                )
        if not self.failed("deployments", "discover") and bool(deployments) == discover:
            self.error("discover", "set either deployments or discover: true (exactly one)")
        return AccountConfig(
            name=name,
            api=api,
            deployments=deployments,
            discover=discover,
            lookback=own_lookback,
            page_size=self.integer(
                "page_size", section.get("page_size"), page_size, 1, MAX_PAGE_SIZE
            ),
            page_size_set=section.get("page_size") is not None,
            concurrency=self.integer(
                "concurrency", section.get("concurrency"), workers, 1, MAX_CONCURRENCY
            ),
        )

    def api(self, value: object) -> ApiConfig:
        section = {} if value is None else self.mapping("api", value, _API_KEYS)
        api_ok = section is not None
        section = section or {}
        # The token first, so that every later message can mask it.
        token, token_file = self.token(section.get("token"), section.get("token_file"), api_ok)
        insecure = self.boolean("api.insecure", section.get("insecure"), False)
        url = self.url(section.get("url"), insecure)
        timeout = self.duration("api.timeout", section.get("timeout"), DEFAULT_TIMEOUT)
        # Unset, the deadline grows with a long timeout rather than refusing the file.
        raw_deadline = section.get("deadline")
        deadline = self.duration("api.deadline", raw_deadline, max(DEFAULT_DEADLINE, timeout))
        if not self.failed("api.timeout", "api.deadline") and deadline < timeout:
            self.error(
                "api.deadline",
                f"must be at least api.timeout ({format_duration(timeout)}), "
                f"got {self.show(raw_deadline)}",
            )
        return ApiConfig(
            url=url,
            token=token,
            token_file=token_file,
            timeout=timeout,
            max_retries=self.integer(
                "api.max_retries", section.get("max_retries"), DEFAULT_MAX_RETRIES, 0, 10
            ),
            requests_per_second=self.rate(section.get("requests_per_second")),
            max_response_bytes=self.size(
                "api.max_response_size",
                section.get("max_response_size"),
                DEFAULT_MAX_RESPONSE_BYTES,
                MIN_MAX_RESPONSE_BYTES,
                MAX_MAX_RESPONSE_BYTES,
            ),
            deadline=deadline,
            max_pages=self.integer(
                "api.max_pages", section.get("max_pages"), DEFAULT_MAX_PAGES, 1, 100_000
            ),
            max_clock_skew=self.duration(
                "api.max_clock_skew", section.get("max_clock_skew"), DEFAULT_MAX_CLOCK_SKEW
            ),
            insecure=insecure,
            workspace_id=self.workspace_id(section.get("workspace_id")),
        )

    def workspace_id(self, value: object) -> str | None:
        if value is None:
            return None
        text = self.string("api.workspace_id", value)
        if text is not None and not _WORKSPACE_ID.fullmatch(text):
            self.error(
                "api.workspace_id",
                f"must be 1-128 printable ASCII characters without spaces, got {self.show(text)}",
            )
            return None
        return text

    def url(self, value: object, insecure: bool) -> str:
        url = DEFAULT_API_URL
        if value is not None:
            text = self.string("api.url", value)
            if text is not None:
                url = self.check_url(text, "", insecure) or url
        # Per account, the process-wide QODER_API_URL and QODER_PAT would be ambiguous.
        override = "" if self.in_account else self.env.get(URL_ENV, "").strip()
        if override:
            url = self.check_url(override, f"from {URL_ENV}: ", insecure) or url
        return url

    def check_url(self, text: str, origin: str, insecure: bool) -> str | None:
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
        if parts.scheme == "http" and not insecure and not _is_loopback(parts.hostname):
            # A typo'd scheme would send the token in clear to whoever is on the path.
            self.error(
                "api.url",
                f"{origin}plain http:// sends the token unencrypted: use https://, "
                f"or set api.insecure: true, got {self.show(text)}",
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
        pat = "" if self.in_account else self.env.get(TOKEN_ENV, "").strip()
        if pat:
            if not _token_is_clean(pat):
                self.error("api.token", f"{TOKEN_ENV} must be printable ASCII without spaces")
            return Secret(pat), None
        if api_ok:
            env = (
                " or api.token_file"
                if self.in_account
                else (f", api.token_file or the {TOKEN_ENV} environment variable")
            )
            self.error("api.token", f"no token: set api.token{env}")
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
            return DEFAULT_REQUESTS_PER_SECOND
        expected = "a number greater than 0 and at most 1000"
        rate = self.real("api.requests_per_second", value, expected)
        if rate is None:
            return DEFAULT_REQUESTS_PER_SECOND
        if not 0 < rate <= 1000:
            self.error("api.requests_per_second", f"must be {expected}, got {self.show(value)}")
            return DEFAULT_REQUESTS_PER_SECOND
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
