"""The sessions endpoints (filled in by the sessions work)."""

from __future__ import annotations

ENDPOINTS: tuple[str, ...] = ()
ROUTES: tuple[()] = ()
