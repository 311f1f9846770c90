"""One API call's request and reply, API error envelopes and injected fault bodies."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from .stamps import JSON

AUTH_MESSAGE = "Invalid API key or token."


class ApiError(Exception):
    """An API error response: HTTP status, error type, message and optional param."""

    def __init__(self, status: int, kind: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.param = param


@dataclass
class Request:
    """One authenticated API call, routed and parsed, as an endpoint handler sees it."""

    endpoint: str
    args: tuple[str, ...]
    query: dict[str, str]  # the first value of each parameter
    multi: dict[str, list[str]]  # every value, for repeatable parameters
    now: int  # the world time in ns the answer is computed at


@dataclass
class Reply:
    """The whole decided response; the HTTP server or the requests adapter only delivers it."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    delay_s: float = 0.0
    reset: bool = False


def dump(obj: JSON) -> bytes:
    """Serialize a JSON body."""
    return json.dumps(obj, separators=(",", ":")).encode()


def error_reply(err: ApiError, request_id: str) -> Reply:
    """Render an API error envelope."""
    error: JSON = {"type": err.kind, "message": err.message}
    if err.param is not None:
        error["param"] = err.param
    body = {"type": "error", "request_id": request_id, "error": error}
    return Reply(status=err.status, body=dump(body))


def fault_reply(kind: str, retry_after: str | None, request_id: str) -> Reply:
    """Render an injected gateway or server fault."""
    if kind == "500":
        return error_reply(ApiError(500, "api_error", "Internal server error"), request_id)
    if kind == "malformed":
        return Reply(body=b'<html><body>upstream returned garbage {"data": [</body></html>')
    # 502/503/429 come from the gateway in front of the API, which answers in HTML/text
    # (the docs leave their bodies unspecified)
    titles = {
        "502": "502 Bad Gateway",
        "503": "503 Service Unavailable",
        "429": "429 Too Many Requests",
    }
    html = f"<html><head><title>{titles[kind]}</title></head><body><h1>{titles[kind]}</h1>"
    reply = Reply(
        status=int(kind), body=(html + "</body></html>").encode(), content_type="text/html"
    )
    if kind == "429":
        reply.headers.append(("Retry-After", retry_after or "1"))
    elif kind == "503" and retry_after is not None:
        reply.headers.append(("Retry-After", retry_after))
    return reply
