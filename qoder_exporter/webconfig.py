"""The --web.config.file: TLS and basic auth for the HTTP server, as exporter-toolkit reads it.

The schema is a subset of prometheus/exporter-toolkit's `web-configuration.md`:

    tls_server_config:
      cert_file: server.crt            # relative paths are read from this file's directory
      key_file: server.key
      min_version: TLS12               # TLS12 (default) or TLS13
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.crt
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000
    basic_auth_users:
      prometheus: $2b$10$...           # bcrypt hash

Keys exporter-toolkit knows but this exporter does not implement are refused by name;
`http_server_config.http2` is accepted and ignored (the server speaks HTTP/1.1).
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import logging
import os
import re
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .yamlreader import Reader, YamlFileError, child_path, kind_of, load_yaml_file

log = logging.getLogger(__name__)

TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit's allow-list of extra response headers, with the values it accepts (None: any).
ALLOWED_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

DEFAULT_MIN_VERSION = "TLS12"
DEFAULT_MAX_VERSION = "TLS13"
DEFAULT_CLIENT_AUTH = "NoClientCert"

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
)
_HTTP_KEYS = ("headers", "http2")
# Known to exporter-toolkit, not implemented here: refused with a reason rather than ignored,
# so that a file written for a Go exporter never silently loses a protection.
_UNSUPPORTED = {
    "rate_limit": "not supported by qoder-exporter (concurrent requests are capped at 16)",
    "tls_server_config.cert": "inline certificates are not supported: use cert_file",
    "tls_server_config.key": "inline keys are not supported: use key_file",
    "tls_server_config.client_ca": "inline CAs are not supported: use client_ca_file",
    "tls_server_config.client_allowed_sans": "not supported by qoder-exporter",
    "tls_server_config.cipher_suites": (
        "not supported by qoder-exporter: Python's ssl defaults apply "
        "(forward-secret suites only; TLS 1.3 suites are not configurable)"
    ),
    "tls_server_config.curve_preferences": "not supported by qoder-exporter",
    "tls_server_config.prefer_server_cipher_suites": "not supported by qoder-exporter",
}
_OLD_TLS = ("TLS10", "TLS11")
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")

# $2a$, $2b$ and $2y$ (htpasswd -B) hashes: cost, then 22 salt and 31 hash characters.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# bcrypt reads at most 72 bytes; longer passwords are refused, never truncated.
MAX_PASSWORD_BYTES = 72
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.@-]+")
_MAX_FILE_BYTES = 1024 * 1024
_AUTH_CACHE_SIZE = 64
_DEFAULT_COST = 10


class WebConfigError(Exception):
    """Every problem found in a web config file, each written as 'key.path: message'."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors: list[str] = list(errors)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"invalid web config {self.source}:\n  - " + "\n  - ".join(self.errors)


@dataclass(frozen=True)
class TLSServerConfig:
    """The server certificate, TLS versions and client-certificate policy; paths absolute."""

    cert_file: str
    key_file: str
    client_auth_type: str = DEFAULT_CLIENT_AUTH
    client_ca_file: str | None = None
    min_version: str = DEFAULT_MIN_VERSION
    max_version: str = DEFAULT_MAX_VERSION

    def files(self) -> tuple[str, ...]:
        """The files the TLS context is built from."""
        extra = (self.client_ca_file,) if self.client_ca_file else ()
        return (self.cert_file, self.key_file, *extra)


@dataclass(frozen=True)
class WebConfig:
    """A validated web config: TLS (optional), basic auth users and extra response headers."""

    tls: TLSServerConfig | None = None
    basic_auth_users: Mapping[str, str] = field(default_factory=dict, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)


def load_web_config(path: str) -> WebConfig:
    """Read and validate the web config file at path (the certificates are not opened)."""
    try:
        data = load_yaml_file(path, _MAX_FILE_BYTES)
    except YamlFileError as exc:
        raise WebConfigError(path, [str(exc)]) from None
    return web_config_from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)), source=path)


def web_config_from_dict(data: object, *, base_dir: str, source: str) -> WebConfig:
    """Validate a parsed web config document; relative file paths are taken from base_dir."""
    reader = _WebReader(base_dir)
    config = reader.read(data)
    if reader.errors:
        raise WebConfigError(source, reader.render_errors())
    return config


