"""The run store with what the poller knows of each deployment's last sync.

Fetches are folded in here, under the lock that a shutdown's state save also takes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .fetched import Fetched
from .models import Deployment
from .outcomes import apply_mode
from .sync import RunStore

log = logging.getLogger(__name__)


@dataclass
class SyncStatus:
    ok: bool = False
    at: float | None = None
    error: str | None = None


class Tracker:
    def __init__(self, buckets: tuple[float, ...], started_at: float) -> None:
        # Held while the store changes or is saved: shutdown saves from another thread.
        self.lock = threading.Lock()
        self.store = RunStore(buckets)
        # Runs that finished before this are history, not counted (see apply).
        self.started_at = started_at
        self.sync: dict[str, SyncStatus] = {}
        self.sessions_mode = "auto"  # config `sessions`: which runs await their sessions

    def drop(self, deployment_id: str) -> None:
        self.store.drop(deployment_id)
        self.sync.pop(deployment_id, None)

    def quiet(
        self,
        deployment_ids: Sequence[str],
        now: float,
        lookback: Callable[[str], float],
        info: Callable[[str], Deployment | None],
    ) -> None:
        """These deployments, known to the store, were read fine and showed nothing new:
        what apply() does with an empty fetch, for each, without the fetch."""
        sync = self.sync
        for dep_id in deployment_ids:
            status = sync.get(dep_id)
            if status is None:
                status = sync[dep_id] = SyncStatus()
            status.ok, status.at, status.error = True, now, None
        self.store.quiet(deployment_ids, now, lookback, info)

    def apply(self, fetched: Fetched, now: float, lookback: float, info: Deployment | None) -> bool:
        """Fold one deployment's fetch into the store; False if the fetch failed."""
        dep_id = fetched.deployment_id
        status = self.sync.setdefault(dep_id, SyncStatus())
        status.at = now
        if fetched.error is not None:
            status.ok, status.error = False, str(fetched.error)
            return False
        initial = dep_id not in self.store.deployments
        # A deployment created after we started has no history: all its runs are news.
        history = initial and not (
            info is not None and info.created_at is not None and info.created_at >= self.started_at
        )
        result = self.store.apply(
            dep_id,
            [apply_mode(run, self.sessions_mode) for run in fetched.runs],
            now,
            lookback,
            history=history,
            vanished=fetched.vanished,
            counted_since=self.started_at,
            max_retries=info.max_retries if info is not None else None,
        )
        self.store.note_schedule(dep_id, info)
        if result.vanished:
            log.warning("deployment %s: %d in-flight runs vanished", dep_id, result.vanished)
        status.ok, status.error = True, None
        return True
