"""Several accounts in one process: one Poller per account, polled side by side, merged.

Each account has its own Poller, and so its own client (rate budget, token, connection
pool), backoff, store, state file and poll thread: one account's 401 or 429 pauses only its
own thread and its own requests. After each of their polls the accounts' latest snapshots
are merged into one, which the collector renders with an `account` label on every
per-account series (collector._with_account).

State: each account keeps its own state file, `<state_file>.<name>`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from .config import AccountConfig, Config
from .poller import Poller
from .sharding import NO_SHARD, Shard
from .snapshot import Snapshot
from .snapshot_builder import ReloadStatus

__all__ = ["Accounts", "account_config", "account_state_file"]

log = logging.getLogger(__name__)


def account_state_file(state_file: str | None, name: str) -> str | None:
    return None if state_file is None else f"{state_file}.{name}"


def account_config(config: Config, account: AccountConfig) -> Config:
    """The single-account Config one account's Poller runs on."""
    return replace(
        config,
        api=account.api,
        deployments=account.deployments,
        discover=account.discover,
        lookback=account.lookback,
        page_size=account.page_size,
        page_size_set=account.page_size_set,
        concurrency=account.concurrency,
        state_file=account_state_file(config.state_file, account.name),
        accounts=(),
    )


class Accounts:
    """The Poller interface (run, poll_once, reconfigure, publish...) over several accounts."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        on_snapshot: Callable[[Snapshot], None] | None = None,
        shard: Shard = NO_SHARD,
    ) -> None:
        self.config = config
        self.clock = clock
        self.shard = shard
        self.on_snapshot = on_snapshot
        self.reload = ReloadStatus()
        self._lock = threading.Lock()  # serialises merges: pollers publish from their threads
        self.pollers = {
            a.name: Poller(account_config(config, a), clock=clock, shard=shard, account=a.name)
            for a in config.accounts
        }
        for poller in self.pollers.values():
            poller.on_snapshot = self._merge_and_publish
        self.snapshot = self._merge()

    # --- the Poller interface ------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Each account's poll loop in a thread of its own, until stop is set."""
        threads = [
            threading.Thread(
                target=poller.run, args=(stop,), name=f"qoder-poller-{name}", daemon=True
            )
            for name, poller in self.pollers.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def poll_once(self) -> bool:
        """One cycle of every account, side by side; True when every account reached the API."""
        with ThreadPoolExecutor(len(self.pollers), thread_name_prefix="qoder-account") as pool:
            results = list(pool.map(lambda p: p.poll_once(), self.pollers.values()))
        return all(results)

    def polls_done(self) -> int:
        return min(p.polls_done() for p in self.pollers.values())

    def wake(self) -> None:
        for poller in self.pollers.values():
            poller.wake()

    def close(self) -> None:
        for poller in self.pollers.values():
            poller.close()

    def save_state(self) -> None:
        for poller in self.pollers.values():
            poller.save_state()

    def reload_problem(self, config: Config) -> str | None:
        """Why config cannot be applied without a restart, or None."""
        if [a.name for a in config.accounts] != list(self.pollers):
            return "the list of account names changed: restart the exporter to apply it"
        return None

    def reconfigure(self, config: Config) -> None:
        """Each account takes its part of config (same names, see reload_problem)."""
        self.config = config
        for account in config.accounts:
            self.pollers[account.name].reconfigure(account_config(config, account))

    def note_reload(self, ok: bool) -> None:
        self.reload = ReloadStatus(ok, time.time() if ok else self.reload.at)

    def publish(self) -> None:
        self._merge_and_publish(None)

    # --- merging -------------------------------------------------------------------------

    def _merge_and_publish(self, _: Snapshot | None) -> None:
        with self._lock:
            self.snapshot = self._merge()
            if self.on_snapshot is not None:
                try:
                    self.on_snapshot(self.snapshot)
                except Exception:  # scrapes go on with the previous body
                    log.exception("cannot render the snapshot; serving the previous one")

    def _merge(self) -> Snapshot:
        """One snapshot: every account's, for the collector; their sum, for / and /-/ready."""
        parts = tuple(p.snapshot for p in self.pollers.values())
        successes = [s.last_success_poll for s in parts]
        errors = [f"{s.account}: {s.last_error}" for s in parts if s.last_error]
        return Snapshot(
            taken_at=max(s.taken_at for s in parts),
            buckets=parts[0].buckets,
            deployments=tuple(d for s in parts for d in s.deployments),
            up=all(s.up for s in parts),
            polls_done=min(s.polls_done for s in parts),
            # Ready (and "last successful poll") only as fresh as the stalest account.
            last_success_poll=None if None in successes else min(s or 0.0 for s in successes),
            poll_interval=max(s.poll_interval for s in parts),
            tracked_runs=sum(s.tracked_runs for s in parts),
            missing=tuple(m for s in parts for m in s.missing),
            last_error="; ".join(errors) or None,
            reload_ok=self.reload.ok,
            reload_at=self.reload.at,
            shard=self.shard if self.shard.sharded else None,
            metrics=parts[0].metrics,  # the same for every account: a top-level setting
            accounts=parts,
        )
