"""List endpoints' shared parts: newest-first pages, cursors, limits and time bounds."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Protocol, TypeVar

from .replies import ApiError
from .stamps import JSON, parse_rfc3339


class Keyed(Protocol):
    id: str
    created_ns: int


K = TypeVar("K", bound=Keyed)


def sort_key(item: Keyed) -> tuple[int, str]:
    """Sort key of list items: creation time, ties broken by id."""
    return (item.created_ns, item.id)


def select_page(
    items: list[K],
    lo: int,
    hi: int,
    match: Callable[[K], bool],
    limit: int,
    cursor: tuple[str, tuple[int, str]] | None,
) -> tuple[list[K], bool]:
    """Select one newest-first page from items[lo:hi] (sorted ascending) honouring a cursor."""
    backward = cursor is not None and cursor[0] == "before"
    if cursor is not None:
        if backward:
            lo = max(lo, bisect.bisect_right(items, cursor[1], key=sort_key))
        else:
            hi = min(hi, bisect.bisect_left(items, cursor[1], key=sort_key))
    out: list[K] = []
    indices = range(lo, hi) if backward else range(hi - 1, lo - 1, -1)
    for i in indices:
        if match(items[i]):
            out.append(items[i])
            if len(out) > limit:
                break
    has_more = len(out) > limit
    out = out[:limit]
    if backward:
        out.reverse()
    return out, has_more


def parse_limit(query: dict[str, str], page_cap: int) -> int:
    """Parse and check `limit` against the page cap (100: larger is a 400; 1000: capped)."""
    raw = query.get("limit")
    if raw is None:
        return 20
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_request_error", "limit must be an integer", "limit") from None
    if limit <= 0:
        raise ApiError(400, "invalid_request_error", "limit must be at least 1", "limit")
    if limit > page_cap:
        if page_cap == 100:
            raise ApiError(400, "invalid_request_error", "limit must be between 1 and 100", "limit")
        limit = page_cap
    return limit


def cursor_param(query: dict[str, str]) -> tuple[str, str, str] | None:
    """Return (direction, param name, id) of the single cursor given, if any."""
    given = [name for name in ("after_id", "before_id", "page") if name in query]
    if len(given) > 1:
        raise ApiError(
            400,
            "invalid_request_error",
            "Only one of after_id, before_id and page may be given",
            given[1],
        )
    if not given:
        return None
    name = given[0]
    return ("before" if name == "before_id" else "after"), name, query[name]


def time_param(query: dict[str, str], name: str) -> int | None:
    """Parse an RFC 3339 query parameter to ns."""
    raw = query.get(name)
    if raw is None:
        return None
    ns = parse_rfc3339(raw)
    if ns is None:
        raise ApiError(400, "invalid_request_error", f"{name} must be an RFC 3339 timestamp", name)
    return ns


def choice(query: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    """Return an enum query parameter, rejecting values outside `allowed`."""
    raw = query.get(name)
    if raw is not None and raw not in allowed:
        raise ApiError(
            400, "invalid_request_error", f"{name} must be one of {', '.join(allowed)}", name
        )
    return raw


def envelope(data: list[JSON], has_more: bool) -> JSON:
    """Wrap a page in the list envelope."""
    last_id = data[-1]["id"] if data else None
    return {
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": last_id,
        "has_more": has_more,
        "next_page": last_id if has_more else None,
    }


T = TypeVar("T")


def ordered_page(
    items: list[T],
    key: Callable[[T], tuple[int, str]],
    lo: int,
    hi: int,
    match: Callable[[T], bool],
    limit: int,
    cursor: tuple[str, tuple[int, str]] | None,
    ascending: bool,
) -> tuple[list[T], bool]:
    """Select one page from items[lo:hi] (sorted ascending by key) in either list order.

    "after" X continues past X in list order; "before" X takes the items just before X in list
    order. The page is returned in list order; has_more says whether the scan could go on.
    """
    backward = cursor is not None and cursor[0] == "before"
    up = ascending != backward  # scanning towards higher indices
    if cursor is None:
        start = lo if up else hi - 1
    elif up:
        start = max(lo, bisect.bisect_right(items, cursor[1], key=key))
    else:
        start = min(hi - 1, bisect.bisect_left(items, cursor[1], key=key) - 1)
    indices = range(start, hi) if up else range(start, lo - 1, -1)
    out: list[T] = []
    for i in indices:
        if match(items[i]):
            out.append(items[i])
            if len(out) > limit:
                break
    has_more = len(out) > limit
    out = out[:limit]
    if backward:
        out.reverse()
    return out, has_more


def time_bounds(
    items: list[T], key: Callable[[T], tuple[int, str]], query: dict[str, str], name: str
) -> tuple[int, int]:
    """Return [lo, hi) of items whose time (key[0]) meets name[gt|gte|lt|lte] bounds."""
    lo, hi = 0, len(items)
    for op, after, inclusive in (
        ("gte", True, True),
        ("gt", True, False),
        ("lte", False, True),
        ("lt", False, False),
    ):
        ns = time_param(query, f"{name}[{op}]")
        if ns is None:
            continue
        edge = ns if after == inclusive else ns + 1
        pos = bisect.bisect_left(items, (edge, ""), key=key)
        if after:
            lo = max(lo, pos)
        else:
            hi = min(hi, pos)
    return lo, hi
