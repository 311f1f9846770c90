"""The only code that speaks HTTP to the Qoder API."""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from . import __version__
from .config import Secret

log = logging.getLogger(__name__)

# Clients should not sleep for minutes inside a poll; longer waits are the poller's call.
MAX_RETRY_AFTER = 600.0


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
    """The API answered 2xx with a body we cannot read."""


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
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class QoderClient:
    """Typed, rate-limited, retrying access to the read endpoints of the Qoder API."""

    def __init__(
        self,
        base_url: str,
        token: Secret,
        *,
        timeout: float = 10.0,
        max_retries: int = 2,
        requests_per_second: float = 20.0,
        observer: RequestObserver | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = (min(timeout, 5.0), timeout)
        self.max_retries = max_retries
        self.bucket = TokenBucket(requests_per_second)
        self.observer = observer
        # Told of every failed attempt (endpoint, error kind), retried or not.
        self.on_error: Callable[[str, str], None] | None = None
        # The API's clock as its last Date header told it: (unix time, our monotonic then).
        self._server_date: tuple[float, float] | None = None
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = f"qoder-exporter/{__version__}"
        self.session.headers["Accept"] = "application/json"
        # requests' own retries are off: ours are bounded, jittered and observable.
        self.sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:
        return f"QoderClient(base_url={self.base_url!r}, token=<redacted>)"

    def server_now(self) -> float | None:
        """The API's current time, from its last Date header (1 s resolution), if any."""
        seen = self._server_date
        if seen is None:
            return None
        return seen[0] + (time.monotonic() - seen[1])

    @property
    def token(self) -> Secret:
        return self._token

    def set_token(self, token: Secret) -> None:
        self._token = token

    # --- endpoints -------------------------------------------------------------------

    def list_deployments(self, *, limit: int = 100, after_id: str | None = None) -> Page:
        return self._page("list_deployments", "/deployments", limit, after_id, {})

    def get_deployment(self, deployment_id: str) -> dict[str, Any]:
        return self._object("get_deployment", f"/deployments/{deployment_id}")

    def list_runs(
        self,
        deployment_id: str,
        *,
        limit: int = 100,
        after_id: str | None = None,
        status: str | None = None,
    ) -> Page:
        params = {"status": status} if status else {}
        path = f"/deployments/{deployment_id}/runs"
        return self._page("list_runs", path, limit, after_id, params)

    def list_all_runs(
        self, *, limit: int = 100, after_id: str | None = None, status: str | None = None
    ) -> Page:
        params = {"status": status} if status else {}
        return self._page("list_all_runs", "/deployment_runs", limit, after_id, params)

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._object("get_run_global", f"/deployment_runs/{run_id}")

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
        """Follow cursors: next_page (as page=) where the answer has one, else last_id (as
        after_id=); stops on has_more=false or a cursor that does not move."""
        cursor: str | None = None
        while True:
            page = fetch(cursor)
            yield page
            after = PageCursor(page.next_page) if page.next_page else page.last_id
            if not page.has_more or not after or after == cursor:
                return
            cursor = after

    # --- plumbing ----------------------------------------------------------------------

    def _page(
        self, endpoint: str, path: str, limit: int, after_id: str | None, params: dict[str, str]
    ) -> Page:
        query: dict[str, str] = {"limit": str(limit), **params}
        if after_id:
            query["page" if isinstance(after_id, PageCursor) else "after_id"] = after_id
        body = self._get(endpoint, path, query)
        data = body.get("data")
        if not isinstance(data, list):
            raise InvalidResponseError(f"{endpoint}: response has no data list", endpoint=endpoint)
        last_id = body.get("last_id")
        if not isinstance(last_id, str):
            last = data[-1] if data else None
            last_id = last.get("id") if isinstance(last, dict) else None
        next_page = body.get("next_page")
        return Page(
            data,
            bool(body.get("has_more")),
            last_id if isinstance(last_id, str) else None,
            next_page if isinstance(next_page, str) and 0 < len(next_page) <= 1024 else None,
        )

    def _object(self, endpoint: str, path: str) -> dict[str, Any]:
        return self._get(endpoint, path, {})

    def _get(self, endpoint: str, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                return self._get_once(endpoint, path, params)
            except (TransportError, ServerError) as exc:
                if attempt >= self.max_retries:
                    raise
                delay = min(8.0, 0.5 * 2**attempt) * random.uniform(0.75, 1.25)
                log.debug("retrying %s in %.2fs after: %s", endpoint, delay, exc)
                attempt += 1
                self.sleep(delay)

    def _get_once(self, endpoint: str, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        try:
            return self._attempt(endpoint, path, params)
        except QoderError as exc:
            if self.on_error is not None:
                self.on_error(endpoint, error_kind(exc))
            raise

    def _attempt(self, endpoint: str, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        self.bucket.acquire()
        start = time.monotonic()
        code = "error"
        try:
            response = self.session.get(
                self.base_url + path,
                params=params,
                timeout=self.timeout,
                auth=_Bearer(self._token),
            )
            code = str(response.status_code)
            body = response.content
        except requests.Timeout:
            code = "timeout"
            raise TransportError(
                f"{endpoint}: timed out", endpoint=endpoint, kind="timeout"
            ) from None
        except requests.RequestException as exc:
            # `from None`: requests' exceptions hold the prepared request, headers and all.
            raise TransportError(
                f"{endpoint}: {type(exc).__name__}: {str(exc)[:200]}", endpoint=endpoint
            ) from None
        finally:
            if self.observer is not None:
                self.observer(endpoint, code, time.monotonic() - start)
        date = parse_http_date(response.headers.get("Date"))
        if date is not None:
            self._server_date = (date, time.monotonic())
        status = response.status_code
        if 200 <= status < 300:
            try:
                parsed = json.loads(body)
            except ValueError:
                raise InvalidResponseError(
                    f"{endpoint}: HTTP {status} body is not JSON", status=status, endpoint=endpoint
                ) from None
            if not isinstance(parsed, dict):
                raise InvalidResponseError(
                    f"{endpoint}: expected a JSON object", status=status, endpoint=endpoint
                )
            return parsed
        raise _error_from(endpoint, status, body, response.headers, date)


def error_kind(exc: QoderError) -> str:
    """A bounded label for an error: timeout, connection, invalid_response or the API's type."""
    if isinstance(exc, TransportError):
        return exc.kind
    if isinstance(exc, InvalidResponseError):
        return "invalid_response"
    if isinstance(exc, APIError):
        # error.type comes from the server: keep the label set bounded to well-formed names.
        t = exc.error_type
        return t if len(t) <= 40 and t.replace("_", "").isalnum() else "other"
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
    except ValueError:
        envelope = None
    if isinstance(envelope, dict):
        err = envelope.get("error")
        if isinstance(err, dict):
            error_type = str(err.get("type") or error_type)[:64]
            message = str(err.get("message") or message)[:200]
        rid = envelope.get("request_id")
        request_id = rid if isinstance(rid, str) else None
    request_id = request_id or headers.get("request-id") or headers.get("x-request-id")
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
        return RateLimitedError(text, retry_after=retry_after or 1.0, **kw)
    if status >= 500:
        return ServerError(text, **kw)
    return _BY_STATUS.get(status, APIError)(text, **kw)