class _WebReader(Reader):
    """The web config's sections over the shared Reader (no ${VAR} expansion: hashes hold $)."""

    def __init__(self, base_dir: str) -> None:
        super().__init__()
        self.base_dir = base_dir

    def section(self, path: str, value: object, keys: Sequence[str]) -> dict[str, Any]:
        """An optional mapping section; keys exporter-toolkit knows are refused with a reason."""
        if value is None:
            return {}
        return self.mapping(path, value, keys, _UNSUPPORTED) or {}

    def text(self, path: str, value: object) -> str | None:
        """A non-empty string whose content is never shown (it may be a hash or a password)."""
        if not isinstance(value, str) or not value.strip():
            self.error(path, f"must be a non-empty string, got {kind_of(value)}")
            return None
        return value

    def file(self, path: str, value: object) -> str | None:
        name = self.text(path, value)
        if name is None:
            return None
        full = os.path.join(self.base_dir, os.path.expanduser(name))
        if not os.path.isfile(full):
            self.error(path, f"no such file: {full}")
            return None
        return full

    def read(self, data: object) -> WebConfig:
        top = self.section("", data, _TOP_KEYS)
        tls = self.tls(top["tls_server_config"]) if "tls_server_config" in top else None
        headers = self.headers(
            self.section("http_server_config", top.get("http_server_config"), _HTTP_KEYS)
        )
        users = self.users(top.get("basic_auth_users"))
        return WebConfig(tls=tls, basic_auth_users=users, headers=headers)

    def tls(self, value: object) -> TLSServerConfig | None:
        path = "tls_server_config"
        if value is None:
            self.error(path, "empty: give cert_file and key_file, or remove the section")
            return None
        section = self.section(path, value, _TLS_KEYS)
        if not isinstance(value, dict):
            return None
        errors_before = len(self.errors)
        cert = key = None
        for name in ("cert_file", "key_file"):
            if name not in section:
                self.error(f"{path}.{name}", "missing (required with tls_server_config)")
        if "cert_file" in section:
            cert = self.file(f"{path}.cert_file", section["cert_file"])
        if "key_file" in section:
            key = self.file(f"{path}.key_file", section["key_file"])
        versions: dict[str, str | None] = {}
        for name, default in (
            ("min_version", DEFAULT_MIN_VERSION),
            ("max_version", DEFAULT_MAX_VERSION),
        ):
            version = section.get(name, default)
            if version in _OLD_TLS:
                self.error(f"{path}.{name}", f"{version} is not allowed: use TLS12 or TLS13")
                versions[name] = None
                continue
            before = len(self.errors)
            versions[name] = self.choice(f"{path}.{name}", version, default, tuple(TLS_VERSIONS))
            if len(self.errors) > before:
                versions[name] = None
        low, high = versions["min_version"], versions["max_version"]
        if low in TLS_VERSIONS and high in TLS_VERSIONS and TLS_VERSIONS[low] > TLS_VERSIONS[high]:
            self.error(f"{path}.max_version", "must not be lower than min_version")
        auth = section.get("client_auth_type", DEFAULT_CLIENT_AUTH)
        if auth in _UNVERIFIED_CLIENT_AUTH:
            self.error(
                f"{path}.client_auth_type",
                f"{auth} accepts certificates without verifying them and is not supported: "
                "use RequireAndVerifyClientCert or VerifyClientCertIfGiven",
            )
        else:
            auth = self.choice(
                f"{path}.client_auth_type", auth, DEFAULT_CLIENT_AUTH, tuple(CLIENT_AUTH_TYPES)
            )
        ca = None
        if "client_ca_file" in section:
            ca = self.file(f"{path}.client_ca_file", section["client_ca_file"])
            if auth == "NoClientCert":
                self.error(
                    f"{path}.client_ca_file",
                    "set, but client_auth_type is NoClientCert: "
                    "set client_auth_type: RequireAndVerifyClientCert",
                )
        elif auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
            self.error(f"{path}.client_ca_file", f"required with client_auth_type {auth}")
        if len(self.errors) > errors_before or cert is None or key is None:
            return None
        assert isinstance(auth, str) and low is not None and high is not None
        return TLSServerConfig(
            cert_file=cert,
            key_file=key,
            client_auth_type=auth,
            client_ca_file=ca,
            min_version=low,
            max_version=high,
        )

    def headers(self, section: dict[str, Any]) -> dict[str, str]:
        self.boolean("http_server_config.http2", section.get("http2"), False)
        value = section.get("headers")
        path = "http_server_config.headers"
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, got {kind_of(value)}")
            return {}
        headers: dict[str, str] = {}
        for name, text in value.items():
            child = _name_path(path, name)
            if name not in ALLOWED_HEADERS:
                self.error(
                    child, "this header cannot be set: allowed are " + ", ".join(ALLOWED_HEADERS)
                )
                continue
            if self.text(child, text) is None:
                continue
            assert isinstance(text, str)
            if not text.isascii() or any(ord(c) < 32 or ord(c) == 127 for c in text):
                self.error(child, "must be printable ASCII (it is sent as a header value)")
                continue
            allowed = ALLOWED_HEADERS[name]
            if allowed is not None and text.lower() not in allowed:
                self.error(child, f"must be one of {', '.join(allowed)}, got {self.show(text)}")
                continue
            headers[name] = text
        return headers

    def users(self, value: object) -> dict[str, str]:
        path = "basic_auth_users"
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping of user: bcrypt hash, got {kind_of(value)}")
            return {}
        users: dict[str, str] = {}
        for user, hashed in value.items():
            if not isinstance(user, str) or not user:
                self.error(child_path(path, user), "a user name must be a non-empty string")
                continue
            child = _name_path(path, user)
            if ":" in user:
                self.error(child, "a basic auth user name cannot contain ':'")
            elif not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
                # The value is not shown: it may be a password pasted in place of its hash.
                self.error(
                    child,
                    "must be a bcrypt hash ($2b$ or $2y$, cost 4 to 31), "
                    "like htpasswd -nBC 10 USER prints",
                )
            else:
                users[user] = hashed
        if users and _import_bcrypt() is None:
            self.error(
                path,
                "checking passwords needs the bcrypt package, which is not installed: "
                "pip install qoder-exporter[web]",
            )
        return users


