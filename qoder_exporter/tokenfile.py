"""Token rotation: re-read api.token_file when the file changed."""

from __future__ import annotations

import logging
import os

from .client import QoderClient
from .config import ConfigError, read_token_file

log = logging.getLogger(__name__)


class TokenFile:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._stat = _stat(path)

    def refresh(self, client: QoderClient, *, force: bool) -> bool:
        """Re-read the file when it changed (or when forced); True if the token changed."""
        if not self.path:
            return False
        seen = _stat(self.path)
        if not force and seen == self._stat:
            return False
        self._stat = seen
        try:
            token = read_token_file(self.path)
        except ConfigError as exc:
            log.error("keeping the old token: %s", exc.errors[0])
            return False
        if token == client.token:
            return False
        client.set_token(token)
        log.info("token re-read from api.token_file")
        return True


def _stat(path: str | None) -> tuple[int, int, int] | None:
    """What tells a rewritten file apart: inode (rename), size and mtime."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
