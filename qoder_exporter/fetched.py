"""What a read of the API brings back for one deployment, and the steps both readers share."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .backoff import Backoff
from .client import NotFoundError, QoderError
from .models import ParseError, Run, parse_run

log = logging.getLogger(__name__)
T = TypeVar("T")


class RunGetter(Protocol):
    def get_run(self, run_id: str) -> dict[str, Any]: ...


@dataclass
class Fetched:
    deployment_id: str
    runs: list[Run] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    error: QoderError | None = None
    deleted: bool = False


def parse_records(
    items: list[Any], parse: Callable[[Any], T], kind: str, count_invalid: Callable[[str], None]
) -> list[T]:
    """Parse API records, skipping (counting and logging) the unusable ones."""
    out = []
    for item in items:
        try:
            out.append(parse(item))
        except ParseError as exc:
            count_invalid(kind)
            log.warning("skipping unusable %s record: %s", kind, exc)
    return out


def refresh_in_flight(
    client: RunGetter,
    backoff: Backoff,
    count_invalid: Callable[[str], None],
    out: Fetched,
    in_flight: Iterable[str],
) -> None:
    """GET by id each in-flight run the pages read did not show."""
    seen = {r.id for r in out.runs}
    for run_id in sorted(set(in_flight) - seen):
        backoff.check()
        try:
            out.runs += parse_records([client.get_run(run_id)], parse_run, "run", count_invalid)
        except NotFoundError:
            out.vanished.append(run_id)
