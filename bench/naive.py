"""A naive poller: no sync state, it re-reads the whole lookback window every cycle.

This is the baseline of the API cost benchmark: what an exporter that keeps nothing between
polls must do to publish `recent_runs`. Configured mode pages through each deployment's run
list; discover mode pages through the cross-deployment feed. Both stop at the first page that
reaches past the window. It reads runs only (no deployment metadata), so the ratio against
the real poller, which also refreshes metadata, is conservative.
"""

from __future__ import annotations

from collections.abc import Callable

from qoder_exporter.client import Page, QoderClient
from qoder_exporter.config import Secret
from qoder_exporter.models import STATUSES, parse_run

# The exporter bounds a listing at api.max_pages (1,000) because it never needs a whole
# window in one listing (its first sync lists each deployment; later cycles read the feed back
# to what they know). This baseline does: at 1,000 deployments the 24 h feed holds ~144,000
# runs, ~1,440 pages of 100. Its bound only has to stop a loop, not bound a real read.
NAIVE_MAX_PAGES = 100_000


class NaivePoller:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        deployments: list[str] | None,
        lookback: float,
        page_size: int = 100,
    ) -> None:
        """deployments=None means discover mode (the cross-deployment feed)."""
        self.client = QoderClient(
            url,
            Secret(token),
            requests_per_second=1e6,
            max_retries=0,
            max_pages=NAIVE_MAX_PAGES,
        )
        self.deployments = deployments
        self.lookback = lookback
        self.page_size = page_size
        self.requests = 0

    def poll(self, now: float) -> dict[str, dict[str, int]]:
        """Runs created within the window, by deployment and current status."""
        cutoff = now - self.lookback
        counts: dict[str, dict[str, int]] = {}
        if self.deployments is None:
            self._read(
                lambda c: self.client.list_all_runs(limit=self.page_size, after_id=c),
                cutoff,
                counts,
            )
        else:
            for dep_id in self.deployments:
                counts.setdefault(dep_id, dict.fromkeys(STATUSES, 0))
                self._read(
                    lambda c, d=dep_id: self.client.list_runs(d, limit=self.page_size, after_id=c),
                    cutoff,
                    counts,
                )
        return counts

    def _read(
        self,
        fetch: Callable[[str | None], Page],
        cutoff: float,
        counts: dict[str, dict[str, int]],
    ) -> None:
        for page in self.client.pages(fetch):
            self.requests += 1
            runs = [parse_run(item) for item in page.data]
            for run in runs:
                if run.created_at >= cutoff:
                    by_status = counts.setdefault(run.deployment_id, dict.fromkeys(STATUSES, 0))
                    by_status[run.status] += 1
            if any(run.created_at < cutoff for run in runs):
                return

    def close(self) -> None:
        self.client.session.close()