def _name_path(path: str, name: object) -> str:
    """Header and user names read plainly (a.X-Frame-Options), odd ones quoted."""
    if isinstance(name, str) and _PLAIN_NAME.fullmatch(name):
        return f"{path}.{name}"
    return child_path(path, name)


def _import_bcrypt() -> ModuleType | None:
    try:
        import bcrypt
    except ImportError:
        return None
    return bcrypt


def server_context(tls: TLSServerConfig, source: str) -> ssl.SSLContext:
    """A server-side SSLContext for tls; WebConfigError names the key whose file is bad."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    context.verify_mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
    # Client-initiated renegotiation is a cheap way to make a server do expensive work.
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        # An empty password, so that an encrypted key fails instead of prompting on a tty.
        context.load_cert_chain(tls.cert_file, tls.key_file, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(source, [_cert_chain_error(tls, exc)]) from None
    if tls.client_ca_file:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(
                source,
                [f"tls_server_config.client_ca_file: cannot load the CA: {_ssl_reason(exc)}"],
            ) from None
    return context


def _cert_chain_error(tls: TLSServerConfig, exc: Exception) -> str:
    # OpenSSL says only "PEM lib": find out which of the two files is at fault.
    try:
        ssl.create_default_context(cafile=tls.cert_file)
    except (OSError, ssl.SSLError) as cert_exc:
        return (
            "tls_server_config.cert_file: not a PEM certificate "
            f"({tls.cert_file}: {_ssl_reason(cert_exc)})"
        )
    return (
        "tls_server_config.key_file: not an unencrypted PEM private key matching cert_file "
        f"({tls.key_file}: {_ssl_reason(exc)})"
    )


def _ssl_reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class BasicAuth:
    """Checks `Authorization: Basic` headers against bcrypt hashes.

    An unknown user costs one bcrypt check against a dummy hash of the highest cost among the
    users, and a wrong password for a user whose hash is cheaper costs that same check on
    top, so that timing does not tell which users exist (users whose costs differ are warned
    about at load: the cheap check itself still shows, a little). Passwords over 72 bytes are
    refused outright: bcrypt would truncate them (before 4.1) or raise ValueError (since).
    Successes are cached, so that a Prometheus scraping every few seconds costs one bcrypt
    check per config, not one per scrape: the key is an HMAC, under a per-process random key,
    of the length-prefixed user, stored hash and password, so no two different credentials
    share a key (CVE-2022-46146 was fields running together) and the cache holds no
    password-derived value an attacker could brute-force offline. Failures are never cached.
    """

    def __init__(self, users: Mapping[str, str]) -> None:
        bcrypt = _import_bcrypt()
        if bcrypt is None:
            raise RuntimeError("bcrypt is not installed: pip install qoder-exporter[web]")
        self._bcrypt: Any = bcrypt
        self._users = {user: hashed.encode("ascii") for user, hashed in users.items()}
        costs = {user: _cost(hashed) for user, hashed in users.items()}
        top = max(costs.values(), default=_DEFAULT_COST)
        self._dummy = _dummy_hash(top)
        self._cheaper = frozenset(user for user, cost in costs.items() if cost < top)
        if self._cheaper:
            log.warning(
                "basic_auth_users: bcrypt costs differ (%s): a user with a cheaper hash can be "
                "told apart by response time; hash every password with the same cost",
                ", ".join(str(cost) for cost in sorted(set(costs.values()))),
            )
        self._cache_key = os.urandom(32)
        self._cache: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        # One bcrypt check at a time: a flood of bad passwords takes one core, not all.
        self._check_lock = threading.Lock()

    def check(self, authorization: str | None) -> str | None:
        """The user name if the header carries valid credentials, else None."""
        credentials = _parse_basic(authorization)
        if credentials is None:
            return None
        user, password = credentials
        if len(password) > MAX_PASSWORD_BYTES:
            return None
        hashed = self._users.get(user)
        if hashed is None:
            self._checkpw(password, self._dummy)  # the same work as for a known user
            return None
        key = self._key(user, hashed, password)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return user
        if not self._checkpw(password, hashed):
            if user in self._cheaper:
                self._checkpw(password, self._dummy)  # as long as the costliest user's check
            return None
        with self._cache_lock:
            self._cache[key] = None
            while len(self._cache) > _AUTH_CACHE_SIZE:
                self._cache.popitem(last=False)
        return user

    def _checkpw(self, password: bytes, hashed: bytes) -> bool:
        with self._check_lock:
            try:
                return bool(self._bcrypt.checkpw(password, hashed))
            except ValueError:  # bcrypt >= 4.1 on a password over 72 bytes, or a bad hash
                return False

    def _key(self, user: str, hashed: bytes, password: bytes) -> bytes:
        mac = hmac.new(self._cache_key, digestmod=hashlib.sha256)
        for part in (user.encode("utf-8"), hashed, password):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()


def _parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def _cost(hashed: str) -> int:
    """The cost of a hash that matched _BCRYPT_HASH ($2b$10$...)."""
    return int(hashed[4:6])


def _dummy_hash(cost: int) -> bytes:
    """A well-formed hash of the given cost that no password matches."""
    return f"$2b${cost:02d}${'.' * 53}".encode("ascii")


@dataclass(frozen=True)
class ActiveWebConfig:
    """A web config with what the server needs per connection: TLS context, authenticator."""

    config: WebConfig
    context: ssl.SSLContext | None
    auth: BasicAuth | None

    @property
    def headers(self) -> Mapping[str, str]:
        return self.config.headers


def activate(config: WebConfig, source: str) -> ActiveWebConfig:
    """Build the TLS context and authenticator of config (opening its certificate files)."""
    context = server_context(config.tls, source) if config.tls else None
    auth = BasicAuth(config.basic_auth_users) if config.basic_auth_users else None
    return ActiveWebConfig(config, context, auth)


_Fingerprint = tuple[tuple[int, int, int] | None, ...]


def _fingerprint(paths: Sequence[str]) -> _Fingerprint:
    stats: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stats.append(None)
        else:
            stats.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stats)


class WebConfigWatcher:
    """The web config file, re-read when it or a certificate file it names changes.

    `refresh()` is cheap (a stat per file) and is called for each connection and request. A
    file that fails to load keeps the previous config in force and is logged once; it is
    tried again when a watched file changes again.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        config = load_web_config(path)
        self._current = activate(config, path)
        self._watched = self._files(config)
        self._seen = _fingerprint(self._watched)
        self._lock = threading.Lock()
        if config.basic_auth_users and config.tls is None:
            log.warning(
                "web config %s: basic auth without tls_server_config sends passwords in clear",
                path,
            )

    @property
    def current(self) -> ActiveWebConfig:
        return self._current

    @property
    def tls(self) -> bool:
        return self._current.context is not None

    def _files(self, config: WebConfig) -> tuple[str, ...]:
        return (self.path, *(config.tls.files() if config.tls else ()))

    def refresh(self) -> ActiveWebConfig:
        """Reload if a watched file changed; the config in force afterwards."""
        if _fingerprint(self._watched) == self._seen:
            return self._current
        # One thread reloads; the others go on with the config in force meanwhile.
        if not self._lock.acquire(blocking=False):
            return self._current
        try:
            fingerprint = _fingerprint(self._watched)
            if fingerprint != self._seen:
                self._reload(fingerprint)
        finally:
            self._lock.release()
        return self._current

    def _reload(self, fingerprint: _Fingerprint) -> None:
        self._seen = fingerprint
        try:
            config = load_web_config(self.path)
            # Watch the new file's certificates from now on, even if they fail to load below.
            if self._files(config) != self._watched:
                self._watched = self._files(config)
                self._seen = _fingerprint(self._watched)
            if (config.tls is None) != (self._current.context is None):
                raise WebConfigError(
                    self.path, ["tls_server_config: turning TLS on or off needs a restart"]
                )
            # An emptied or half-written file must not open the endpoints: refused like TLS.
            if self._current.auth is not None and not config.basic_auth_users:
                raise WebConfigError(
                    self.path, ["basic_auth_users: turning basic auth off needs a restart"]
                )
            active = activate(config, self.path)
        except WebConfigError as exc:
            log.error("web config not reloaded, the previous one stays in force: %s", exc)
            return
        self._current = active
        log.info("web config %s reloaded", self.path)
