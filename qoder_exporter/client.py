"""The only code that speaks HTTP to the Qoder API."""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import math
import os
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from . import __version__, logs
from .config import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_PAGES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_REQUESTS_PER_SECOND,
    DEFAULT_TIMEOUT,
    Secret,
)
from .models import MAX_CLOCK_SKEW, clean_text, valid_id

log = logging.getLogger(__name__)

T = TypeVar("T")

# Clients should not sleep for minutes inside a poll; longer waits are the poller's call.
MAX_RETRY_AFTER = 600.0
# Back-off for a 429 whose Retry-After is missing or unreadable (nan, garbage).
DEFAULT_RETRY_AFTER = 1.0
# A Date header further than this from our clock is not the API's time but a broken header.
MAX_DATE_OFFSET = 86400.0
# The Date header has 1 s resolution: two readings may disagree by that much.
DATE_RESOLUTION = 1.0
MAX_REDIRECTS = 3
MAX_CURSOR = 1024  # characters of an opaque next_page cursor
_CHUNK = 64 * 1024
# The error types the API documents (qoder-api.md 6.2); any other error.type is "other".
API_ERROR_TYPES = (
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "conflict_error",
    "api_error",
    "feature_not_available",
    "rate_limit_error",
    "overloaded_error",
    "http_error",
)
# Every value error_kind() can give: the error_type label of qoder_exporter_api_errors_total,
# known in advance so that each series starts at 0.
ERROR_KINDS = (
    "timeout",
    "connection",
    "invalid_response",
    "response_too_large",
    "pagination_loop",
    "too_many_pages",
    "redirect_refused",
    *API_ERROR_TYPES,
    "other",
)
_API_ERROR_SET = frozenset(API_ERROR_TYPES)


