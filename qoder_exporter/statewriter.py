"""Writes the state file, only when the store changed since the last write."""

from __future__ import annotations

import logging
import os

from . import state
from .sync import RunStore

log = logging.getLogger(__name__)


class StateWriter:
    def __init__(self) -> None:
        self._saved: tuple[str, int] | None = None  # (path, store.changes) last written

    def save(self, store: RunStore, path: str, api_url: str) -> None:
        """Call with the store's lock held; failures are logged."""
        try:
            if (path, store.changes) == self._saved and os.path.exists(path):
                return
            state.save(store, path, api_url)
            self._saved = (path, store.changes)
        except OSError as exc:
            log.error("cannot save state to %s: %s", path, exc.strerror or exc)
