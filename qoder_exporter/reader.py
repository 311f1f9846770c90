"""The per-deployment reader: one deployment's new runs, its in-flight runs, its last success.

Runs in the poll workers: it reads only its frozen SyncPlan, never the store.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .backoff import Backoff, Paused
from .client import NotFoundError, Page, QoderError, RateLimitedError
from .fetched import (
    Bound,
    Fetched,
    RefreshBudget,
    no_bound,
    parse_records,
    refresh_in_flight,
    run_parser,
)
from .models import Run
from .outcomes import apply_mode
from .sync import SyncPlan, reached_known

# Bound on pages read back through history to find a last success older than the window.
HISTORY_PAGES = 5
# Room on a deployment's first page for runs new since the last cycle (see read).
FIRST_PAGE_SLACK = 10


class RunsClient(Protocol):
    def pages(self, fetch: Callable[[str | None], Page]) -> Iterator[Page]: ...

    def list_runs(
        self,
        deployment_id: str,
        *,
        limit: int = 100,
        after_id: str | None = None,
        status: str | None = None,
    ) -> Page: ...

    def get_run(self, run_id: str) -> dict[str, Any]: ...


class DeploymentReader:
    def __init__(
        self,
        client: RunsClient,
        backoff: Backoff,
        page_size: int,
        count_invalid: Callable[[str], None],
        sessions_mode: str = "auto",
    ) -> None:
        self.sessions_mode = sessions_mode
        self.client = client
        self.backoff = backoff
        self.page_size = page_size
        self.count_invalid = count_invalid
        # Set by the cycle before the workers start: records dated past it are refused.
        self.not_after: Bound = no_bound
        self.budget: RefreshBudget | None = None  # likewise, this cycle's fetches by id

    def read(self, deployment_id: str, plan: SyncPlan) -> Fetched:
        """Worker: read one deployment's new runs and refresh its in-flight ones."""
        out = Fetched(deployment_id)
        size = self.page_size
        # After the first sync a cycle finds a few new runs on top of what it knows: a first
        # page just deep enough for them and the runs in flight costs the same request and
        # a fraction of the parsing (most of a quiet cycle's CPU). Later pages are full.
        first = size if plan.initial else min(size, plan.reach + FIRST_PAGE_SLACK)
        try:
            self.backoff.check()
            for page in self.client.pages(
                lambda c: self.client.list_runs(
                    deployment_id, limit=size if c else first, after_id=c
                )
            ):
                runs = self._parse(page)
                out.runs += runs
                if reached_known(runs, plan):
                    break
            refresh_in_flight(
                self.client,
                self.backoff,
                self.count_invalid,
                out,
                plan.in_flight,
                not_after=self.not_after,
                budget=self.budget,
            )
            # Followed record-only runs never say "completed": their sessions tell successes.
            mode = self.sessions_mode
            followed = mode != "never" and any(not r.has_status for r in out.runs)
            seen = (apply_mode(r, mode) for r in out.runs)
            if plan.initial and not followed and not any(r.status == "completed" for r in seen):
                out.runs += self._last_success(deployment_id)
        except NotFoundError:
            out.deleted = True
        except RateLimitedError as exc:
            self.backoff.pause(exc.retry_after)
            out.error = exc
        except QoderError as exc:
            out.error = exc
        except Paused:
            out.error = QoderError("skipped: backing off after a rate limit")
        return out

    def _last_success(self, deployment_id: str) -> list[Run]:
        """Find the newest completed run even when it is older than the window."""
        pages = self.client.pages(
            lambda c: self.client.list_runs(
                deployment_id, limit=self.page_size, after_id=c, status="completed"
            )
        )
        for page in itertools.islice(pages, HISTORY_PAGES):
            # Filter here too: servers of the record-only generation ignore `status`.
            for run in (apply_mode(r, self.sessions_mode) for r in self._parse(page)):
                if run.status == "completed" and run.deployment_id == deployment_id:
                    return [run]
        return []

    def _parse(self, page: Page) -> list[Run]:
        return parse_records(page.data, run_parser(self.not_after), "run", self.count_invalid)