class QoderError(Exception):
    """Base of every error the client raises; never carries the token."""

    def __init__(self, message: str, *, status: int | None = None, endpoint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.endpoint = endpoint


class TransportError(QoderError):
    """No usable HTTP answer: connection refused or reset, timeout."""

    def __init__(self, message: str, *, endpoint: str, kind: str = "connection") -> None:
        super().__init__(message, endpoint=endpoint)
        self.kind = kind


class InvalidResponseError(QoderError):
    """The API answered with something we will not use; `kind` is its error_type label.

    invalid_response (not JSON, too deep, wrong shape), response_too_large, pagination_loop,
    too_many_pages, redirect_refused.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        status: int | None = None,
        kind: str = "invalid_response",
    ) -> None:
        super().__init__(message, status=status, endpoint=endpoint)
        self.kind = kind


class APIError(QoderError):
    """An error envelope (or an error status without one)."""

    def __init__(
        self, message: str, *, status: int, endpoint: str, error_type: str, request_id: str | None
    ) -> None:
        super().__init__(message, status=status, endpoint=endpoint)
        self.error_type = error_type
        self.request_id = request_id


class AuthenticationError(APIError):
    """401: the token is missing, wrong, expired or revoked."""


class PermissionDeniedError(APIError):
    """403: the token is valid but may not see this resource."""


class NotFoundError(APIError):
    """404: the deployment or run does not exist."""


class ServerError(APIError):
    """5xx after the retries were spent."""


class RateLimitedError(APIError):
    """429, or 503 with Retry-After: the caller should wait `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


_BY_STATUS: dict[int, type[APIError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
}


@dataclass(frozen=True, slots=True)
class Page:
    data: list[Any]
    has_more: bool
    last_id: str | None
    endpoint: str = ""
    next_page: str | None = None  # the record-only generation's opaque cursor


class PageCursor(str):
    """A `next_page` token: sent as `page=` where a plain cursor is sent as `after_id=`."""

    __slots__ = ()


RequestObserver = Callable[[str, str, float], None]  # (endpoint, code, seconds)


class TokenBucket:
    """Client-side rate budget shared by all poll workers."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate / 5)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()
        self.waits = 0
        self.waited_seconds = 0.0

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= 1
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            if wait > 0:
                self.waits += 1
                self.waited_seconds += wait
        # Sleep outside the lock: the debt is already booked, so waiters queue fairly.
        if wait > 0:
            time.sleep(wait)


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date (Date, Retry-After) as a unix time; None when absent or unreadable."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value.strip()).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds or an HTTP-date, capped; None when absent or unreadable.

    An HTTP-date is read against `now`: the server's own Date when it sent one (RFC 9110
    says so, and it keeps a skewed local clock out of it), else the local clock.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        when = parse_http_date(value)
        if when is None:
            return None
        seconds = when - (time.time() if now is None else now)
    if math.isnan(seconds):
        # float() reads "nan", and max()/min() pass a NaN through: no back-off at all.
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class QoderClient:
    """Typed, rate-limited, retrying access to the read endpoints of the Qoder API.

    Every answer is bounded: `deadline` seconds per request (connect, headers and the whole
    body, redirects included), `max_response_bytes` of decompressed body, `max_pages` per
    listing.
    """

    def __init__(
        self,
        base_url: str,
        token: Secret,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND,
        observer: RequestObserver | None = None,
        session: requests.Session | None = None,
        deadline: float = DEFAULT_DEADLINE,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_pages: int = DEFAULT_MAX_PAGES,
        max_clock_skew: float = MAX_CLOCK_SKEW,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._origin = _origin(self.base_url)
        self._token = token
        self.timeout = (min(timeout, 5.0), timeout)
        self.max_retries = max_retries
        self.deadline = deadline
        self.max_response_bytes = max_response_bytes
        self.max_pages = max_pages
        self.max_clock_skew = max_clock_skew
        self.bucket = TokenBucket(requests_per_second)
        self.observer = observer
        # Told of every failed attempt (endpoint, error kind), retried or not.
        self.on_error: Callable[[str, str], None] | None = None
        # The API's clock as its Date headers told it, as (unix time - our monotonic time):
        # the largest offset seen, so our estimate never runs backwards (see server_now).
        self._server_offset: float | None = None
        self._date_lock = threading.Lock()
        self.session = session or _own_session(self.base_url)
        self.session.headers["User-Agent"] = f"qoder-exporter/{__version__}"
        self.session.headers["Accept"] = "application/json"
        # Connections that tell the deadline watchdog their socket (see _Deadline).
        adapter = _DeadlineAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # requests' own retries are off: ours are bounded, jittered and observable.
        self.sleep: Callable[[float], None] = time.sleep
        self.monotonic: Callable[[], float] = time.monotonic

    def __repr__(self) -> str:
        return f"QoderClient(base_url={self.base_url!r}, token=<redacted>)"

    def server_now(self, local_now: float | None = None) -> float | None:
        """The API's current time from its Date headers, or None when unknown or untrusted.

        The poller keeps the store's clock at min(now, server_now() + 1), so the floor below
        which runs are dropped never runs ahead of the API. A Date header can be frozen or
        wrong, and a floor that follows it would stop and the store would keep every run
        from then on. Two rules keep the floor moving:
        - the estimate is the largest (Date - monotonic) offset ever seen plus our monotonic
          clock: it advances at least as fast as our monotonic clock, whatever the headers
          say (a frozen or backward Date is ignored, a forward jump is taken);
        - given our wall clock `local_now`, an estimate more than MAX_DATE_OFFSET away from
          it is not trusted (None: the caller falls back on its own clock), so the floor
          lags our clock by at most MAX_DATE_OFFSET plus the lookback.
        """
        offset = self._server_offset
        if offset is None:
            return None
        estimate = offset + self.monotonic()
        if local_now is not None and abs(estimate - local_now) > MAX_DATE_OFFSET:
            return None
        return estimate

    def not_after(self, local_now: float) -> float:
        """The latest timestamp a record may carry: the API's clock (else ours) plus skew."""
        server = self.server_now(local_now)
        return (local_now if server is None else server) + self.max_clock_skew

    def _note_date(self, value: str | None) -> float | None:
        date = parse_http_date(value)
        if date is None or not math.isfinite(date):
            return None
        with self._date_lock:
            offset = date - self.monotonic()
            if self._server_offset is None or offset > self._server_offset:
                self._server_offset = offset
        return date

    @property
    def token(self) -> Secret:
        return self._token

    def set_token(self, token: Secret) -> None:
        # A token rotated through api.token_file is redacted from logs and pages like the first.
        logs.add_secret(token.reveal())
        self._token = token

    # --- endpoints -------------------------------------------------------------------

    def list_deployments(self, *, limit: int = 100, after_id: str | None = None) -> Page:
        return self._page("list_deployments", "/deployments", limit, after_id, {})

    def get_deployment(self, deployment_id: str) -> dict[str, Any]:
        return self._object("get_deployment", _path("deployments", deployment_id))

    def list_runs(
        self,
        deployment_id: str,
        *,
        limit: int = 100,
        after_id: str | None = None,
        status: str | None = None,
    ) -> Page:
        params = {"status": status} if status else {}
        path = _path("deployments", deployment_id, "runs")
        return self._page("list_runs", path, limit, after_id, params)

    def list_all_runs(
        self, *, limit: int = 100, after_id: str | None = None, status: str | None = None
    ) -> Page:
        params = {"status": status} if status else {}
        return self._page("list_all_runs", "/deployment_runs", limit, after_id, params)

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._object("get_run_global", _path("deployment_runs", run_id))

    def list_sessions(
        self,
        deployment_id: str,
        *,
        created_gte: str,
        limit: int = 100,
        after_id: str | None = None,
    ) -> Page:
        params = {"deployment_id": deployment_id, "created_at[gte]": created_gte}
        return self._page("list_sessions", "/sessions", limit, after_id, params)

    def get_session(self, session_id: str) -> dict[str, Any]:
        return self._object("get_session", f"/sessions/{urllib.parse.quote(session_id, safe='')}")

    def list_session_events(
        self, session_id: str, *, types: tuple[str, ...], order: str = "desc", limit: int = 10
    ) -> Page:
        # types[] repeated, as the SDK sends it; requests appends `params` to this query.
        query = urllib.parse.urlencode([("types[]", t) for t in types])
        path = f"/sessions/{urllib.parse.quote(session_id, safe='')}/events?{query}"
        return self._page("list_session_events", path, limit, None, {"order": order})

    def pages(self, fetch: Callable[[str | None], Page]) -> Iterator[Page]:
        """follow_pages, with a looping or endless listing counted and logged."""
        try:
            yield from follow_pages(fetch, self.max_pages)
        except PaginationError as exc:
            log.warning("%s", exc)
            if self.on_error is not None:
                self.on_error(exc.endpoint, exc.kind)
            raise

    # --- plumbing ----------------------------------------------------------------------

    def _page(
        self, endpoint: str, path: str, limit: int, after_id: str | None, params: dict[str, str]
    ) -> Page:
        query: dict[str, str] = {"limit": str(limit), **params}
        if after_id:
            query["page" if isinstance(after_id, PageCursor) else "after_id"] = after_id
        return self._get(endpoint, path, query, lambda body: _to_page(endpoint, body))

    def _object(self, endpoint: str, path: str) -> dict[str, Any]:
        return self._get(endpoint, path, {}, lambda body: body)

    def _get(
        self,
        endpoint: str,
        path: str,
        params: Mapping[str, str],
        shape: Callable[[dict[str, Any]], T],
    ) -> T:
        attempt = 0
        while True:
            try:
                return self._get_once(endpoint, path, params, shape)
            except (TransportError, ServerError) as exc:
                if attempt >= self.max_retries:
                    raise
                delay = min(8.0, 0.5 * 2**attempt) * random.uniform(0.75, 1.25)
                log.debug("retrying %s in %.2fs after: %s", endpoint, delay, exc)
                attempt += 1
                self.sleep(delay)

    def _get_once(
        self,
        endpoint: str,
        path: str,
        params: Mapping[str, str],
        shape: Callable[[dict[str, Any]], T],
    ) -> T:
        try:
            # Inside the try: a 2xx body of the wrong shape is an API error too.
            return shape(self._attempt(endpoint, path, params))
        except QoderError as exc:
            if self.on_error is not None:
                self.on_error(endpoint, error_kind(exc))
            if isinstance(exc, InvalidResponseError) and exc.kind != "invalid_response":
                log.warning("%s", exc)
            raise

    def _attempt(self, endpoint: str, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        self.bucket.acquire()
        start = time.monotonic()
        code = "error"
        watch = _Deadline(self.deadline)
        _watched.current = watch
        try:
            status, headers, body = self._exchange(endpoint, path, params, start, watch)
            code = str(status)
        except InvalidResponseError as exc:
            code = str(exc.status or "error")
            raise
        except _Expired:
            code = "timeout"
            raise TransportError(
                f"{endpoint}: no complete answer within the {self.deadline:g}s deadline",
                endpoint=endpoint,
                kind="timeout",
            ) from None
        except requests.Timeout:
            code = "timeout"
            raise TransportError(
                f"{endpoint}: timed out", endpoint=endpoint, kind="timeout"
            ) from None
        except requests.RequestException as exc:
            if watch.expired:
                code = "timeout"
                raise TransportError(
                    f"{endpoint}: no complete answer within the {self.deadline:g}s deadline",
                    endpoint=endpoint,
                    kind="timeout",
                ) from None
            # `from None`: requests' exceptions hold the prepared request, headers and all.
            raise TransportError(
                f"{endpoint}: {type(exc).__name__}: {clean_text(str(exc), 200)}",
                endpoint=endpoint,
            ) from None
        finally:
            watch.cancel()
            _watched.current = None
            if self.observer is not None:
                self.observer(endpoint, code, time.monotonic() - start)
        date = self._note_date(headers.get("Date"))
        if 200 <= status < 300:
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError):
                # RecursionError: JSON nested thousands deep is legal and breaks the parser.
                raise InvalidResponseError(
                    f"{endpoint}: HTTP {status} body is not JSON we can read",
                    status=status,
                    endpoint=endpoint,
                ) from None
            if not isinstance(parsed, dict):
                raise InvalidResponseError(
                    f"{endpoint}: expected a JSON object", status=status, endpoint=endpoint
                )
            return parsed
        raise _error_from(endpoint, status, body, headers, date)

    def _exchange(
        self,
        endpoint: str,
        path: str,
        params: Mapping[str, str] | None,
        start: float,
        watch: _Deadline,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One GET, same-origin redirects followed by hand: (status, headers, body)."""
        url = self.base_url + path
        for _ in range(MAX_REDIRECTS + 1):
            response = self.session.get(
                url,
                params=params,
                timeout=self.timeout,
                auth=_Bearer(self._token),
                stream=True,
                # Followed here, and only to the API's own origin: data from another host
                # is not the API's, whatever it says.
                allow_redirects=False,
            )
            with contextlib.closing(response):
                if not response.is_redirect:
                    body = self._read_body(endpoint, response, start)
                    return response.status_code, response.headers, body
                target = urljoin(url, response.headers.get("Location", ""))
            if _origin(target) != self._origin:
                raise InvalidResponseError(
                    f"{endpoint}: HTTP {response.status_code} redirect to another host refused",
                    status=response.status_code,
                    endpoint=endpoint,
                    kind="redirect_refused",
                )
            url, params = target, None
        raise InvalidResponseError(
            f"{endpoint}: more than {MAX_REDIRECTS} redirects",
            endpoint=endpoint,
            kind="redirect_refused",
        )

    def _read_body(self, endpoint: str, response: requests.Response, start: float) -> bytes:
        """The decompressed body, read against the deadline and the size cap."""
        limit = self.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and len(declared) < 20 and int(declared) > limit:
            self._too_large(endpoint, response.status_code)
        body = bytearray()
        # urllib3 decompresses while streaming, at most a chunk at a time: the count is of
        # decoded bytes, so a small gzip bomb stops at the cap too.
        for chunk in response.iter_content(chunk_size=_CHUNK):
            body += chunk
            if len(body) > limit:
                self._too_large(endpoint, response.status_code)
            if time.monotonic() - start > self.deadline:
                raise _Expired()
        return bytes(body)

    def _too_large(self, endpoint: str, status: int) -> None:
        raise InvalidResponseError(
            f"{endpoint}: HTTP {status} body larger than {self.max_response_bytes} bytes",
            status=status,
            endpoint=endpoint,
            kind="response_too_large",
        )


def _to_page(endpoint: str, body: dict[str, Any]) -> Page:
    data = body.get("data")
    if not isinstance(data, list):
        raise InvalidResponseError(f"{endpoint}: response has no data list", endpoint=endpoint)
    last_id = body.get("last_id")
    if not isinstance(last_id, str):
        last = data[-1] if data else None
        last_id = last.get("id") if isinstance(last, dict) else None
    has_more = bool(body.get("has_more"))
    next_page = body.get("next_page")
    if not isinstance(next_page, str) or not 0 < len(next_page) <= MAX_CURSOR:
        next_page = None  # opaque, but sent back in a URL: a string of bounded length only
    if not valid_id(last_id):
        # The cursor goes back into a URL and into the set of cursors seen: ids only. Like
        # a missing one, it ends the listing; the page's records are still read.
        if has_more and last_id:
            log.warning("%s: the next-page cursor is not an id: listing ends here", endpoint)
        last_id = None
    return Page(data, has_more, last_id, endpoint, next_page)


def _path(*segments: str) -> str:
    # Ids from the API are validated when parsed; escaping every segment as well means a
    # hostile one ("dep_x/../../admin", "a?b=c") can never leave its segment.
    return "".join("/" + quote(s, safe="") for s in segments)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port or default


class _Expired(Exception):
    """The request's deadline passed."""


class _Deadline:
    """Ends a request that outlives its deadline by shutting its socket down.

    The requests timeout is per socket read: a server that sends a byte every few seconds
    never trips it. This timer does not care how the bytes trickle in: at the deadline the
    socket is shut down, which wakes the blocked read with an error.
    """

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            _shutdown(self._sock)


def _shutdown(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Watched(threading.local):
    current: _Deadline | None = None


# Each poll worker has its own request in flight: the deadline is per thread.
_watched = _Watched()


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self) -> urllib3.response.BaseHTTPResponse:  # type: ignore[override]
        if _watched.current is not None:
            _watched.current.attach(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self) -> urllib3.response.BaseHTTPResponse:  # type: ignore[override]
        if _watched.current is not None:
            _watched.current.attach(self.sock)
        return super().getresponse()


class _WatchedPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connections the deadline watchdog can reach."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


_WATCHED_POOLS: dict[str, type[HTTPConnectionPool]] = {
    "http": _WatchedPool,
    "https": _WatchedHTTPSPool,
}


def error_kind(exc: QoderError) -> str:
    """A bounded label for an error: timeout, connection, the client's kinds or the API's type."""
    if isinstance(exc, (TransportError, InvalidResponseError)):
        return exc.kind
    if isinstance(exc, APIError):
        # error.type comes from the server: only the documented types make a label.
        return exc.error_type if exc.error_type in _API_ERROR_SET else "other"
    return "other"


class _Bearer(requests.auth.AuthBase):
    """Bearer auth that keeps the token out of URLs and reprs."""

    def __init__(self, token: Secret) -> None:
        self._token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self._token.reveal()}"
        return r


def _error_from(
    endpoint: str, status: int, body: bytes, headers: Mapping[str, str], date: float | None
) -> APIError:
    error_type, message, request_id = "http_error", f"HTTP {status}", None
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):
        envelope = None
    if isinstance(envelope, dict):
        err = envelope.get("error")
        if isinstance(err, dict):
            error_type = clean_text(str(err.get("type") or error_type), 64)
            message = clean_text(str(err.get("message") or message), 200)
        rid = envelope.get("request_id")
        request_id = rid if isinstance(rid, str) else None
    request_id = request_id or headers.get("request-id") or headers.get("x-request-id")
    request_id = clean_text(request_id, 128) if request_id else None
    text = f"{endpoint}: HTTP {status} {error_type}: {message}"
    if request_id:
        text += f" (request_id {request_id})"
    kw: dict[str, Any] = {
        "status": status,
        "endpoint": endpoint,
        "error_type": error_type,
        "request_id": request_id,
    }
    retry_after = parse_retry_after(headers.get("Retry-After"), date)
    if status == 429 or (status == 503 and retry_after is not None):
        return RateLimitedError(text, retry_after=retry_after or DEFAULT_RETRY_AFTER, **kw)
    if status >= 500:
        return ServerError(text, **kw)
    return _BY_STATUS.get(status, APIError)(text, **kw)


class PaginationError(InvalidResponseError):
    """A listing whose cursors loop or never end."""


def follow_pages(fetch: Callable[[str | None], Page], max_pages: int) -> Iterator[Page]:
    """Follow cursors until has_more=false; at most max_pages pages. The cursor is the
    answer's next_page where it has one (sent as page=), else its last_id (as after_id=).

    A cursor seen before in this listing (A, B, A, ...) or a listing longer than
    max_pages raises PaginationError: following it would never end.
    """
    cursor: str | None = None
    seen: set[str] = set()
    pages = 0
    while True:
        page = fetch(cursor)
        pages += 1
        yield page
        after = PageCursor(page.next_page) if page.next_page else page.last_id
        if not page.has_more or not after or after == cursor:
            return
        if after in seen:
            raise PaginationError(
                f"{page.endpoint}: cursor {after[:64]!r} came back after {pages} pages",
                endpoint=page.endpoint,
                kind="pagination_loop",
            )
        if pages >= max_pages:
            raise PaginationError(
                f"{page.endpoint}: more than {max_pages} pages in one listing",
                endpoint=page.endpoint,
                kind="too_many_pages",
            )
        seen.add(after)
        cursor = after


def _own_session(base_url: str) -> requests.Session:
    """A session that reads the proxy and CA bundle variables once, not at every request.

    With trust_env, requests walks os.environ for them on each request (about a
    millisecond of CPU, much of what a small page costs). Every request goes to base_url's
    origin (redirects elsewhere are refused), so what it would find is known now: the same
    proxies (no_proxy honoured) and bundle, read again when a reload builds a new client.
    """
    session = requests.Session()
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False
    return session
